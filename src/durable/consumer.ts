import PQueue from 'p-queue';
import type { Redis } from 'ioredis';
import type { Binding, HandlerOutcome } from '../bus/dispatcher.ts';
import { parseEnvelope, type AgentEvent, type Delivery, type StreamKind } from '../bus/envelope.ts';
import { ID_PATTERN } from '../config/schema.ts';
import { orAfter } from '../deadline.ts';
import { Code, describeError } from '../errors.ts';
import type { Logger } from '../log.ts';
import { DURABLE_GROUP, deadLetterKey, inboxKey } from '../redis/keys.ts';
import { withScripts } from '../redis/scripts.ts';
import type { KeyRing } from '../security/keys.ts';
import { checkSignature, type SigningMode } from '../security/signing.ts';
import { appendEntry, ensureGroup, entryTime, isNoGroup, parseEntries, pendingEntries, readGroup, type PendingInfo, type StreamEntry } from './streams.ts';

/** What the consumer reports, for metrics and tests. */
export interface ConsumerHooks {
  acked?(kind: StreamKind, latencySeconds: number): void;
  redelivered?(kind: StreamKind): void;
  deadLettered?(kind: StreamKind, reason: DeadLetterReason): void;
  trimmed?(kind: StreamKind, count: number): void;
  handlerDone?(plugin: string, event: string, seconds: number, outcome: HandlerOutcome): void;
}

export type DeadLetterReason = 'failed' | 'unhandled' | 'bad_envelope' | 'redelivered' | 'retention';

/** A reply envelope's error, on the wire (contract.md "Request/reply envelope fields"). */
export interface ReplyError {
  readonly code: 'handler_failed' | 'dead_lettered';
  readonly message: string;
}

export interface ConsumerOptions {
  readonly redis: Redis;
  /** This agent: the consumer name in every group. */
  readonly agent: { readonly id: string; readonly den: string };
  readonly log: Logger;
  readonly attempts: number;
  readonly backoffMs: number;
  readonly backoffMaxMs: number;
  readonly concurrency: number;
  readonly maxLen: number;
  readonly handlerTimeoutMs: number;
  readonly maxBytes: number;
  readonly orphanAfterMs: number;
  /** Makes a reply envelope (JSON) for a request that finished; the consumer appends it to inbox:<replyTo>. */
  readonly makeReply: (inReplyTo: string, outcome: { ok: true; data: unknown } | { ok: false; error: ReplyError }, stream: string) => string;
  /** Signature checks of entries (security.signing warn or require): the MAC over the stream key, no tolerance or replay window. */
  readonly trust?: { readonly signing: SigningMode; readonly keys: KeyRing };
  /** Gets a reply that arrived in the inbox; returns false when no request waits for it. */
  readonly onReply: (raw: Record<string, unknown>) => boolean;
  readonly hooks?: ConsumerHooks;
}

interface Stream {
  readonly key: string;
  readonly kind: StreamKind;
  /** Entries read and not yet acknowledged here (running, waiting, backing off, or being acked), by id. */
  readonly inflight: Map<string, InFlight>;
}

interface InFlight {
  readonly stream: Stream;
  readonly id: string;
  attempt: number;
  retryTimer: NodeJS.Timeout | undefined;
  /** Contexts of asynchronous handler calls still running (aborted at shutdown); undefined when there are none. */
  contexts: Array<{ abort(reason: unknown): void }> | undefined;
  /** The group says another consumer owns it now (a hand-over while we were frozen): never run or retried here again. */
  lost?: boolean;
}

type Result = { readonly ok: true; readonly value: unknown } | { readonly ok: false; readonly error: string };

interface Watched {
  readonly startedAt: number;
  readonly ctx: { abort(reason: unknown): void };
  settle(outcome: HandlerOutcome, result: Result): void;
}

function isThenable(value: unknown): value is PromiseLike<unknown> {
  return value !== null && (typeof value === 'object' || typeof value === 'function') && typeof (value as { then?: unknown }).then === 'function';
}

/**
 * Whether the envelope text has `key` ('"replyTo"' or '"inReplyTo"'). Behind a
 * search for 'plyTo"', which both contain: V8 sets up a Boyer-Moore search for
 * a needle of 7 characters or more, which cost more per entry than the rest of
 * the check (~250 ns against ~15 ns on a 100-byte envelope).
 */
function mentionsReply(envelope: string, key: string): boolean {
  return envelope.includes('plyTo"') && envelope.includes(key);
}

/** What a synchronous handler that returned nothing settles with: no object per call. */
const OK_UNDEFINED: Result = Object.freeze({ ok: true, value: undefined });

class HandlerTimeout extends Error {
  override readonly name = 'TimeoutError';
}

const HISTORY_PAGE = 200;
const SHUTDOWN = new Error('daemon shutting down');


/**
 * Reads this agent's inbox and its den's task stream through the `agentd`
 * consumer group and hands each entry to the handlers of its type.
 *
 * Bounds: at most `concurrency` entries run at once and at most
 * 2 x concurrency are out of Redis (running + waiting in the p-queue + the
 * batch just read): the stream is read again only when nothing waits
 * (`onSizeLessThan(1)`), a read asks for at most `concurrency` entries and
 * only for the room left, and the one read sent ahead while a batch runs
 * (#readNew) counts that batch too. So a slow handler holds entries back in
 * Redis instead of dropping them. Entries are acknowledged only after every
 * handler succeeded, or when they are dead-lettered. Reads never block (no
 * BLOCK): the command connection is shared with the heartbeat.
 *
 * The hot path (see #startBatch): a read batch is handled in one pass, without
 * a p-queue task per entry. While a slot is free and nothing waits, an entry
 * starts at once; a synchronous handler finishes right there (no slot, no
 * promise), an asynchronous one is handed to the p-queue as a task that holds
 * a slot until it settles. Once the slots are full, the rest of the batch
 * waits in the p-queue as before. The p-queue therefore still counts every
 * running and waiting entry, and stays the backpressure bound. The acks of a
 * batch go out as one XACK, written at its end (while the read sent ahead is
 * on its way), not on a later turn.
 */
export class DurableConsumer {
  readonly #o: ConsumerOptions;
  readonly #streams: readonly Stream[];
  readonly #queue: PQueue;
  readonly #acks = new Map<Stream, string[]>();
  #ackScheduled = false;
  /** Set while a read batch is started: its acks are flushed at its end, not on the next turn. */
  #inBatch = false;
  #byType = new Map<string, readonly Binding[]>();
  #wildcard: readonly Binding[] = [];
  #pumping = false;
  #again = false;
  #historyWanted = true;
  #stopped = true;
  /** The last read error of each stream, so that a lasting one is logged once. */
  readonly #readErrors = new Map<string, string>();
  readonly #watched = new Set<Watched>();
  #watchTimer: NodeJS.Timeout | undefined;
  /** Where the next orphan check goes on in the den's pending list ('0-0': from the start). */
  #orphanCursor = '0-0';
  /** Counts, for stats and tests. */
  readonly counts = { handled: 0, acked: 0, failedAttempts: 0, redelivered: 0, deadLettered: 0, trimmed: 0, lateReplies: 0 };

  constructor(options: ConsumerOptions) {
    this.#o = options;
    this.#streams = [
      { key: inboxKey(options.agent.id), kind: 'inbox', inflight: new Map() },
      { key: `den:${options.agent.den}:tasks`, kind: 'tasks', inflight: new Map() },
    ];
    this.#queue = new PQueue({ concurrency: options.concurrency });
  }

  /** The doorbell channels to subscribe to: one per stream, named like the stream. */
  get channels(): string[] {
    return this.#streams.map((s) => s.key);
  }

  get inFlight(): number {
    return this.#streams.reduce((n, s) => n + s.inflight.size, 0);
  }

  get running(): number {
    return this.#queue.pending;
  }

  setBindings(bindings: readonly Binding[]): void {
    this.#wildcard = bindings.filter((b) => b.on === '*');
    const byType = new Map<string, Binding[]>();
    for (const b of bindings) {
      if (b.on === '*') continue;
      byType.set(b.on, [...(byType.get(b.on) ?? []), b]);
    }
    this.#byType = new Map([...byType].map(([t, list]) => [t, [...list, ...this.#wildcard]]));
  }

  async start(): Promise<void> {
    this.#stopped = false;
    for (const s of this.#streams) {
      try {
        await ensureGroup(this.#o.redis, s.key);
      } catch (err) {
        // Redis dropped right now, or a key of the wrong type: a read that finds no group creates it (NOGROUP below).
        this.#o.log.warn({ stream: s.key, err: describeError(err) }, 'could not create a durable stream group yet; retrying at the next poll');
      }
    }
    this.#historyWanted = true;
    void this.pump();
  }

  /** A doorbell rang (or the poll timer fired): read what is new; `pending` also re-reads entries handed to us. */
  ring(payload?: string): void {
    if (payload === 'pending') this.#historyWanted = true;
    void this.pump();
  }

  /** The poll tick: new entries, our own pending ones, orphans, and acks that failed before. */
  poll(): void {
    this.#historyWanted = true;
    if (this.#acks.size > 0) this.#scheduleAcks();
    void this.pump();
  }

  async pump(): Promise<void> {
    if (this.#stopped) return;
    if (this.#pumping) {
      this.#again = true;
      return;
    }
    this.#pumping = true;
    try {
      do {
        this.#again = false;
        if (this.#historyWanted) {
          this.#historyWanted = false;
          for (const s of this.#streams) await this.#guarded(s, () => this.#readHistory(s));
        }
        for (const s of this.#streams) await this.#guarded(s, () => this.#readNew(s));
      } while (this.#again && !this.#stopped);
    } finally {
      this.#pumping = false;
    }
  }

  /**
   * One stream's read, its failure kept to that stream: a broken inbox (a key
   * of the wrong type, a lost group, an ACL refusal) must not stall the den's
   * tasks, nor the other way round.
   */
  async #guarded(s: Stream, read: () => Promise<void>): Promise<void> {
    try {
      await read();
      this.#readErrors.delete(s.key);
    } catch (err) {
      if (isNoGroup(err)) {
        // Redis lost the group (restart without persistence, DEL, XGROUP DESTROY): make it again, read on the next tick.
        this.#o.log.warn({ stream: s.key, err: describeError(err) }, 'durable stream group missing; creating it again');
        await ensureGroup(this.#o.redis, s.key).catch(() => undefined);
        this.#historyWanted = true;
        return;
      }
      // Connection errors come and go with Redis; anything else (an ACL refusal, a wrong type) is said once per stream.
      const message = describeError(err);
      const quiet = this.#o.redis.status !== 'ready' || message === this.#readErrors.get(s.key);
      this.#readErrors.set(s.key, message);
      this.#o.log[quiet ? 'debug' : 'warn']({ stream: s.key, err: message }, 'durable read failed; retrying at the next poll');
    }
  }

  /**
   * Reads new entries while there is room: at most `concurrency` per read, and
   * never more than 2 x concurrency out of Redis (running + waiting + the batch
   * just read). While one batch runs, the next is already being read (one read
   * ahead, when the bound leaves room for it), so Redis prepares a batch while
   * the handlers run the last one instead of waiting for them.
   */
  async #readNew(s: Stream): Promise<void> {
    const c = this.#o.concurrency;
    let ahead: { readonly count: number; readonly reply: Promise<StreamEntry[]> } | undefined;
    try {
      for (;;) {
        if (this.#stopped) return;
        let count: number;
        let entries: StreamEntry[];
        if (ahead) {
          count = ahead.count;
          const reply = ahead.reply;
          ahead = undefined;
          entries = await reply;
        } else {
          // Read again once nothing waits (backpressure: entries stay in Redis while handlers are busy).
          await this.#queue.onSizeLessThan(1);
          if (this.#stopped) return;
          count = Math.min(c, 2 * c - this.#queue.size - this.#queue.pending);
          entries = await readGroup(this.#o.redis, s.key, this.#o.agent.id, count, '>');
        }
        if (entries.length === count && !this.#stopped && this.#queue.size === 0) {
          const room = 2 * c - this.#queue.pending - entries.length;
          if (room > 0) {
            const n = Math.min(c, room);
            ahead = { count: n, reply: readGroup(this.#o.redis, s.key, this.#o.agent.id, n, '>') };
          }
        }
        if (entries.length > 0) this.#startBatch(s, entries, undefined);
        if (entries.length < count) return;
      }
    } finally {
      // Only when stopping: what the read ahead brings stays pending here (handed over at stop, or read again on return).
      if (ahead) ahead.reply.catch(() => undefined);
    }
  }

  /** Our own pending entries that nothing here works on: left from before a restart, or handed to us. */
  async #readHistory(s: Stream): Promise<void> {
    let start = '-';
    for (let page = 0; page < 1_000 && !this.#stopped; page++) {
      const rows = await pendingEntries(this.#o.redis, s.key, start, HISTORY_PAGE, this.#o.agent.id);
      let free = rows.filter((r) => !s.inflight.has(r.id));
      // As fast as handlers finish, like #readNew: a page may be far more than the queue holds.
      while (free.length > 0 && !this.#stopped) {
        await this.#queue.onSizeLessThan(1);
        const room = this.#room();
        await this.takeOver(s.key, free.slice(0, room));
        free = free.slice(room);
      }
      if (rows.length < HISTORY_PAGE) return;
      start = `(${rows[rows.length - 1]!.id}`;
    }
  }

  /**
   * Claims pending entries for this agent (min-idle 0) and handles them; the
   * attempt is one more than the deliveries Redis counted. Used for our own
   * leftovers, for entries of a dead member, and for orphans.
   */
  async takeOver(streamKey: string, rows: readonly PendingInfo[]): Promise<number> {
    const s = this.#streams.find((x) => x.key === streamKey);
    if (!s || rows.length === 0) return 0;
    const ids = rows.map((r) => r.id).filter((id) => !s.inflight.has(id));
    if (ids.length === 0) return 0;
    if (this.#stopped) {
      // Not reading (yet, or any more): take them without a delivery; our pending list is read at start.
      await this.#o.redis.xclaim(s.key, DURABLE_GROUP, this.#o.agent.id, 0, ...ids, 'JUSTID');
      return ids.length;
    }
    // Backpressure: read in only what the queue has room for. The rest becomes ours in Redis
    // (JUSTID: no delivery counted) and #readHistory reads it in as handlers finish.
    const room = this.#room();
    const later = ids.slice(room);
    if (later.length > 0) {
      await this.#o.redis.xclaim(s.key, DURABLE_GROUP, this.#o.agent.id, 0, ...later, 'JUSTID');
      this.#historyWanted = true;
      void this.pump();
      if (room === 0) return later.length;
    }
    const now = later.length > 0 ? ids.slice(0, room) : ids;
    const entries = parseEntries(await this.#o.redis.xclaim(s.key, DURABLE_GROUP, this.#o.agent.id, 0, ...now));
    const byId = new Map(rows.map((r) => [r.id, r.deliveries]));
    const got = new Set(entries.map((e) => e.id));
    const gone = now.filter((id) => !got.has(id));
    if (gone.length > 0) await this.#trimmedIfMissing(s, gone, 'claim');
    for (let i = 0; i < entries.length; i++) {
      this.counts.redelivered++;
      this.#o.hooks?.redelivered?.(s.kind);
    }
    if (entries.length > 0) this.#startBatch(s, entries, byId);
    return entries.length + later.length;
  }

  /** Entries the queue can take now: never more than 2 x concurrency out of Redis (running + waiting). */
  #room(): number {
    return Math.max(0, 2 * this.#o.concurrency - this.#queue.size - this.#queue.pending);
  }

  /** Orphans: den tasks pending longer than orphanAfter without a refreshed claim (their member stopped without a reap). */
  async claimOrphans(): Promise<void> {
    const s = this.#streams[1]!;
    // XAUTOCLAIM looks at most 10 x COUNT pending entries per call: go on from where the last call stopped
    // (its cursor), so an orphan behind a long list of live pending entries is found within a few ticks.
    const reply = (await this.#o.redis.xautoclaim(s.key, DURABLE_GROUP, this.#o.agent.id, this.#o.orphanAfterMs, this.#orphanCursor, 'COUNT', 100, 'JUSTID')) as unknown[];
    this.#orphanCursor = typeof reply?.[0] === 'string' && /^\d+-\d+$/.test(reply[0]) ? reply[0] : '0-0';
    const ids = Array.isArray(reply?.[1]) ? (reply[1] as unknown[]).filter((x): x is string => typeof x === 'string') : [];
    // Redis 7: the third element lists pending ids whose entries were trimmed away.
    const deleted = Array.isArray(reply?.[2]) ? (reply[2] as unknown[]).filter((x): x is string => typeof x === 'string') : [];
    if (deleted.length > 0) await this.#trimmed(s, deleted, 'autoclaim');
    if (ids.length === 0) return;
    this.#o.log.warn({ stream: s.key, count: ids.length, orphanAfterMs: this.#o.orphanAfterMs }, 'took over durable tasks whose claim was not refreshed');
    const rows: PendingInfo[] = [];
    for (const id of ids) rows.push(...(await pendingEntries(this.#o.redis, s.key, id, 1)));
    await this.takeOver(s.key, rows);
  }

  /** Resets the idle time of every entry we still work on, so nobody takes it as an orphan. */
  async refreshClaims(): Promise<void> {
    for (const s of this.#streams) {
      const ids = [...s.inflight.keys()];
      if (ids.length === 0) continue;
      let lost: string[];
      try {
        lost = await withScripts(this.#o.redis).agentdRefreshClaims(s.key, DURABLE_GROUP, this.#o.agent.id, ...ids);
      } catch (err) {
        // One broken stream (deleted, a wrong type) must not leave the other's running entries looking orphaned.
        this.#o.log.debug({ stream: s.key, err: describeError(err) }, 'could not refresh durable claims');
        continue;
      }
      for (const id of lost) {
        const f = s.inflight.get(id);
        if (f) f.lost = true;
      }
      if (lost.length > 0) this.#o.log.warn({ stream: s.key, ids: lost.slice(0, 10), count: lost.length }, 'durable entries still running here are no longer ours (taken over or trimmed)');
    }
  }

  /**
   * Starts the entries of one read (or claim): attempt 1, or one more than the
   * deliveries Redis counted (`attempts`). One pass, no p-queue task per entry:
   * while a slot is free and nothing waits, an entry runs at once; a
   * synchronous handler finishes here, an asynchronous one (or a dead-letter
   * write) becomes a p-queue task that holds its slot until it settles. When
   * the slots are full, the rest waits in the p-queue, in order. The acks of
   * the batch are written at its end, ahead of the next read.
   */
  #startBatch(s: Stream, entries: readonly StreamEntry[], attempts: ReadonlyMap<string, number> | undefined): void {
    const concurrency = this.#o.concurrency;
    const queue = this.#queue;
    const outer = this.#inBatch;
    this.#inBatch = true;
    try {
      for (let i = 0; i < entries.length; i++) {
        const e = entries[i]!;
        if (s.inflight.has(e.id)) continue;
        const f: InFlight = { stream: s, id: e.id, attempt: attempts ? (attempts.get(e.id) ?? 1) + 1 : 1, retryTimer: undefined, contexts: undefined };
        s.inflight.set(e.id, f);
        // Replies skip the queue: a handler awaiting ctx.request holds a slot, so a reply
        // queued behind it could wait for its own requester to time out.
        if (s.kind === 'inbox' && e.envelope !== undefined && mentionsReply(e.envelope, '"inReplyTo"') && this.#replyNow(f, e.envelope)) continue;
        if (queue.size > 0 || queue.pending >= concurrency) {
          void queue.add(() => this.#handle(f, e)).catch((err: unknown) => this.#unexpected(f, err));
          continue;
        }
        let running: void | Promise<void>;
        try {
          running = this.#handle(f, e);
        } catch (err) {
          this.#unexpected(f, err);
          continue;
        }
        // Started here, so the queue adds it as running at once (a free slot): it counts against `concurrency`.
        if (running) void queue.add(() => running).catch((err: unknown) => this.#unexpected(f, err));
      }
    } finally {
      this.#inBatch = outer;
    }
    if (!outer && this.#acks.size > 0) void this.#flushAcks();
  }

  #unexpected(f: InFlight, err: unknown): void {
    this.#o.log.error({ err: describeError(err), stream: f.stream.key, id: f.id }, 'durable entry handling failed unexpectedly');
  }

  /** A reply (`event: "reply"` with `inReplyTo`) goes to the waiting request and is acknowledged; false for anything else. */
  #replyNow(f: InFlight, envelope: string): boolean {
    const parsed = parseEnvelope(f.stream.key, envelope, this.#o.maxBytes);
    if (!parsed.ok || parsed.event.event !== 'reply') return false; // a bad one is dead-lettered by #handle
    if (this.#untrusted(f.stream.key, envelope, parsed.event, false) !== undefined) return false; // #handle decides and logs
    const r = JSON.parse(envelope) as Record<string, unknown>;
    if (typeof r['inReplyTo'] !== 'string') return false;
    // The checked, frozen data rather than the raw parse.
    r['data'] = parsed.event.data;
    if (!this.#o.onReply(r)) {
      this.counts.lateReplies++;
      this.#o.log.debug({ inReplyTo: r['inReplyTo'].slice(0, 100) }, 'reply for no waiting request (timed out, or the requester restarted)');
    }
    this.#ack(f);
    return true;
  }

  /** The signature check of an entry (security.signing warn or require): the reason it fails, logged; undefined when good or off. */
  #untrusted(stream: string, envelope: string, event: AgentEvent, log = true): 'unsigned' | 'bad_signature' | 'unknown_key' | undefined {
    const trust = this.#o.trust;
    if (trust === undefined || trust.signing === 'off') return undefined;
    const reason = checkSignature(trust.keys, stream, Buffer.from(envelope), event.id, event.ts);
    if (reason !== undefined && log) {
      this.#o.log.warn({ code: Code.AGENTD_ERR_BAD_EVENT, stream: stream.slice(0, 200), reason, event: event.event.slice(0, 64) }, trust.signing === 'require' ? 'durable entry failed the signature check; dead-lettered' : 'durable entry failed the signature check; handled anyway (security.signing=warn)');
    }
    return reason;
  }

  /**
   * Handles one entry. Synchronous (returns undefined) when its handlers are
   * and nothing else needs Redis first; a promise otherwise (an async handler,
   * a reply to send, a dead letter to write).
   */
  #handle(f: InFlight, e: StreamEntry): void | Promise<void> {
    const s = f.stream;
    if (this.#stopped || f.lost) {
      s.inflight.delete(f.id); // stays pending: handed over, or read again on return
      return;
    }
    if (f.attempt > this.#o.attempts) {
      return this.#deadLetter(f, e, `delivered ${f.attempt - 1} times without being acknowledged (its handlers' agents died or stopped)`, 'redelivered', f.attempt - 1);
    }
    const envelope = e.envelope;
    if (envelope === undefined) return this.#deadLetter(f, e, 'entry has no envelope field', 'bad_envelope', f.attempt);
    const parsed = parseEnvelope(s.key, envelope, this.#o.maxBytes);
    if (!parsed.ok) return this.#deadLetter(f, e, `bad envelope: ${parsed.reason}`, 'bad_envelope', f.attempt);
    const untrusted = this.#untrusted(s.key, envelope, parsed.event);
    if (untrusted !== undefined && this.#o.trust?.signing === 'require') {
      // No reply either: a forged replyTo must not make us write anywhere.
      return this.#deadLetter(f, e, `untrusted entry: ${untrusted} (security.signing=require)`, 'bad_envelope', f.attempt);
    }
    // Request/reply fields ride in the envelope next to event and data.
    let raw: Record<string, unknown> | undefined;
    if (mentionsReply(envelope, '"replyTo"') || mentionsReply(envelope, '"inReplyTo"')) raw = JSON.parse(envelope) as Record<string, unknown>;
    if (s.kind === 'inbox' && parsed.event.event === 'reply' && raw && typeof raw['inReplyTo'] === 'string') {
      if (!this.#o.onReply(raw)) {
        this.counts.lateReplies++;
        this.#o.log.debug({ inReplyTo: raw['inReplyTo'] }, 'reply for no waiting request (timed out, or the requester restarted)');
      }
      this.#ack(f);
      return;
    }
    // A replyTo that is no agent id (contract.md: 1-128 of [A-Za-z0-9._-]) gets no reply: a sender must not make us write to any key.
    const replyTo = raw && typeof raw['replyTo'] === 'string' && ID_PATTERN.test(raw['replyTo']) && typeof raw['id'] === 'string' ? { to: raw['replyTo'], id: raw['id'] } : undefined;
    const type = parsed.event.event;
    const bindings = this.#byType.get(type) ?? this.#wildcard;
    if (bindings.length === 0) {
      return this.#deadLetter(f, e, `no handler for event type ${JSON.stringify(type.slice(0, 100))}`, 'unhandled', f.attempt, replyTo);
    }
    const delivery: Delivery = { stream: s.key, kind: s.kind, id: e.id, attempt: f.attempt, maxAttempts: this.#o.attempts };
    const event: AgentEvent = Object.freeze({ ...parsed.event, delivery });
    const result = this.#run(f, event, bindings);
    if (isThenable(result)) return result.then((r) => this.#settle(f, e, type, replyTo, r));
    return this.#settle(f, e, type, replyTo, result);
  }

  /** After the handlers: ack (and reply), retry later, or dead-letter. */
  #settle(f: InFlight, e: StreamEntry, type: string, replyTo: { to: string; id: string } | undefined, result: Result): void | Promise<void> {
    this.counts.handled++;
    if (this.#stopped && !result.ok) return; // aborted by shutdown: stays pending
    if (result.ok) {
      if (replyTo) return this.#reply(replyTo, { ok: true, data: result.value === undefined ? null : result.value }).then(() => this.#ack(f));
      this.#ack(f);
      return;
    }
    const s = f.stream;
    this.counts.failedAttempts++;
    if (f.attempt < this.#o.attempts) {
      const wait = Math.min(this.#o.backoffMaxMs, this.#o.backoffMs * 2 ** (f.attempt - 1));
      this.#o.log.warn({ stream: s.key, id: e.id, event: type, attempt: f.attempt, of: this.#o.attempts, retryInMs: wait, err: result.error }, 'durable handler failed; will retry');
      f.retryTimer = setTimeout(() => void this.#retry(f), wait);
      f.retryTimer.unref();
      return;
    }
    return this.#deadLetter(f, e, result.error, 'failed', f.attempt, replyTo);
  }

  async #retry(f: InFlight): Promise<void> {
    f.retryTimer = undefined;
    if (this.#stopped) return;
    const s = f.stream;
    try {
      // Still ours? A member that was frozen past its reap had its entries handed over meanwhile:
      // a retry's XCLAIM would take the entry back from the member running it now.
      const [row] = f.lost ? [] : await pendingEntries(this.#o.redis, s.key, f.id, 1);
      if (f.lost || (row && row.id === f.id && row.consumer !== this.#o.agent.id)) {
        s.inflight.delete(f.id);
        this.#o.log.warn({ stream: s.key, id: f.id, attempt: f.attempt }, 'durable retry dropped: the entry was handed to another member meanwhile');
        return;
      }
      // XCLAIM without JUSTID: Redis counts the delivery, so the attempt survives a crash.
      const [entry] = parseEntries(await this.#o.redis.xclaim(s.key, DURABLE_GROUP, this.#o.agent.id, 0, f.id));
      if (!entry) {
        s.inflight.delete(f.id);
        await this.#trimmedIfMissing(s, [f.id], 'retry');
        return;
      }
      f.attempt++;
      void this.#queue.add(() => this.#handle(f, entry));
    } catch (err) {
      this.#o.log.debug({ err: describeError(err), id: f.id }, 'durable retry could not claim its entry; trying again');
      f.retryTimer = setTimeout(() => void this.#retry(f), Math.min(this.#o.backoffMaxMs, 1_000));
      f.retryTimer.unref();
    }
  }

  /** Runs every handler of the type; ok only when all succeed. The reply value is the first defined return value. */
  #run(f: InFlight, event: AgentEvent, bindings: readonly Binding[]): Result | Promise<Result> {
    if (bindings.length === 1) {
      // One handler: its result is the combined one (no array, no second object).
      const only = this.#call(f, event, bindings[0]!);
      if (!isThenable(only)) return only;
      return only.then((r) => {
        f.contexts = undefined;
        return r;
      });
    }
    return Promise.all(bindings.map((b) => this.#call(f, event, b))).then((results) => this.#combine(f, results));
  }

  #combine(f: InFlight, results: readonly Result[]): Result {
    f.contexts = undefined;
    let value: unknown;
    for (const r of results) {
      if (!r.ok) return r;
      if (value === undefined) value = r.value;
    }
    return { ok: true, value };
  }

  /**
   * One handler call. A synchronous handler settles without a promise; an
   * asynchronous one is watched by one shared timer for its time limit, not
   * a timer per call.
   */
  #call(f: InFlight, event: AgentEvent, b: Binding): Result | Promise<Result> {
    const ctx = b.context();
    const t0 = performance.now();
    let value: unknown;
    try {
      value = b.handler(event, ctx as never);
    } catch (err) {
      return this.#finish(b, event, t0, 'error', { ok: false, error: `${b.plugin}: ${describeError(err)}` });
    }
    if (!isThenable(value)) return this.#finish(b, event, t0, 'ok', value === undefined ? OK_UNDEFINED : { ok: true, value });
    // Only a call still running can be aborted at shutdown: a synchronous one is over already.
    (f.contexts ??= []).push(ctx);
    return new Promise<Result>((resolve) => {
      const call: Watched = {
        startedAt: t0,
        ctx,
        settle: (outcome, result) => {
          if (!this.#watched.delete(call)) return;
          resolve(this.#finish(b, event, t0, outcome, result));
        },
      };
      this.#watched.add(call);
      this.#watchTimeouts();
      value.then(
        (v) => call.settle('ok', { ok: true, value: v }),
        (err: unknown) => call.settle(this.#stopped ? 'aborted' : 'error', { ok: false, error: `${b.plugin}: ${describeError(err)}` }),
      );
    });
  }

  #finish(b: Binding, event: AgentEvent, t0: number, outcome: HandlerOutcome, result: Result): Result {
    this.#o.hooks?.handlerDone?.(b.plugin, event.event, (performance.now() - t0) / 1000, outcome);
    return result;
  }

  #watchTimeouts(): void {
    if (this.#watchTimer) return;
    const limit = this.#o.handlerTimeoutMs;
    this.#watchTimer = setInterval(() => {
      const now = performance.now();
      for (const call of this.#watched) {
        if (now - call.startedAt < limit) continue;
        const err = new HandlerTimeout(`handler exceeded ${limit} ms`);
        call.ctx.abort(err);
        call.settle('timeout', { ok: false, error: describeError(err) });
      }
      if (this.#watched.size === 0) {
        clearInterval(this.#watchTimer);
        this.#watchTimer = undefined;
      }
    }, Math.min(1_000, Math.max(5, Math.floor(limit / 10))));
    this.#watchTimer.unref();
  }

  /**
   * The reply's JSON. A return value that JSON cannot encode (a BigInt, a
   * cycle) or whose reply would be over events.maxBytes (the requester would
   * drop it unread) becomes a `handler_failed` reply that says so, rather than
   * leaving the requester to time out.
   */
  #replyText(inReplyTo: string, outcome: { ok: true; data: unknown } | { ok: false; error: ReplyError }, stream: string): string {
    let problem: string;
    try {
      const text = this.#o.makeReply(inReplyTo, outcome, stream);
      const bytes = Buffer.byteLength(text);
      if (bytes <= this.#o.maxBytes) return text;
      problem = `the reply is ${bytes} bytes, over events.maxBytes (${this.#o.maxBytes}): the requester would drop it`;
    } catch (err) {
      problem = `the handler's return value cannot be encoded as JSON: ${describeError(err)}`;
    }
    const message = outcome.ok ? problem : `${outcome.error.message.slice(0, 2_000)} (${problem})`;
    this.#o.log.warn({ inReplyTo: inReplyTo.slice(0, 100), err: problem }, 'reply replaced by a handler_failed reply');
    return this.#o.makeReply(inReplyTo, { ok: false, error: { code: outcome.ok ? 'handler_failed' : outcome.error.code, message } }, stream);
  }

  async #reply(to: { to: string; id: string }, outcome: { ok: true; data: unknown } | { ok: false; error: ReplyError }): Promise<void> {
    try {
      await appendEntry(this.#o.redis, inboxKey(to.to), this.#replyText(to.id, outcome, inboxKey(to.to)), this.#o.maxLen);
    } catch (err) {
      // The request entry is still acknowledged: its requester times out rather than getting the work done twice.
      this.#o.log.warn({ replyTo: to.to, inReplyTo: to.id, err: describeError(err) }, 'could not send a reply');
    }
  }

  async #deadLetter(f: InFlight, e: StreamEntry, error: string, reason: DeadLetterReason, attempts: number, replyTo?: { to: string; id: string }): Promise<void> {
    const s = f.stream;
    const dead = deadLetterKey(s.key);
    try {
      await this.#o.redis
        .multi()
        .xadd(dead, 'MAXLEN', '~', this.#o.maxLen, '*', 'envelope', e.envelope ?? '', 'error', error, 'attempts', String(attempts), 'source_id', e.id)
        .xack(s.key, DURABLE_GROUP, e.id)
        .exec();
    } catch (err) {
      // Still pending: read again at the next poll, and dead-lettered then.
      s.inflight.delete(f.id);
      this.#o.log.warn({ stream: s.key, id: e.id, err: describeError(err) }, 'could not dead-letter a durable entry yet');
      return;
    }
    s.inflight.delete(f.id);
    this.counts.deadLettered++;
    this.#o.hooks?.deadLettered?.(s.kind, reason);
    this.#o.log.error({ code: Code.AGENTD_ERR_DEAD_LETTERED, stream: s.key, dead, id: e.id, attempts, reason, err: error }, 'durable entry moved to its dead-letter stream');
    if (replyTo) await this.#reply(replyTo, { ok: false, error: { code: reason === 'failed' ? 'handler_failed' : 'dead_lettered', message: error } });
  }

  /**
   * XCLAIM returns nothing for an id that is no longer pending: trimmed away,
   * or acknowledged meanwhile (an XPENDING listed it just before our own XACK
   * landed). Only an entry that no longer exists counts as trimmed.
   */
  async #trimmedIfMissing(s: Stream, ids: readonly string[], via: string): Promise<void> {
    const missing: string[] = [];
    for (const id of ids) if (parseEntries(await this.#o.redis.xrange(s.key, id, id)).length === 0) missing.push(id);
    if (missing.length > 0) await this.#trimmed(s, missing, via);
  }

  async #trimmed(s: Stream, ids: readonly string[], via: string): Promise<void> {
    // A stream under its cap was not trimmed by it: another writer's smaller MAXLEN, a deletion, or a
    // Redis restart without persistence. Say which, so nobody raises durable.maxLen for nothing.
    const length = await this.#o.redis.xlen(s.key).catch(() => -1);
    const capped = length < 0 || length >= this.#o.maxLen;
    this.#o.log.error(
      { code: Code.AGENTD_ERR_TRIMMED, stream: s.key, count: ids.length, ids: ids.slice(0, 10), via, maxLen: this.#o.maxLen, length },
      capped
        ? 'durable entries were trimmed from their stream before they were acknowledged (stream over durable.maxLen)'
        : 'durable entries vanished from their stream before they were acknowledged (the stream is under durable.maxLen: cut by a smaller MAXLEN of another writer, deleted, or lost with a Redis restart without persistence)',
    );
    this.counts.trimmed += ids.length;
    this.#o.hooks?.trimmed?.(s.kind, ids.length);
    // Deleted entries stay in the group's pending list until acknowledged.
    void this.#o.redis.xack(s.key, DURABLE_GROUP, ...ids).catch(() => undefined);
  }

  /** Acknowledges in batches: all the acks of one turn of the event loop go out as one XACK per stream. */
  #ack(f: InFlight): void {
    this.counts.acked++;
    this.#o.hooks?.acked?.(f.stream.kind, Math.max(0, Date.now() - entryTime(f.id)) / 1000);
    let list = this.#acks.get(f.stream);
    if (!list) this.#acks.set(f.stream, (list = []));
    list.push(f.id);
    if (!this.#inBatch) this.#scheduleAcks();
  }

  #scheduleAcks(): void {
    if (this.#ackScheduled) return;
    this.#ackScheduled = true;
    setImmediate(() => void this.#flushAcks());
  }

  async #flushAcks(): Promise<void> {
    this.#ackScheduled = false;
    const batches = [...this.#acks];
    this.#acks.clear();
    await Promise.all(
      batches.map(async ([s, ids]) => {
        try {
          await this.#o.redis.xack(s.key, DURABLE_GROUP, ...ids);
          for (const id of ids) s.inflight.delete(id);
        } catch (err) {
          // Kept in flight (so not handled again) and retried at the next poll.
          const list = this.#acks.get(s) ?? [];
          this.#acks.set(s, [...list, ...ids]);
          this.#o.log.debug({ stream: s.key, count: ids.length, err: describeError(err) }, 'XACK failed; retrying at the next poll');
        }
      }),
    );
  }

  /**
   * Stops reading. Waiting entries are left pending (handed over or read
   * again later); running ones get up to `drainMs`, then their signal aborts.
   */
  async stop(drainMs: number): Promise<{ drained: boolean }> {
    this.#stopped = true;
    this.#queue.clear();
    for (const s of this.#streams) for (const f of s.inflight.values()) clearTimeout(f.retryTimer);
    // ref: stopping waits out the drain as it always did, whatever else is still open.
    const drained = await orAfter(this.#queue.onIdle().then(() => true), drainMs, false, { ref: true });
    if (!drained) {
      for (const s of this.#streams) for (const f of s.inflight.values()) for (const c of f.contexts ?? []) c.abort(SHUTDOWN);
      for (const call of this.#watched) call.settle('aborted', { ok: false, error: describeError(SHUTDOWN) });
    }
    clearInterval(this.#watchTimer);
    this.#watchTimer = undefined;
    await this.#flushAcks();
    return { drained };
  }

  /** Our pending den tasks, for a graceful hand-over at stop. */
  async ownPendingTasks(): Promise<{ key: string; rows: PendingInfo[] }> {
    const s = this.#streams[1]!;
    return { key: s.key, rows: await pendingEntries(this.#o.redis, s.key, '-', 10_000, this.#o.agent.id) };
  }
}
