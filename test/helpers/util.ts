/**
 * The small helpers every kind of test uses (unit, in-process, process, fault):
 * unique ids, polling, collecting published messages, log-line predicates and
 * the contract's key names. No vitest import here: bench/ may use these too.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Redis } from 'ioredis';

/** package.json's version: what the registry record and `agentd --version` must say. */
export const PACKAGE_VERSION = (
  JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }
).version;

/** A parsed log line (pino JSON); `{ raw }` for a line that was not JSON. */
export type LogLine = Record<string, unknown> & { msg?: string };

/**
 * An id unique across test files running in parallel, against their own servers or one
 * shared Redis (AGENTD_TEST_REDIS_URL): the process id and random bytes.
 */
export function uniqueId(prefix = 't'): string {
  return `${prefix}-${process.pid}-${randomBytes(4).toString('hex')}`;
}

/**
 * Polls until fn returns a truthy value (or stops throwing) and returns it;
 * fails with `what` and the last error or value after timeoutMs.
 */
export async function waitFor<T>(what: string, fn: () => T | Promise<T>, timeoutMs = 5_000, stepMs = 20): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v as NonNullable<T>;
      last = v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) {
      const detail = last instanceof Error ? last.message : JSON.stringify(last);
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (last: ${detail})`);
    }
    await sleep(stepMs);
  }
}

export interface Collected {
  channel: string;
  /** The message as published. */
  message: string;
  /** The message parsed, when it is a JSON object. */
  json: Record<string, unknown> | undefined;
}

/** PSUBSCRIBEs `client` to the patterns and collects every message; resolves once subscribed. */
export async function collect(client: Redis, ...patterns: string[]): Promise<Collected[]> {
  const out: Collected[] = [];
  client.on('pmessage', (_pattern: string, channel: string, message: string) => {
    let json: Record<string, unknown> | undefined;
    try {
      const v: unknown = JSON.parse(message);
      json = v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;
    } catch {
      json = undefined;
    }
    out.push({ channel, message, json });
  });
  await client.psubscribe(...patterns);
  return out;
}

/** The `data` of a collected event envelope (an empty object when there is none). */
export const dataOf = (m: Collected): Record<string, unknown> => (m.json?.['data'] ?? {}) as Record<string, unknown>;

/** A promise with its resolve function outside, to hold handlers until a test releases them. */
export function gate(): { promise: Promise<void>; open: () => void } {
  let open!: () => void;
  const promise = new Promise<void>((r) => {
    open = r;
  });
  return { promise, open };
}

/** A log-line predicate: `msg` equal to the string, or matching the pattern. */
export function hasMsg(msg: string | RegExp): (l: Record<string, unknown>) => boolean {
  return (l) => typeof l['msg'] === 'string' && (typeof msg === 'string' ? l['msg'] === msg : msg.test(l['msg']));
}

/** Time of a log line (pino `time`, ISO string or epoch ms) in unix ms. */
export function logTime(l: Record<string, unknown>): number {
  const t = l['time'];
  return typeof t === 'number' ? t : Date.parse(String(t));
}

/** The contract's key and channel names (shared/design/contract.md). */
export const keys = {
  heartbeat: (id: string): string => `agent:${id}:heartbeat`,
  den: (den: string): string => `den:${den}:online_agents`,
  registry: 'global:agent_registry',
  channel: (type: string): string => `agent:events:${type}`,
};

/** The reference article's publisher format: only `event` and `data`. */
export function seedMessage(event: string, data: unknown): string {
  return JSON.stringify({ event, data });
}

/** Parses `CLIENT LIST` output into one record per client. */
export function parseClientList(text: string): Array<Record<string, string>> {
  return text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '')
    .map((line) => {
      const rec: Record<string, string> = {};
      for (const part of line.split(' ')) {
        const eq = part.indexOf('=');
        if (eq > 0) rec[part.slice(0, eq)] = part.slice(eq + 1);
      }
      return rec;
    });
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
