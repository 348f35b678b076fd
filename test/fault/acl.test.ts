/**
 * Fault 22, permissions. The least-privilege ACL rule printed in
 * docs/operations.md ("Redis ACL") is run as is against a real redis-server:
 * a daemon logged in as that user works (ready, events handled, a dead peer
 * reaped by the watcher's scripts), with nothing on stderr. With one
 * permission taken away — a command, a key or a channel — `agentd run`
 * exits 2 with one line naming it. Taken away while it runs, the daemon is
 * degraded with the reason, and ready again once it is given back.
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/load.ts';
import { aclRule } from '../../src/redis/preflight.ts';
import { freePort } from '../helpers/ports.ts';
import { expectSound, httpGet, processSuite } from '../helpers/process.ts';
import { collect, hasMsg, keys, seedMessage, uniqueId, waitFor } from '../helpers/util.ts';

const PASSWORD = 'acl-test-password';

/** The rule as docs/operations.md prints it (the one line starting with ACL SETUSER agentd). */
function documentedRule(): string {
  const doc = readFileSync(new URL('../../docs/operations.md', import.meta.url), 'utf8');
  const lines = doc.split('\n').filter((l) => l.startsWith('ACL SETUSER agentd '));
  expect(lines, 'docs/operations.md prints the ACL rule once').toHaveLength(1);
  return lines[0] as string;
}

/** The rule's words after the user name, with `drop` left out. */
function ruleArgs(rule: string, drop?: string): string[] {
  const words = rule.split(' ').slice(3);
  if (drop !== undefined) expect(words, `the rule holds ${drop}`).toContain(drop);
  return words.filter((w) => w !== drop);
}

const suite = processSuite({ redis: { requireControl: true, args: ['--notify-keyspace-events', 'Kx'] } });

describe('fault 22: the least-privilege ACL user', () => {
  const rule = documentedRule();
  /** The user made afresh with these rule words; its URL. */
  const setUser = (user: string, args: string[]): Promise<string> => suite.aclUser(user, args, PASSWORD);

  it('the documented rule is the one the code derives from the default settings', () => {
    const config = loadConfig({ env: { AGENTD_DEN: 'x' }, args: [], cwd: process.cwd(), file: undefined }).config;
    expect(rule).toBe(aclRule(config));
  });

  it('a daemon logged in as exactly that user works: ready, events handled, a dead peer reaped', { timeout: 60_000 }, async () => {
    const url = await setUser('agentd', ruleArgs(rule));
    const id = uniqueId('acl');
    const den = uniqueId('aclden');
    const admin = suite.cmd;
    const watcher = suite.redis.client();
    const downs = await collect(watcher, keys.channel('agent_down'));
    // A peer that died without leaving: in the den and the registry, no heartbeat.
    const dead = uniqueId('acldead');
    await admin.sadd(keys.den(den), dead);
    await admin.hset(keys.registry, dead, JSON.stringify({ id: dead, den, host: 'h', pid: 1, status: 'online', lastSeen: Date.now() - 60_000 }));
    const d = await suite.spawn({
      redisUrl: url,
      id,
      den,
      plugins: ['recorder.js'],
      http: true,
      env: {
        AGENTD_HEARTBEAT_TTL: '6',
        AGENTD_HEARTBEAT_INTERVAL: '1',
        AGENTD_SWEEP_INTERVAL: '1',
      },
    });
    await d.ready(15_000);
    expect((await httpGet(d.httpPort, '/readyz')).status).toBe(200);
    await admin.publish(keys.channel('acl_ok'), seedMessage('acl_ok', { uid: 'a1' }));
    await waitFor('event handled', () => d.records().some((r) => r.event === 'acl_ok'), 5_000);
    await waitFor('the dead peer reaped (sweep and reap scripts ran as the ACL user)', () => downs.some((m) => (m.json?.['data'] as { agent?: string } | undefined)?.agent === dead), 10_000);
    expect((await httpGet(d.httpPort, '/metrics')).status).toBe(200);
    expect(d.logs.filter(hasMsg(/NOPERM|refused/))).toEqual([]);
    expectSound(d, d.file);
  });

  // One permission taken away at a time: [word dropped from the rule, what the line must name].
  const removals: Array<[string, RegExp]> = [
    ['+publish', /commands .*\bPUBLISH \[presence, events, watch, durable\]/],
    ['+evalsha', /commands .*\bEVALSHA \[presence, watch, durable\]/],
    ['+xreadgroup', /commands .*\bXREADGROUP \[durable\]/],
    ['~inbox:*', /the keys of .*XGROUP CREATE inbox:[^ ]* \[durable\]/],
    ['+eval', /commands .*\bEVAL \[presence, watch\]/],
    ['+info', /commands .*\bINFO \[connection\]/],
    ['+psubscribe', /commands .*\bPSUBSCRIBE \[events, watch.notifications\]/],
    ['+subscribe', /commands .*\bSUBSCRIBE \[events, durable\]/],
    ['+pexpire', /commands .*\bPEXPIRE \[presence, watch\]/],
    ['+time', /commands .*\bTIME \[presence\]/],
    ['+sismember', /commands .*\bSISMEMBER \[watch\]/],
    ['+multi', /commands .*\bMULTI\b/],
    ['+exec', /commands .*\bEXEC\b/],
    ['+hset', /commands .*\bHSET \[presence, watch\]/],
    ['+smembers', /commands .*\bSMEMBERS \[watch\]/],
    ['~global:agent_registry', /the keys of HSET global:agent_registry \[presence\]/],
    ['~agent:*:heartbeat', /the keys of SET agent:[^ ]*:heartbeat \[presence\]/],
    ['&agentd:probe:*', /the channels of PUBLISH agentd:probe:[^ ]* \[events\], SUBSCRIBE agentd:probe:/],
    ['&__keyspace@0__:agent:*:heartbeat', /the channels of PSUBSCRIBE __keyspace@0__:agent:\*:heartbeat \[watch.notifications\]/],
    ['&agent:events:*', /the channels of .*PSUBSCRIBE agent:events:\* \[events\]/],
  ];
  for (const [drop, names] of removals) {
    it(`without ${drop}: exit 2, one line naming it`, { timeout: 30_000 }, async () => {
      const user = `agentd-no-${removals.findIndex((r) => r[0] === drop)}`;
      const url = await setUser(user, ruleArgs(rule, drop));
      const r = await suite.run(['run'], {
        redisUrl: url,
        env: { AGENTD_AGENT_ID: uniqueId('aclno'), AGENTD_DEN: uniqueId('aclnoden'), AGENTD_HTTP_PORT: String(await freePort()) },
        timeoutMs: 20_000,
      });
      expect(r.code, `stdout: ${r.stdout.slice(-2000)}`).toBe(2);
      const lines = r.stderr.split('\n').filter((l) => l.trim() !== '');
      expect(lines, r.stderr).toHaveLength(1);
      expect(lines[0]).toMatch(/\[AGENTD_ERR_REDIS_PERMISSION\]$/);
      expect(lines[0]).toContain(`redis user "${user}"`);
      expect(lines[0]).toMatch(names);
      // Nothing raw from ioredis (its ready check's console.warn when INFO is refused).
      expect(r.stdout.split('\n').filter((l) => l.trim() !== '' && !l.startsWith('{'))).toEqual([]);
    });
  }

  it('EVALSHA and EVAL taken away while it runs: degraded naming it; ready again once given back', { timeout: 60_000 }, async () => {
    const url = await setUser('agentd-rt', ruleArgs(rule));
    const d = await suite.spawn({
      redisUrl: url,
      id: uniqueId('aclrt'),
      den: uniqueId('aclrtden'),
      http: true,
      env: {
        AGENTD_HEARTBEAT_TTL: '6',
        AGENTD_HEARTBEAT_INTERVAL: '1',
        AGENTD_SWEEP_INTERVAL: '1',
      },
    });
    const httpPort = d.httpPort;
    const admin = suite.cmd;
    await d.ready(15_000);
    await admin.call('ACL', 'SETUSER', 'agentd-rt', '-evalsha', '-eval');
    // ioredis sends EVALSHA, or EVAL when it has not loaded the script on this connection yet.
    const line = await d.waitForLog(hasMsg(/refused EVAL(SHA)? \(NOPERM\)/), 10_000);
    expect(line['level']).toBe('error');
    const degraded = await d.waitForLog(hasMsg('agentd degraded'), 5_000);
    expect(String(degraded['reason'])).toMatch(/EVAL(SHA)?: NOPERM .*'eval(sha)?' command/i);
    const r = await waitFor('/readyz 503 naming EVAL', async () => {
      const x = await httpGet(httpPort, '/readyz');
      return x.status === 503 ? x : undefined;
    }, 5_000);
    expect(r.body).toMatch(/EVAL(SHA)?/);
    // Logged once per command, however many sweeps fail.
    await new Promise((res) => setTimeout(res, 3_000));
    expect(d.logs.filter(hasMsg(/refused EVAL/)).length).toBeLessThanOrEqual(2);

    await admin.call('ACL', 'SETUSER', 'agentd-rt', '+evalsha', '+eval');
    await waitFor('/readyz 200 once the permission is back', async () => (await httpGet(httpPort, '/readyz')).status === 200, 15_000);
    expectSound(d, undefined);
  });
});
