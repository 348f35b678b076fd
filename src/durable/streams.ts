/**
 * Low-level Redis Streams helpers for durable messages: appending with the
 * doorbell, consumer groups, reading and parsing entries. Everything that
 * talks to Redis here is non-blocking (no BLOCK), so it can share the
 * daemon's command connection with the heartbeat.
 */
import type { Redis } from 'ioredis';
import { DURABLE_GROUP, ENVELOPE_FIELD } from '../redis/keys.ts';
import { withScripts } from '../redis/scripts.ts';

/** One stream entry as read: its id and the raw value of its `envelope` field (undefined when absent). */
export interface StreamEntry {
  readonly id: string;
  readonly envelope: string | undefined;
  /** Every field, for dead-letter entries (error, attempts, source_id); built on first use. */
  readonly fields: Readonly<Record<string, string>>;
}

/** Unix ms at which an entry id was assigned by XADD (its first part); NaN for a bad id. */
export function entryTime(id: string): number {
  return Number(id.slice(0, id.indexOf('-')));
}

class Entry implements StreamEntry {
  readonly id: string;
  readonly envelope: string | undefined;
  readonly #list: readonly unknown[];
  #fields: Record<string, string> | undefined;

  constructor(id: string, list: readonly unknown[]) {
    this.id = id;
    this.#list = list;
    // agentd writes `envelope` first; anything else is searched for.
    if (list[0] === ENVELOPE_FIELD && typeof list[1] === 'string') this.envelope = list[1];
    else {
      const v = this.fields[ENVELOPE_FIELD];
      this.envelope = typeof v === 'string' ? v : undefined;
    }
  }

  get fields(): Readonly<Record<string, string>> {
    if (this.#fields) return this.#fields;
    const fields: Record<string, string> = Object.create(null) as Record<string, string>;
    const list = this.#list;
    for (let i = 0; i + 1 < list.length; i += 2) {
      const k = list[i];
      const v = list[i + 1];
      if (typeof k === 'string' && typeof v === 'string') fields[k] = v;
    }
    return (this.#fields = fields);
  }
}

/**
 * Parses the reply of XRANGE / XCLAIM / one stream of XREADGROUP. Bounded and
 * tolerant: Redis data is untrusted, and XCLAIM yields null for entries
 * deleted meanwhile.
 */
export function parseEntries(raw: unknown): StreamEntry[] {
  if (!Array.isArray(raw)) return [];
  const out: StreamEntry[] = [];
  for (const item of raw) {
    if (!Array.isArray(item) || typeof item[0] !== 'string') continue;
    out.push(new Entry(item[0], Array.isArray(item[1]) ? (item[1] as unknown[]) : []));
  }
  return out;
}

/**
 * XADD with an approximate cap and PUBLISH of the new id on the doorbell
 * channel (same name as the key), in one script call. Resolves with the id.
 */
export function appendEntry(redis: Redis, key: string, envelope: string, maxLen: number, extra: Readonly<Record<string, string>> = {}): Promise<string> {
  const fields: string[] = [ENVELOPE_FIELD, envelope];
  for (const [k, v] of Object.entries(extra)) fields.push(k, v);
  return withScripts(redis).agentdAppendEntry(key, maxLen, ...fields);
}

/** Creates the `agentd` group (from the start of the stream, so nothing sent before is missed) if missing. */
export async function ensureGroup(redis: Redis, key: string): Promise<void> {
  try {
    await redis.xgroup('CREATE', key, DURABLE_GROUP, '0', 'MKSTREAM');
  } catch (err) {
    if (!String((err as Error).message).includes('BUSYGROUP')) throw err;
  }
}

export function isNoGroup(err: unknown): boolean {
  return err instanceof Error && err.message.includes('NOGROUP');
}

/**
 * Non-blocking XREADGROUP for one consumer of one stream: `>` reads new
 * entries, an id reads the consumer's own pending entries after it.
 */
export async function readGroup(redis: Redis, key: string, consumer: string, count: number, from: string): Promise<StreamEntry[]> {
  const reply = (await redis.xreadgroup('GROUP', DURABLE_GROUP, consumer, 'COUNT', count, 'STREAMS', key, from)) as unknown;
  if (!Array.isArray(reply) || reply.length === 0) return [];
  const first = reply[0] as unknown;
  return Array.isArray(first) ? parseEntries(first[1]) : [];
}

export interface PendingInfo {
  readonly id: string;
  readonly consumer: string;
  readonly idleMs: number;
  readonly deliveries: number;
}

/** Extended XPENDING: up to `count` pending entries after `start` (exclusive when given with '('), optionally of one consumer. */
export async function pendingEntries(redis: Redis, key: string, start: string, count: number, consumer?: string): Promise<PendingInfo[]> {
  const args: Array<string | number> = [key, DURABLE_GROUP, start, '+', count];
  if (consumer !== undefined) args.push(consumer);
  const reply = (await redis.call('XPENDING', ...args)) as unknown;
  if (!Array.isArray(reply)) return [];
  const out: PendingInfo[] = [];
  for (const row of reply) {
    if (!Array.isArray(row) || typeof row[0] !== 'string') continue;
    out.push({ id: row[0], consumer: String(row[1]), idleMs: Number(row[2]), deliveries: Number(row[3]) });
  }
  return out;
}

/** Length, pending (read, not acknowledged) and dead letters of one durable stream. */
export interface StreamDepth {
  readonly length: number;
  readonly pending: number;
  readonly dead: number;
}

/**
 * One round trip, O(1) on the server: XLEN of the stream and of its dead
 * letters, and the count from XPENDING's summary form (0 while the group
 * does not exist yet).
 */
export async function streamDepth(redis: Redis, key: string, deadKey: string): Promise<StreamDepth> {
  const replies = (await redis.multi().xlen(key).xpending(key, DURABLE_GROUP).xlen(deadKey).exec()) ?? [];
  const [len, pending, dead] = replies.map(([err, value]) => (err ? undefined : value));
  const count = Array.isArray(pending) ? Number(pending[0]) : 0;
  return { length: Number(len ?? 0), pending: Number.isFinite(count) ? count : 0, dead: Number(dead ?? 0) };
}
