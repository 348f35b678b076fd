import { createHmac, timingSafeEqual } from 'node:crypto';
import type { KeyRing, SigningKey } from './keys.ts';
import type { SigningMode } from '../config/schema.ts';

/**
 * Signed envelopes (the Standard Webhooks scheme, carried inside the JSON).
 *
 * The publisher writes the unsigned envelope as JSON text B (an object, so it
 * ends with `}`), computes
 *
 *     mac = base64(HMAC-SHA256(secret, `${id}.${ts}.${channel}.` + B))
 *
 * where id is the envelope's `id` (a string), ts its `ts` (an integer, unix
 * ms, written in decimal) and channel the channel it is published on, and
 * sends B with its last `}` replaced by
 *
 *     ,"sig":"v1,<kid>,<mac>"}
 *
 * (several `v1,<kid>,<mac>` entries separated by one space are allowed, e.g.
 * signed with an old and a new key). The receiver cuts that tail off, puts
 * the `}` back and has B byte for byte: no canonical JSON is needed, and a
 * reader that does not verify sees one extra field. See docs/security.md.
 */

/** One type for `security.signing`, declared with the setting. */
export type { SigningMode };

/** Why a message failed verification. */
export type SignatureReason = 'unsigned' | 'bad_signature' | 'unknown_key' | 'stale' | 'replayed';

const TAIL_START = Buffer.from(',"sig":"v1,');
const CLOSE = Buffer.from('}');
const MAX_ENTRIES = 8;
// base64 of 32 bytes: 43 characters and one '='.
const TAIL = /^,"sig":"(v1,[A-Za-z0-9._-]{1,64},[A-Za-z0-9+/]{43}=(?: v1,[A-Za-z0-9._-]{1,64},[A-Za-z0-9+/]{43}=){0,7})"\}\s*$/;

function mac(key: SigningKey, id: string, ts: number, channel: string, body: Buffer | string, bodyEnd?: number): Buffer {
  const h = createHmac('sha256', key.secret);
  h.update(`${id}.${ts}.${channel}.`);
  if (typeof body === 'string') h.update(body);
  else {
    h.update(body.subarray(0, bodyEnd));
    h.update(CLOSE);
  }
  return h.digest();
}

/** The published text of an envelope: signed with the active key when `keys` is given, plain JSON otherwise. */
export function sealEnvelope(envelope: { readonly id: string; readonly ts: number; readonly event: string; readonly data: unknown }, channel: string, keys: KeyRing | undefined): string {
  const body = JSON.stringify(envelope);
  if (keys === undefined) return body;
  const sig = mac(keys.active, envelope.id, envelope.ts, channel, body).toString('base64');
  return `${body.slice(0, -1)},"sig":"v1,${keys.active.kid},${sig}"}`;
}

/**
 * The signature alone (no tolerance, no replay window): undefined when one
 * entry of the `sig` tail is a valid MAC by a listed key over id, ts,
 * channel (or stream key) and body. Durable entries use this: they may wait
 * in a stream for hours, and are delivered again on retries. Never throws.
 */
export function checkSignature(keys: KeyRing, channel: string, payload: Buffer, id: string | undefined, ts: number | undefined): 'unsigned' | 'bad_signature' | 'unknown_key' | undefined {
  const at = payload.lastIndexOf(TAIL_START);
  if (at < 0) return 'unsigned';
  const match = TAIL.exec(payload.toString('latin1', at));
  if (match === null) return 'bad_signature';
  if (id === undefined || ts === undefined || !Number.isSafeInteger(ts)) return 'bad_signature';
  let known = false;
  for (const entry of (match[1] as string).split(' ').slice(0, MAX_ENTRIES)) {
    const [, kid, b64] = entry.split(',') as [string, string, string];
    const key = keys.byKid.get(kid);
    if (key === undefined) continue;
    known = true;
    const expected = mac(key, id, ts, channel, payload, at);
    const given = Buffer.from(b64, 'base64');
    if (given.length === expected.length && timingSafeEqual(given, expected)) return undefined;
  }
  return known ? 'bad_signature' : 'unknown_key';
}

export interface VerifierOptions {
  readonly keys: KeyRing;
  /** How far a message's ts may be from now, either way, ms. */
  readonly toleranceMs: number;
  /** Most ids remembered for replay detection (the oldest are forgotten first). */
  readonly replayCapacity?: number;
  readonly now?: () => number;
}

/**
 * Verifies signed messages: signature, timestamp tolerance, replay. Ids are
 * remembered until their ts is past the tolerance (a copy is stale then),
 * at most `replayCapacity` of them: when a full window forgets a fresh id,
 * every message not newer than it is refused as stale from then on.
 */
export class Verifier {
  readonly #o: VerifierOptions;
  /** Ids accepted, with their ts, in the order received. */
  readonly #seen = new Map<string, number>();
  readonly #capacity: number;
  /** The newest ts among ids forgotten while still within the tolerance (the window was full). */
  #floor = -Infinity;

  constructor(options: VerifierOptions) {
    this.#o = options;
    this.#capacity = Math.max(1, options.replayCapacity ?? 100_000);
  }

  get remembered(): number {
    return this.#seen.size;
  }

  /**
   * Checks one raw message, whose parsed `id` and `ts` are given (undefined
   * when absent or of the wrong type). Returns undefined when it is good.
   * Never throws on any input.
   */
  verify(channel: string, payload: Buffer, id: string | undefined, ts: number | undefined): SignatureReason | undefined {
    const bad = checkSignature(this.#o.keys, channel, payload, id, ts);
    if (bad !== undefined || id === undefined || ts === undefined) return bad ?? 'bad_signature';
    const now = (this.#o.now ?? Date.now)();
    if (Math.abs(now - ts) > this.#o.toleranceMs) return 'stale';
    // Not newer than an id the full window had to forget: it cannot be told from a replay.
    if (ts <= this.#floor) return 'stale';
    if (this.#seen.has(id)) return 'replayed';
    this.#remember(id, ts, now);
    return undefined;
  }

  #remember(id: string, ts: number, now: number): void {
    const seen = this.#seen;
    // Forget ids whose ts is past the tolerance: a copy would be stale anyway (Map order is insertion order).
    const horizon = now - this.#o.toleranceMs;
    for (const [old, oldTs] of seen) {
      if (oldTs >= horizon && seen.size < this.#capacity) break;
      // Full (a busy fleet's own traffic is enough): forgotten while a copy would still be fresh, so
      // from now on nothing that old is accepted (else a recorded message could be replayed).
      // Not above now: an id whose ts ran ahead (a publisher's clock) must not make everyone's current
      // messages stale; a copy of such an id may pass until its ts is reached (docs/security.md).
      if (oldTs >= horizon) this.#floor = Math.max(this.#floor, Math.min(oldTs, now));
      seen.delete(old);
    }
    seen.set(id, ts);
  }
}
