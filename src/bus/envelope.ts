/**
 * The event envelope: parsing and validation of what arrives on an event
 * channel, before anything else looks at it.
 */

/**
 * An event as handlers see it. Read-only: when more than one handler gets
 * the same event, it is deeply frozen (each sees what the publisher sent, not
 * what another handler made of it); an event only one handler gets is that
 * handler's own, and not frozen (the types still forbid writes).
 * `Data` is the payload type a plugin declares for the event type (`Plugin<Options, Events>`,
 * plugins/types.ts); `unknown` unless declared. It is a promise, not a check: `data` is whatever
 * JSON the publisher sent.
 */
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

export type BadInputReason = 'too_large' | 'not_json' | 'not_object' | 'no_event' | 'forbidden_key' | 'too_deep';

export type ParseResult = { readonly ok: true; readonly event: AgentEvent } | { readonly ok: false; readonly reason: BadInputReason };

const MAX_EVENT_TYPE_LENGTH = 256;
/** Default of `events.maxDepth`: deeper messages are refused as `too_deep`. */
export const DEFAULT_MAX_DEPTH = 64;

// The walk's stack, kept between calls (the walk is synchronous, so it is never shared).
const stackValues: object[] = [];
const stackDepths: number[] = [];
const stackKeys: Array<string | undefined> = [];
const EMPTY: object = Object.freeze({});

/**
 * One walk over the parsed message, with an explicit stack instead of
 * recursion (JSON.parse itself takes any depth; a recursive walk over what it
 * returns ran out of stack at ~5,000 levels and killed the daemon). It
 * refuses nesting deeper than `maxDepth` (the envelope object is level 1) and,
 * when `checkKeys` is set, keys that let JSON reach an object's prototype once
 * a consumer merges it somewhere (`__proto__`, or `constructor.prototype`);
 * JSON.parse itself is safe, the danger is downstream. With `freeze`,
 * everything below the envelope is frozen on the way. Output of JSON.parse
 * has no shared or cyclic references.
 */
function walk(root: object, maxDepth: number, checkKeys: boolean, freeze: boolean): BadInputReason | undefined {
  stackValues[0] = root;
  stackDepths[0] = 1;
  stackKeys[0] = undefined;
  let top = 1;
  try {
    while (top > 0) {
      top--;
      const value = stackValues[top] as object;
      const depth = stackDepths[top] as number;
      const parentKey = checkKeys ? stackKeys[top] : undefined;
      stackValues[top] = EMPTY;
      if (depth > maxDepth) return 'too_deep';
      if (freeze && value !== root) Object.freeze(value);
      if (Array.isArray(value)) {
        for (let i = 0; i < value.length; i++) {
          const item: unknown = value[i];
          if (item === null || typeof item !== 'object') continue;
          stackValues[top] = item;
          stackDepths[top] = depth + 1;
          if (checkKeys) stackKeys[top] = undefined;
          top++;
        }
        continue;
      }
      const keys = Object.keys(value);
      for (let i = 0; i < keys.length; i++) {
        const key = keys[i] as string;
        if (checkKeys && (key === '__proto__' || (key === 'prototype' && parentKey === 'constructor'))) return 'forbidden_key';
        const item = (value as Record<string, unknown>)[key];
        if (item === null || typeof item !== 'object') continue;
        stackValues[top] = item;
        stackDepths[top] = depth + 1;
        if (checkKeys) stackKeys[top] = key;
        top++;
      }
    }
    return undefined;
  } finally {
    // Let go of what the message held: what an early return left, and a long stack a wide message grew.
    if (stackValues.length > 4096) {
      stackValues.length = 0;
      stackDepths.length = 0;
      stackKeys.length = 0;
    } else {
      for (let i = 0; i < top; i++) stackValues[i] = EMPTY;
      if (checkKeys) stackKeys.fill(undefined);
    }
  }
}

/**
 * Deep-freezes a parsed value (JSON.parse output: no cycles), iteratively:
 * the value may be as deep as events.maxDepth allows.
 */
export function freezeData(value: unknown): void {
  if (value === null || typeof value !== 'object' || Object.isFrozen(value)) return;
  walk(value, Infinity, false, true);
  Object.freeze(value);
}

/**
 * Parses one message. Never throws: every way a message can be bad maps to a
 * reason, and the caller counts and logs it. No step recurses over the
 * message, so its depth cannot exhaust the stack.
 *
 * `freeze` false leaves the event unfrozen: the pub/sub dispatcher freezes
 * it (and its data, `freezeData`) only when more than one handler gets it. Without freezing, a message too short to
 * nest deeper than `maxDepth` (each level takes two brackets) and without a
 * dangerous key in its text is not walked at all.
 */
export function parseEnvelope(channel: string, payload: Buffer | string, maxBytes: number, maxDepth: number = DEFAULT_MAX_DEPTH, freeze = true): ParseResult {
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
  // Keys are checked only when the text could spell a dangerous key: literally, or through \u escapes.
  // '"prototype"' with its quotes: V8 searches a bare 'prototype' slowly through runs of 'p'.
  // Each long needle behind a short one it contains: V8 sets up a Boyer-Moore search for a needle of
  // 7 characters or more, which costs more than the search itself in a message of a few hundred bytes
  // (the three long searches were a third of the time of JSON.parse on a 100-byte message).
  const checkKeys = (text.includes('__p') && text.includes('__proto__')) || (text.includes('ype"') && text.includes('"prototype"')) || text.includes('\\u');
  if (freeze || checkKeys || text.length >= 2 * maxDepth + 2) {
    const bad = walk(parsed, maxDepth, checkKeys, freeze);
    if (bad !== undefined) return { ok: false, reason: bad };
  }
  const raw = parsed as Record<string, unknown>;
  const type = raw['event'];
  if (typeof type !== 'string' || type.length === 0 || type.length > MAX_EVENT_TYPE_LENGTH) return { ok: false, reason: 'no_event' };
  const data = raw['data'] === undefined ? null : raw['data'];
  const event: { -readonly [K in keyof AgentEvent]: AgentEvent[K] } = { event: type, data, channel };
  // Metadata of the wrong type is ignored rather than fatal: publishers in other languages vary.
  const { id, source, ts, den } = raw;
  if (typeof id === 'string') event.id = id;
  if (typeof source === 'string') event.source = source;
  if (typeof ts === 'number' && Number.isFinite(ts)) event.ts = ts;
  if (typeof den === 'string') event.den = den;
  return { ok: true, event: freeze ? Object.freeze(event) : event };
}
