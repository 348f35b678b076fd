/**
 * Small helpers shared by the process-level tests (test/process/*.test.ts):
 * the daemon runs as a real child process against a real redis-server.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Redis } from 'ioredis';
import { expect } from 'vitest';
import type { DaemonProcess } from '../helpers/daemon.ts';

export const RECORDER = fileURLToPath(new URL('../fixtures/plugins/recorder.js', import.meta.url));
export const PLUGIN_FIXTURES = fileURLToPath(new URL('../fixtures/plugins/', import.meta.url));
export const PACKAGE_VERSION = (
  JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }
).version;

export type LogLine = Record<string, unknown>;

/** An id that is unique across test files running in parallel against different servers. */
export function uniqueId(prefix: string): string {
  return `${prefix}-${process.pid}-${randomBytes(3).toString('hex')}`;
}

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

export interface Recorded {
  event: string;
  data: unknown;
  channel: string;
  at: number;
}

/** What the recorder fixture wrote so far (one JSON object per line). */
export function readRecords(file: string): Recorded[] {
  if (!existsSync(file)) return [];
  return readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => JSON.parse(l) as Recorded);
}

/**
 * Polls until fn returns a truthy value (or stops throwing) and returns it;
 * fails with `what` and the last error/value after timeoutMs.
 */
export async function waitFor<T>(what: string, fn: () => T | Promise<T>, timeoutMs = 5_000, stepMs = 50): Promise<NonNullable<T>> {
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

export function isAlive(d: DaemonProcess): boolean {
  return d.child.exitCode === null && d.child.signalCode === null;
}

/** No unhandled rejection or uncaught exception: no 'fatal' log line, nothing on stderr, nothing but JSON on stdout. */
export function expectNoFatal(d: DaemonProcess): void {
  const fatal = d.logs.filter((l) => l['level'] === 'fatal');
  expect(fatal, `fatal log lines: ${JSON.stringify(fatal)}`).toEqual([]);
  expect(d.stderr, 'daemon stderr').toEqual([]);
  expect(d.logs.filter((l) => 'raw' in l), 'non-JSON stdout lines').toEqual([]);
}

export function hasMsg(msg: string | RegExp): (l: LogLine) => boolean {
  return (l) => typeof l['msg'] === 'string' && (typeof msg === 'string' ? l['msg'] === msg : msg.test(l['msg']));
}

export interface RawMessage {
  channel: string;
  message: string;
  json: Record<string, unknown> | undefined;
}

/** PSUBSCRIBEs `client` to the patterns and collects every message; resolves once subscribed. */
export async function collectMessages(client: Redis, ...patterns: string[]): Promise<RawMessage[]> {
  const out: RawMessage[] = [];
  client.on('pmessage', (_pattern: string, channel: string, message: string) => {
    let json: Record<string, unknown> | undefined;
    try {
      json = JSON.parse(message) as Record<string, unknown>;
    } catch {
      json = undefined;
    }
    out.push({ channel, message, json });
  });
  await client.psubscribe(...patterns);
  return out;
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
