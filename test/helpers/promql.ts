/**
 * Just enough PromQL reading for the tests of deploy/: the metric names an
 * expression selects, and every expression in the Grafana dashboard and the
 * alert rules. Real Prometheus (and promtool) check the syntax; this only has
 * to find names in expressions we wrote ourselves.
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parse as parseYaml } from 'yaml';

const KEYWORDS = new Set(['and', 'or', 'unless', 'bool', 'offset', 'by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'inf', 'nan', 'atan2']);

/** Metric names selected by a PromQL expression (functions, keywords, labels and Grafana variables left out). */
export function metricNames(expr: string): string[] {
  const stripped = expr
    .replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'/g, '""')
    .replace(/\{[^}]*\}/g, ' ')
    .replace(/\[[^\]]*\]/g, ' ')
    .replace(/\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, ' ')
    .replace(/\$\{?\w+\}?/g, ' ');
  const names = new Set<string>();
  for (const m of stripped.matchAll(/(?<![\w.:$])([A-Za-z_:][\w:]*)(\s*\()?/g)) {
    const [, name, call] = m;
    if (call || KEYWORDS.has(name!.toLowerCase())) continue;
    names.add(name!);
  }
  return [...names].sort();
}

/** Grafana's variables replaced by values a plain Prometheus accepts. */
export function expandGrafana(expr: string): string {
  return expr
    .replace(/\$__rate_interval|\$__interval|\$\{__rate_interval\}/g, '1m')
    .replace(/\$\{?(den|agent)\}?/g, '.*');
}

const ROOT = new URL('../../', import.meta.url);
export const DASHBOARD_FILE = fileURLToPath(new URL('deploy/grafana/agentd.json', ROOT));
export const RULES_FILE = fileURLToPath(new URL('deploy/prometheus/agentd-rules.yaml', ROOT));
export const RULES_TEST_FILE = fileURLToPath(new URL('deploy/prometheus/agentd-rules.test.yaml', ROOT));

export interface DashboardPanel {
  id: number;
  type: string;
  title: string;
  datasource?: { type: string; uid: string };
  targets?: Array<{ expr: string; refId: string; legendFormat?: string; datasource?: { type: string; uid: string } }>;
}

export interface Dashboard {
  title: string;
  uid: string;
  panels: DashboardPanel[];
  templating: { list: Array<{ name: string; type: string; query: unknown; definition?: string }> };
  [key: string]: unknown;
}

export function readDashboard(): Dashboard {
  return JSON.parse(readFileSync(DASHBOARD_FILE, 'utf8')) as Dashboard;
}

/** Every PromQL expression of the dashboard: panel targets and query variables. */
export function dashboardExprs(d: Dashboard = readDashboard()): Array<{ where: string; expr: string }> {
  const out: Array<{ where: string; expr: string }> = [];
  for (const p of d.panels) for (const t of p.targets ?? []) out.push({ where: `panel "${p.title}" ${t.refId}`, expr: t.expr });
  for (const v of d.templating.list) {
    if (v.type !== 'query') continue;
    const q = typeof v.query === 'string' ? v.query : (v.query as { query: string }).query;
    // label_values(selector, label): the selector is the PromQL part.
    const m = /^label_values\((.*),\s*\w+\)$/.exec(q);
    out.push({ where: `variable $${v.name}`, expr: m ? m[1]! : q });
  }
  return out;
}

export interface AlertRule {
  alert: string;
  expr: string;
  for?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}

export function readRules(): AlertRule[] {
  const doc = parseYaml(readFileSync(RULES_FILE, 'utf8')) as { groups: Array<{ name: string; rules: AlertRule[] }> };
  return doc.groups.flatMap((g) => g.rules);
}
