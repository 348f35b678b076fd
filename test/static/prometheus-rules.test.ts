/**
 * deploy/prometheus/agentd-rules.yaml with Debian's promtool: the rules
 * parse (`promtool check rules`) and behave as their unit tests say
 * (`promtool test rules`), and every alert has a unit test in which it
 * fires. Skipped, and reported as skipped, only when promtool is missing
 * (bash .ci/run installs the prometheus package).
 */
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import { RULES_FILE, RULES_TEST_FILE, readRules } from '../helpers/promql.ts';

const hasPromtool = spawnSync('promtool', ['--version'], { encoding: 'utf8' }).status === 0;
if (!hasPromtool) process.stderr.write('[prometheus-rules] promtool tests skipped: promtool is missing (apt-get install prometheus; bash .ci/run does)\n');

interface RuleTest {
  name?: string;
  alert_rule_test?: Array<{ alertname: string; eval_time: string; exp_alerts?: Array<{ exp_labels?: Record<string, string> }> }>;
}

describe('alert rules', () => {
  const rules = readRules();

  it('has the alerts an operator needs, each with a severity, a summary and a description', () => {
    const names = rules.map((r) => r.alert);
    for (const wanted of [
      'AgentdNotReady',
      'AgentdHeartbeatNearTtl',
      'AgentdEventsDropping',
      'AgentdHandlersFailing',
      'AgentdEventLoopBlocked',
      'AgentdDenDeathRate',
      'AgentdRedisMemoryHigh',
      'AgentdDeadLettersGrowing',
    ]) {
      expect(names).toContain(wanted);
    }
    expect(new Set(names).size).toBe(names.length);
    for (const r of rules) {
      expect(['critical', 'warning', 'info'], r.alert).toContain(r.labels?.['severity']);
      expect(r.annotations?.['summary'], r.alert).toBeTruthy();
      expect(r.annotations?.['description'], r.alert).toBeTruthy();
    }
  });

  it('every alert has a unit test in which it fires and one in which it does not', () => {
    const doc = parseYaml(readFileSync(RULES_TEST_FILE, 'utf8')) as { rule_files: string[]; tests: RuleTest[] };
    expect(doc.rule_files).toEqual(['agentd-rules.yaml']);
    const checks = doc.tests.flatMap((t) => t.alert_rule_test ?? []);
    for (const r of rules) {
      const mine = checks.filter((c) => c.alertname === r.alert);
      expect(mine.some((c) => (c.exp_alerts ?? []).length > 0), `${r.alert} fires in some test`).toBe(true);
      expect(mine.some((c) => (c.exp_alerts ?? []).length === 0), `${r.alert} stays quiet in some test`).toBe(true);
    }
  });

  describe.skipIf(!hasPromtool)('promtool', () => {
    it('promtool check rules accepts the file', () => {
      const r = spawnSync('promtool', ['check', 'rules', RULES_FILE], { encoding: 'utf8' });
      expect(r.status, r.stdout + r.stderr).toBe(0);
      expect(r.stdout).toContain(`SUCCESS: ${rules.length} rules found`);
    });

    it('promtool test rules passes every unit test', () => {
      const r = spawnSync('promtool', ['test', 'rules', RULES_TEST_FILE], { encoding: 'utf8' });
      expect(r.status, r.stdout + r.stderr).toBe(0);
      expect(r.stdout).toContain('SUCCESS');
    });
  });
});
