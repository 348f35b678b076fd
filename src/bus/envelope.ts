/**
 * The event envelope: parsing and validation of what arrives on an event
 * channel, before anything else looks at it.
 */

/** An event as handlers see it. Deeply frozen: handlers of other plugins get the same object. */
export interface AgentEvent<Data = unknown> {
  /** Event type, e.g. "new_message". */
  readonly event: string;
  /** The payload: any JSON value (null when the publisher sent none). */
  readonly data: Data;
  /** The channel the message arrived on. */
  readonly channel: string;
  /** Unique id, when the publisher set one (agentd does). */
  readonly id?: string;
  /** Publishing agent's id, when set. */
  readonly source?: string;
  /** Publish time in unix ms, when set. */
  readonly ts?: number;
  /** Publisher's den, when set. */
  readonly den?: string;
  /** Set for entries from a durable stream (inbox or den tasks), absent for pub/sub events. */
  readonly delivery?: Delivery;
}

export type StreamKind = 'inbox' | 'tasks';

/** Where a durable entry came from and which attempt this is, so a handler can be idempotent. */
export interface Delivery {
  /** The stream key: inbox:<id> or den:<den>:tasks. */
  readonly stream: string;
  readonly kind: StreamKind;
  /** The stream entry id (stable across attempts). */
  readonly id: string;
  /** 1 on the first delivery; more after a failure, a hand-over or a restart. */
  readonly attempt: number;
  /** durable.attempts: after this many the entry goes to the dead-letter stream. */
  readonly maxAttempts: number;
}

export type BadInputReason = 'too_large' | 'not_json' | 'not_object' | 'no_event' | 'forbidden_key';

export type ParseResult = { readonly ok: true; readonly event: AgentEvent } | { readonly ok: false; readonly reason: BadInputReason };

const MAX_EVENT_TYPE_LENGTH = 256;

/**
 * Keys that let JSON reach an object's prototype once a consumer merges it
 * somewhere (`__proto__`, or `constructor.prototype`). JSON.parse itself is
 * safe; the danger is downstream, so such messages are refused outright.
 */
function hasForbiddenKey(value: unknown, parentKey: string | undefined): boolean {
  if (value === null || typeof value !== 'object') return false;
  if (Array.isArray(value)) {
    for (const item of value) if (hasForbiddenKey(item, undefined)) return true;
    return false;
  }
  for (const key of Object.keys(value)) {
    if (key === '__proto__' || (key === 'prototype' && parentKey === 'constructor')) return true;
    if (hasForbiddenKey((value as Record<string, unknown>)[key], key)) return true;
  }
  return false;
}

function deepFreeze(value: unknown): void {
  if (value === null || typeof value !== 'object' || Object.isFrozen(value)) return;
  Object.freeze(value);
  if (Array.isArray(value)) {
    for (const item of value) deepFreeze(item);
  } else {
    for (const key of Object.keys(value)) deepFreeze((value as Record<string, unknown>)[key]);
  }
}

/**
 * Parses one message. Never throws: every way a message can be bad maps to a
 * reason, and the caller counts and logs it.
 */
export function parseEnvelope(channel: string, payload: Buffer | string, maxBytes: number): ParseResult {
  if (typeof payload === 'string') {
    // A stream entry's field arrives decoded; its UTF-8 size is at most 3 bytes per UTF-16 unit.
    if (payload.length * 3 > maxBytes && Buffer.byteLength(payload) > maxBytes) return { ok: false, reason: 'too_large' };
  } else if (payload.length > maxBytes) return { ok: false, reason: 'too_large' };
  const text = typeof payload === 'string' ? payload : payload.toString('utf8');
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    return { ok: false, reason: 'not_json' };
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) return { ok: false, reason: 'not_object' };
  // The walk is needed only when the text could spell a dangerous key: literally, or through \u escapes.
  // '"prototype"' with its quotes: V8 searches a bare 'prototype' slowly through runs of 'p'.
  if ((text.includes('__proto__') || text.includes('"prototype"') || text.includes('\\u')) && hasForbiddenKey(parsed, undefined)) {
    return { ok: false, reason: 'forbidden_key' };
  }
  const raw = parsed as Record<string, unknown>;
  const type = raw['event'];
  if (typeof type !== 'string' || type.length === 0 || type.length > MAX_EVENT_TYPE_LENGTH) return { ok: false, reason: 'no_event' };
  const data = raw['data'] === undefined ? null : raw['data'];
  deepFreeze(data);
  const event: { -readonly [K in keyof AgentEvent]: AgentEvent[K] } = { event: type, data, channel };
  // Metadata of the wrong type is ignored rather than fatal: publishers in other languages vary.
  const { id, source, ts, den } = raw;
  if (typeof id === 'string') event.id = id;
  if (typeof source === 'string') event.source = source;
  if (typeof ts === 'number' && Number.isFinite(ts)) event.ts = ts;
  if (typeof den === 'string') event.den = den;
  return { ok: true, event: Object.freeze(event) };
}
