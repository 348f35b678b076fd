import { EventEmitter } from 'eventemitter3';
import PQueue from 'p-queue';
import type { OverflowPolicy } from '../config/schema.ts';
import { describeError } from '../errors.ts';
import type { Logger } from '../log.ts';
import type { AgentEvent } from './envelope.ts';
import { Fifo } from './fifo.ts';

/** What a handler call can be aborted through: the call's own context (its `signal` is created on first use). */
export interface Abortable {
  abort(reason: unknown): void;
}

/** One plugin's handler for one event type (or '*'), ready to call. */
export interface Binding {
  readonly plugin: string;
  /** The key it was registered under: an event type or '*'. */
  readonly on: string;
  /** A fresh context for one call. */
  readonly context: () => Abortable;
  readonly handler: (event: AgentEvent, context: never) => unknown;
}

export type DropReason = 'queue_full' | 'evicted' | 'shutdown';
export type HandlerOutcome = 'ok' | 'error' | 'timeout' | 'aborted';

export interface DroppedInfo {
  readonly reason: DropReason;
  readonly event: string;
  readonly channel: string;
  /** Handler calls dropped with it. */
  readonly calls: number;
}

export interface HandlerFailedInfo {
  readonly plugin: string;
  readonly event: string;
  readonly reason: 'error' | 'timeout';
  readonly error: string;
}

export interface DispatcherEvents {
  dropped: (info: DroppedInfo) => void;
  handlerFailed: (info: HandlerFailedInfo) => void;
}

export interface DispatcherOptions {
  readonly concurrency: number;
  readonly maxWaiting: number;
  readonly overflow: OverflowPolicy;
  readonly handlerTimeoutMs: number;
  readonly log: Logger;
  /** Called once per finished call; on the hot path, so no event object is made for it. */
  readonly onHandlerDone?: (plugin: string, event: string, seconds: number, outcome: HandlerOutcome) => void;
}

export interface DispatcherCounts {
  /** Events that had at least one handler and were queued. */
  dispatched: number;
  /** Events no handler was registered for. */
  unhandled: number;
  /** Handler calls that returned or resolved. */
  completed: number;
  /** Handler calls that threw or rejected. */
  failed: number;
  /** Handler calls stopped at their time limit. */
  timedOut: number;
  /** Handler calls dropped, by reason. */
  dropped: Record<DropReason, number>;
}

export interface DrainResult {
  readonly drained: boolean;
  readonly waiting: number;
  readonly running: ReadonlyArray<{ readonly plugin: string; readonly event: string; readonly runningMs: number }>;
}

interface Call {
  readonly binding: Binding;
  readonly event: AgentEvent;
}

/** A slot: runs waiting calls one after another until none is left. */
interface Worker {
  call: Call | undefined;
  context: Abortable | undefined;
  startedAt: number;
  /** Set while an async call runs: settles the wait for it early (time limit, shutdown). */
  release: ((outcome: Settled) => void) | undefined;
}

type Settled = { readonly outcome: 'ok' } | { readonly outcome: 'error' | 'timeout' | 'aborted'; readonly error: unknown };

const OK: Settled = { outcome: 'ok' };
const SHUTDOWN = new Error('daemon shutting down');
const DROP_LOG_EVERY_MS = 5_000;
/** Synchronous handler calls a worker runs before it lets the event loop read sockets again. */
const SYNC_BURST = 64;
/**
 * After this much synchronous handler time, workers step aside for a timer
 * turn, so a heartbeat that fell due meanwhile is sent before the next call:
 * three handlers that each block for a second must not add up to a
 * three-second gap in the heartbeat.
 */
const SLICE_MS = 20;

class HandlerTimeoutError extends Error {
  override readonly name = 'TimeoutError';
}

function isThenable(value: unknown): value is PromiseLike<unknown> {
  return value !== null && (typeof value === 'object' || typeof value === 'function') && typeof (value as { then?: unknown }).then === 'function';
}

const nextTurn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));
/** A timer created after a block runs after every timer that fell due during it. */
const afterDueTimers = (): Promise<void> => new Promise((resolve) => setTimeout(resolve, 0));

/**
 * Runs handler calls with at most `concurrency` at once and at most
 * `maxWaiting` waiting. `dispatch` never waits: when the waiting list is full
 * the overflow policy drops work right there, so the socket is always read at
 * full speed and Redis never has to cut the daemon off as a slow subscriber.
 *
 * The waiting calls sit in a FIFO in front of p-queue, and p-queue runs up to
 * `concurrency` workers that drain it. That keeps the per-event cost to a few
 * hundred nanoseconds (a p-queue task per call costs several microseconds),
 * and makes drop-oldest an O(1) shift.
 */
export class Dispatcher extends EventEmitter<DispatcherEvents> {
  readonly counts: DispatcherCounts = {
    dispatched: 0,
    unhandled: 0,
    completed: 0,
    failed: 0,
    timedOut: 0,
    dropped: { queue_full: 0, evicted: 0, shutdown: 0 },
  };
  readonly #queue: PQueue;
  readonly #options: DispatcherOptions;
  readonly #log: Logger;
  readonly #byType = new Map<string, readonly Binding[]>();
  #wildcard: readonly Binding[] = [];
  readonly #waiting = new Fifo<Call>();
  readonly #workers = new Set<Worker>();
  #flushScheduled = false;
  /** When the current stretch of synchronous work began (see SLICE_MS). */
  #sliceStart = 0;
  #accepting = true;
  #timeoutTimer: NodeJS.Timeout | undefined;
  /** Drops since the last log line, per reason (see #drop). */
  readonly #pendingDrops = new Map<DropReason, { dropped: number; event: string }>();
  #dropTimer: NodeJS.Timeout | undefined;

  constructor(options: DispatcherOptions) {
    super();
    this.#options = options;
    this.#log = options.log;
    this.#queue = new PQueue({ concurrency: options.concurrency });
  }

  /** Replaces the handler table. Each event type gets its own handlers followed by the '*' handlers. */
  setBindings(bindings: readonly Binding[]): void {
    this.#wildcard = bindings.filter((b) => b.on === '*');
    this.#byType.clear();
    for (const b of bindings) {
      if (b.on === '*') continue;
      this.#byType.set(b.on, [...(this.#byType.get(b.on) ?? []), b]);
    }
    for (const [type, list] of this.#byType) this.#byType.set(type, [...list, ...this.#wildcard]);
  }

  /** The event types some handler is registered for ('*' excluded). */
  get types(): IterableIterator<string> {
    return this.#byType.keys();
  }

  get waiting(): number {
    return this.#waiting.length;
  }

  get running(): number {
    let n = 0;
    for (const w of this.#workers) if (w.call !== undefined) n++;
    return n;
  }

  /** Queues the event's handler calls; says whether it was queued, dropped or had no handler. */
  dispatch(event: AgentEvent): 'queued' | 'dropped' | 'unhandled' {
    const bindings = this.#byType.get(event.event) ?? this.#wildcard;
    if (bindings.length === 0) {
      this.counts.unhandled++;
      return 'unhandled';
    }
    const need = bindings.length;
    if (!this.#accepting) {
      this.#drop('shutdown', event, need);
      return 'dropped';
    }
    const room = this.#options.maxWaiting - this.#waiting.length;
    if (need > room) {
      if (this.#options.overflow === 'drop-newest' || need > this.#options.maxWaiting) {
        this.#drop('queue_full', event, need);
        return 'dropped';
      }
      for (let i = room; i < need; i++) {
        const victim = this.#waiting.shift();
        if (victim) this.#drop('evicted', victim.event, 1);
      }
    }
    this.counts.dispatched++;
    for (const binding of bindings) this.#waiting.push({ binding, event });
    // Start workers after the current burst: ioredis hands over a whole socket read synchronously.
    if (!this.#flushScheduled) {
      this.#flushScheduled = true;
      queueMicrotask(this.#flush);
    }
    return 'queued';
  }

  readonly #flush = (): void => {
    this.#flushScheduled = false;
    this.#sliceStart = performance.now();
    while (this.#workers.size < this.#options.concurrency && this.#workers.size < this.#waiting.length) {
      const worker: Worker = { call: undefined, context: undefined, startedAt: 0, release: undefined };
      this.#workers.add(worker);
      void this.#queue.add(() => this.#work(worker)).finally(() => {
        this.#workers.delete(worker);
        if (this.#waiting.length > 0 && !this.#flushScheduled) this.#flush();
      });
    }
  };

  async #work(w: Worker): Promise<void> {
    let burst = 0;
    for (;;) {
      if (performance.now() - this.#sliceStart > SLICE_MS) {
        await afterDueTimers();
        this.#sliceStart = performance.now();
        burst = 0;
      }
      const call = this.#waiting.shift();
      if (call === undefined) return;
      const context = call.binding.context();
      w.call = call;
      w.context = context;
      w.startedAt = performance.now();
      let settled: Settled;
      try {
        const result = call.binding.handler(call.event, context as never);
        if (isThenable(result)) {
          this.#watchTimeouts();
          settled = await new Promise<Settled>((resolve) => {
            w.release = resolve;
            result.then(
              () => resolve(OK),
              (error: unknown) => resolve({ outcome: 'error', error }),
            );
          });
          this.#sliceStart = performance.now();
          burst = 0;
        } else {
          settled = OK;
        }
      } catch (error) {
        settled = { outcome: 'error', error };
      }
      this.#settled(call, w.startedAt, settled);
      w.call = undefined;
      w.context = undefined;
      w.release = undefined;
      if (++burst >= SYNC_BURST) {
        burst = 0;
        await nextTurn();
        this.#sliceStart = performance.now();
      }
    }
  }

  /** One timer for every running call's time limit, running only while async calls are in flight. */
  #watchTimeouts(): void {
    if (this.#timeoutTimer) return;
    const limit = this.#options.handlerTimeoutMs;
    const every = Math.min(1_000, Math.max(5, Math.floor(limit / 10)));
    this.#timeoutTimer = setInterval(() => {
      const now = performance.now();
      let async = 0;
      for (const w of this.#workers) {
        if (!w.release) continue;
        async++;
        if (now - w.startedAt >= limit) {
          const error = new HandlerTimeoutError(`handler exceeded ${limit} ms`);
          w.context?.abort(error);
          w.release({ outcome: 'timeout', error });
        }
      }
      if (async === 0) {
        clearInterval(this.#timeoutTimer);
        this.#timeoutTimer = undefined;
      }
    }, every);
    this.#timeoutTimer.unref();
  }

  #settled(call: Call, startedAt: number, settled: Settled): void {
    const plugin = call.binding.plugin;
    const type = call.event.event;
    const seconds = (performance.now() - startedAt) / 1000;
    this.#options.onHandlerDone?.(plugin, type, seconds, settled.outcome);
    if (settled.outcome === 'ok') {
      this.counts.completed++;
      return;
    }
    if (settled.outcome === 'aborted') {
      this.#log.warn({ plugin, event: type, runningMs: Math.round(seconds * 1000) }, 'handler aborted at shutdown');
      return;
    }
    const message = describeError(settled.error);
    if (settled.outcome === 'timeout') {
      this.counts.timedOut++;
      this.#log.warn(
        { code: 'AGENTD_ERR_HANDLER_TIMEOUT', plugin, event: type, timeoutMs: this.#options.handlerTimeoutMs },
        'handler timed out; its signal was aborted and its slot freed',
      );
    } else {
      this.counts.failed++;
      this.#log.error({ code: 'AGENTD_ERR_HANDLER_FAILED', plugin, event: type, err: message }, 'handler failed');
    }
    this.emit('handlerFailed', { plugin, event: type, reason: settled.outcome, error: message });
  }

  #drop(reason: DropReason, event: AgentEvent, calls: number): void {
    this.counts.dropped[reason] += calls;
    this.emit('dropped', { reason, event: event.event, channel: event.channel, calls });
    // Under overload this fires thousands of times a second: the first drop is
    // logged at once, the rest as one summary per reason a few seconds later.
    const pending = this.#pendingDrops.get(reason);
    if (pending) {
      pending.dropped += calls;
      return;
    }
    this.#pendingDrops.set(reason, { dropped: 0, event: event.event });
    this.#logDrops(reason, calls, event.event);
    this.#dropTimer ??= setTimeout(() => this.#flushDropLog(), DROP_LOG_EVERY_MS).unref();
  }

  #logDrops(reason: DropReason, dropped: number, event: string): void {
    const msg = reason === 'shutdown' ? 'dropping events: shutting down' : reason === 'evicted' ? 'handler queue full: evicting the oldest waiting calls' : 'handler queue full: dropping events';
    this.#log.warn({ reason, event, dropped, waiting: this.waiting, running: this.running, totalDropped: this.counts.dropped }, msg);
  }

  /** Writes the drops counted since the last line, per reason. */
  #flushDropLog(): void {
    clearTimeout(this.#dropTimer);
    this.#dropTimer = undefined;
    const pending = [...this.#pendingDrops];
    this.#pendingDrops.clear();
    for (const [reason, p] of pending) if (p.dropped > 0) this.#logDrops(reason, p.dropped, p.event);
  }

  /** Stop taking events; what arrives from now on is dropped as 'shutdown'. */
  stopAccepting(): void {
    this.#accepting = false;
  }

  /**
   * Waits for waiting and running calls to finish, up to `timeoutMs`. On time
   * out, waiting calls are discarded and running ones have their signal aborted.
   */
  async drain(timeoutMs: number): Promise<DrainResult> {
    this.stopAccepting();
    const deadline = performance.now() + timeoutMs;
    this.#flush();
    while (this.#waiting.length > 0 || this.#workers.size > 0) {
      const left = deadline - performance.now();
      if (left <= 0) break;
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([this.#queue.onIdle(), new Promise((resolve) => (timer = setTimeout(resolve, left)))]);
      clearTimeout(timer);
      if (this.#waiting.length > 0) this.#flush();
    }
    if (this.#waiting.length === 0 && this.#workers.size === 0) {
      this.#flushDropLog();
      return { drained: true, waiting: 0, running: [] };
    }
    const now = performance.now();
    const result: DrainResult = {
      drained: false,
      waiting: this.#waiting.length,
      running: [...this.#workers]
        .filter((w) => w.call !== undefined)
        .map((w) => ({ plugin: w.call!.binding.plugin, event: w.call!.event.event, runningMs: Math.round(now - w.startedAt) })),
    };
    this.abort();
    return result;
  }

  /** Discards waiting calls and aborts the signals of running ones. */
  abort(): void {
    this.stopAccepting();
    this.counts.dropped.shutdown += this.#waiting.length;
    this.#waiting.clear();
    for (const w of this.#workers) {
      w.context?.abort(SHUTDOWN);
      w.release?.({ outcome: 'aborted', error: SHUTDOWN });
    }
    clearInterval(this.#timeoutTimer);
    this.#timeoutTimer = undefined;
    this.#flushDropLog();
  }
}
