/**
 * Helpers for the fault tests (test/fault/*.test.ts): each file injects one
 * fault from docs/reliability (the fault table in the shared design notes)
 * into a real `agentd run` child process and a real redis-server.
 *
 * Every test checks, besides its row's pass condition:
 *   - no event handled twice (every published event carries a unique `uid`),
 *   - no 'fatal' log line, nothing on stderr (an unhandled rejection or
 *     uncaught exception is a fatal line plus exit 1),
 *   - the daemon alive at the end (unless the test stops it).
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { expect } from 'vitest';
import type { DaemonProcess } from '../helpers/daemon.ts';
import { expectNoFatal, isAlive, readRecords } from '../process/util.ts';

export const FIXTURES = fileURLToPath(new URL('../fixtures/plugins/', import.meta.url));
export const fixture = (name: string): string => `${FIXTURES}${name}`;

/** Resident set size of a process in KiB, from /proc/<pid>/status (VmRSS). */
export function rssKb(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(status);
  if (!m) throw new Error(`no VmRSS in /proc/${pid}/status`);
  return Number(m[1]);
}

export const mb = (kb: number): number => Math.round((kb / 1024) * 10) / 10;

export interface HttpReply {
  status: number;
  body: string;
}

/** One GET to the daemon's health/metrics endpoint; short time limit, never throws for HTTP statuses. */
export async function httpGet(port: number, path: string, timeoutMs = 2_000): Promise<HttpReply> {
  const res = await fetch(`http://127.0.0.1:${port}${path}`, { signal: AbortSignal.timeout(timeoutMs) });
  return { status: res.status, body: await res.text() };
}

/** Parses Prometheus text into samples. */
export function parseMetrics(text: string): Array<{ name: string; labels: Record<string, string>; value: number }> {
  const out: Array<{ name: string; labels: Record<string, string>; value: number }> = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const labels: Record<string, string> = {};
    for (const lm of (m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[lm[1] as string] = lm[2] as string;
    out.push({ name: m[1] as string, labels, value: Number(m[3]) });
  }
  return out;
}

/** Sum of the samples of `name` whose labels include `labels` (0 when none). */
export function metric(text: string, name: string, labels: Record<string, string> = {}): number {
  let sum = 0;
  for (const s of parseMetrics(text)) {
    if (s.name !== name) continue;
    if (Object.entries(labels).every(([k, v]) => s.labels[k] === v)) sum += s.value;
  }
  return sum;
}

export async function scrape(port: number): Promise<string> {
  const r = await httpGet(port, '/metrics', 5_000);
  expect(r.status, '/metrics status').toBe(200);
  return r.body;
}

/** The `uid`s of recorded events (records without one, e.g. agent_online, are skipped). */
export function recordedUids(file: string, pred: (r: { event: string; data: unknown }) => boolean = () => true): string[] {
  return readRecords(file)
    .filter(pred)
    .map((r) => (r.data as { uid?: unknown } | null)?.uid)
    .filter((u): u is string => typeof u === 'string');
}

/** No event handled twice: every uid in the recorder file appears once. */
export function expectNoDuplicates(file: string): number {
  const uids = recordedUids(file);
  const seen = new Set<string>();
  const dups = new Set<string>();
  for (const u of uids) (seen.has(u) ? dups : seen).add(u);
  expect([...dups], `events handled more than once (of ${uids.length} recorded)`).toEqual([]);
  return uids.length;
}

/** The checks every fault test ends with. */
export function expectSound(d: DaemonProcess, file: string | undefined, { alive = true } = {}): void {
  if (file !== undefined) expectNoDuplicates(file);
  expectNoFatal(d);
  expect(d.logs.some((l) => /unhandled|uncaught/i.test(String(l['msg']))), 'no unhandled rejection / uncaught exception line').toBe(false);
  if (alive) expect(isAlive(d), 'daemon process alive').toBe(true);
}

/** Time of a log line (pino `time`, ISO string or epoch ms) in unix ms. */
export function logTime(l: Record<string, unknown>): number {
  const t = l['time'];
  return typeof t === 'number' ? t : Date.parse(String(t));
}
