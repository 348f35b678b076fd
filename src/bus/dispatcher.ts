import { EventEmitter } from 'eventemitter3';
import type { OverflowPolicy } from '../config/schema.ts';
import { Code, describeError } from '../errors.ts';
import type { Logger } from '../log.ts';
import { freezeData, type AgentEvent } from './envelope.ts';
import { Fifo } from './fifo.ts';
import { orAfter } from '../deadline.ts';
import { EventCounters, type TypeCounts } from './counters.ts';

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
  /** Message bytes of the waiting events (queue.maxBytes), counted once per event; unbounded when absent. */
  readonly maxWaitingBytes?: number;
  readonly overflow: OverflowPolicy;
  readonly handlerTimeoutMs: number;
  readonly log: Logger;
  /** The daemon's counters (intake moves the same object); a fresh set when absent. */
  readonly counters?: EventCounters;
  /** Called once per finished call; on the hot path, so no event object is made for it. */
  readonly onHandlerDone?: (plugin: string, event: string, seconds: number, outcome: HandlerOutcome) => void;
}

export interface DrainResult {
  readonly drained: boolean;
  readonly waiting: number;
  readonly running: ReadonlyArray<{ readonly plugin: string; readonly event: string; readonly runningMs: number }>;
}

interface Call {
  readonly binding: Binding;
  readonly event: AgentEvent;
  /** The event's message size, on its first call only (the calls of one event share it). */
  readonly bytes: number;
}

/** The handlers of one event type, and whether they have only ever returned synchronously. */
interface Route {
  readonly bindings: readonly Binding[];
  sync: boolean;
}

/** A worker: runs waiting calls one after another until none is left. */
interface Worker {
  call: Call | undefined;
  /** The event type of `call`, read before the handler got the event (one handler may change its own event). */
  type: string;
  context: Abortable | undefined;
  startedAt: number;
  /** Set while an async call runs: settles the wait for it early (time limit, shutdown). */
  release: ((outcome: Settled) => void) | undefined;
}

type Settled = { readonly outcome: 'ok' } | { readonly outcome: 'error' | 'timeout' | 'aborted'; readonly error: unknown };

const OK: Settled = { outcome: 'ok' };
const SHUTDOWN = new Error('daemon shutting down');
const DROP_LOG_EVERY_MS = 5_000;
/**
 * Failed and timed-out calls logged one by one per DROP_LOG_EVERY_MS; past
 * that, one summary line at the end of the window. A plugin that fails on
 * every event must not turn a flood of events into a flood of log lines.
 */
const FAIL_LOG_BURST = 20;
/** Distinct (plugin, event, outcome) rows a summary line keeps; the rest are summed as one. */
const FAIL_SUMMARY_ROWS = 50;
/**
 * Time, in ms, a worker runs synchronous calls back to back before it lets
 * the event loop read sockets again. By time, not by count: a yield every 64
 * no-op calls (~20 µs of work) let a flood's reads outrun the workers, so
 * the queue filled and dropped three quarters of a 1M-event flood that the
 * daemon could have handled.
 */
const BURST_MS = 5;
/**
 * After this much synchronous handler time (summed over all workers) without
 * a timer turn, workers step aside for one, so a heartbeat that fell due
 * meanwhile is sent before the next call: three handlers that each block for
 * a second must not add up to a three-second gap in the heartbeat.
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
 * What bounds what: the waiting calls sit in a FIFO of at most `maxWaiting`
 * (queue.max); up to `concurrency` (queue.concurrency) workers drain it, and
 * there are always as many workers as there are calls to run, up to that cap;
 * each async call has `handlerTimeoutMs` (queue.handlerTimeoutMs). No p-queue
 * here: a task per call costs several microseconds, about what reading a whole
 * message costs, while the FIFO costs a few hundred nanoseconds per event and
 * makes drop-oldest an O(1) shift.
 */
export class Dispatcher extends EventEmitter<DispatcherEvents> {
  /** dispatched, unhandled, completed, failed, timedOut and dropped are moved here. */
  readonly counts: EventCounters;
  readonly #options: DispatcherOptions;
  readonly #log: Logger;
  readonly #byType = new Map<string, Route>();
  #wildcard: Route = { bindings: [], sync: true };
  /** Bindings whose handler returned a promise once: their calls always go through a worker. */
  readonly #asyncBindings = new Set<Binding>();
  readonly #waiting = new Fifo<Call>();
  /** Sum of `bytes` over the waiting calls. */
  #waitingBytes = 0;
  readonly #workers = new Set<Worker>();
  /** Workers running a call (the others are about to take one, or about to end). */
  #busy = 0;
  #flushScheduled = false;
  /** Synchronous handler time, in ms, summed over all calls ever; and its value at the last timer turn seen (see SLICE_MS). */
  #syncMs = 0;
  #syncMsAtTurn = 0;
  /** A timer is set to note the next timer turn (see #markTurn). */
  #turnMarked = false;
  /**
   * Runs in the timer phase after the inline calls that set it, so after every timer that fell due
   * during them (a heartbeat included): the handler time so far is followed by a timer turn.
   */
  readonly #markTurn = (): void => {
    this.#turnMarked = false;
    this.#syncMsAtTurn = this.#syncMs;
  };
  /** Settles drain's wait when the last worker ends. */
  #idle: { promise: Promise<void>; resolve: () => void } | undefined;
  #accepting = true;
  #timeoutTimer: NodeJS.Timeout | undefined;
  /** Drops since the last log line, per reason (see #drop). */
  readonly #pendingDrops = new Map<DropReason, { dropped: number; event: string }>();
  #dropTimer: NodeJS.Timeout | undefined;
  /** Failure lines written in the current window, and failures counted but not logged (see #logFailure). */
  #failLogged = 0;
  readonly #failSuppressed = new Map<string, { plugin: string; event: string; outcome: string; calls: number; lastErr: string }>();
  #failOther = 0;
  #failTimer: NodeJS.Timeout | undefined;

  constructor(options: DispatcherOptions) {
    super();
    this.#options = options;
    this.#log = options.log;
    this.counts = options.counters ?? new EventCounters();
  }

  /** Replaces the handler table. Each event type gets its own handlers followed by the '*' handlers. */
  setBindings(bindings: readonly Binding[]): void {
    const wildcard = bindings.filter((b) => b.on === '*');
    const byType = new Map<string, Binding[]>();
    for (const b of bindings) if (b.on !== '*') byType.set(b.on, [...(byType.get(b.on) ?? []), b]);
    this.#asyncBindings.clear();
    this.#wildcard = { bindings: wildcard, sync: true };
    this.#byType.clear();
    for (const [type, list] of byType) this.#byType.set(type, { bindings: [...list, ...wildcard], sync: true });
  }

  /** The event types some handler is registered for ('*' excluded). */
  get types(): IterableIterator<string> {
    return this.#byType.keys();
  }

  get waiting(): number {
    return this.#waiting.length;
  }

  get running(): number {
    return this.#busy;
  }

  /** The next waiting call, its bytes released. */
  #take(): Call | undefined {
    const call = this.#waiting.shift();
    if (call !== undefined) this.#waitingBytes -= call.bytes;
    return call;
  }

  /**
   * Queues the event's handler calls; says whether it was queued, dropped or
   * had no handler. `bytes`: the message's size, for queue.maxBytes; `type`:
   * the event type's counts, when the caller has looked them up already.
   */
  dispatch(event: AgentEvent, bytes = 0, type: TypeCounts = this.counts.of(event.event)): 'queued' | 'dropped' | 'unhandled' {
    const route = this.#byType.get(event.event) ?? this.#wildcard;
    const bindings = route.bindings;
    if (bindings.length === 0) {
      this.counts.unhandled++;
      return 'unhandled';
    }
    const need = bindings.length;
    if (!this.#accepting) {
      this.#drop('shutdown', event, need, type);
      return 'dropped';
    }
    const maxBytes = this.#options.maxWaitingBytes ?? Infinity;
    const room = this.#options.maxWaiting - this.#waiting.length;
    if (need > room || this.#waitingBytes + bytes > maxBytes) {
      if (this.#options.overflow === 'drop-newest' || need > this.#options.maxWaiting || bytes > maxBytes) {
        this.#drop('queue_full', event, need, type);
        return 'dropped';
      }
      while (this.#waiting.length > 0 && (this.#options.maxWaiting - this.#waiting.length < need || this.#waitingBytes + bytes > maxBytes)) {
        const victim = this.#take();
        if (victim) this.#drop('evicted', victim.event, 1);
      }
    }
    // Handlers of other plugins get the same object: none may change what another sees.
    if (need > 1) {
      Object.freeze(event);
      freezeData(event.data);
    }
    this.counts.dispatched++;
    type.dispatched++;
    // Nothing waiting, a free slot, handlers that have only ever returned synchronously, and the slice
    // not used up (see SLICE_MS): call them right here, without a queue entry, a worker or a microtask.
    if (route.sync && this.#waiting.length === 0 && this.#busy < this.#options.concurrency && this.#syncMs - this.#syncMsAtTurn <= SLICE_MS) {
      this.#runInline(bindings, event, bytes);
      return 'queued';
    }
    this.#enqueue(bindings, 0, event, bytes);
    return 'queued';
  }

  /** Queues the calls of `bindings` from `from` on; the first of them carries the event's bytes. */
  #enqueue(bindings: readonly Binding[], from: number, event: AgentEvent, bytes: number): void {
    this.#waitingBytes += bytes;
    for (let i = from; i < bindings.length; i++) this.#waiting.push({ binding: bindings[i]!, event, bytes: i === from ? bytes : 0 });
    // Start workers after the current burst: ioredis hands over a whole socket read synchronously.
    if (!this.#flushScheduled) {
      this.#flushScheduled = true;
      queueMicrotask(this.#flush);
    }
  }

  /**
   * Calls the event's handlers one after another, now; once the slice is
   * used up, the rest are queued for the workers. A handler that returns
   * a promise after all is marked async (its calls go through workers from
   * now on) and its promise is handed to a worker of its own, with the time
   * limit as for any call.
   */
  #runInline(bindings: readonly Binding[], event: AgentEvent, bytes: number): void {
    const type = event.event;
    let startedAt = performance.now();
    for (let i = 0; i < bindings.length; i++) {
      const binding = bindings[i]!;
      // The handlers of one event must not add up past the slice either, nor past queue.concurrency (an
      // earlier one's promise, adopted by a worker, holds a slot): the rest wait in the queue.
      if (i > 0 && (this.#syncMs - this.#syncMsAtTurn > SLICE_MS || this.#busy >= this.#options.concurrency)) {
        this.#enqueue(bindings, i, event, bytes);
        return;
      }
      this.#busy++;
      let settled: Settled = OK;
      let result: unknown;
      let context: Abortable | undefined;
      let thenable = false;
      try {
        context = binding.context();
        result = binding.handler(event, context as never);
        // Part of the call: a `then` getter (or a Proxy) may throw.
        thenable = isThenable(result);
      } catch (error) {
        settled = { outcome: 'error', error };
      }
      const endedAt = performance.now();
      this.#syncMs += endedAt - startedAt;
      // Inline calls see the timer turns too: without this the slice would only ever end in a worker's
      // stepAside, and a flood of cheap calls would use it up and go through the queue for good.
      if (!this.#turnMarked) {
        this.#turnMarked = true;
        setTimeout(this.#markTurn, 0).unref();
      }
      this.#busy--;
      if (thenable) {
        this.#markAsync(binding);
        const worker: Worker = { call: undefined, type, context: undefined, startedAt, release: undefined };
        this.#workers.add(worker);
        void this.#work(worker, { call: { binding, event, bytes: 0 }, context: context!, result: result as PromiseLike<unknown>, type });
      } else {
        try {
          this.#settled(binding.plugin, type, endedAt - startedAt, settled);
        } catch (err) {
          // A broken listener of 'handlerFailed' or of a counter: the other handlers of the event still run.
          this.#log.error({ err: describeError(err) }, 'a handler-call listener failed');
        }
      }
      startedAt = endedAt;
    }
  }

  /** From now on, calls of this binding (and of every event type it handles) go through workers. */
  #markAsync(binding: Binding): void {
    if (this.#asyncBindings.has(binding)) return;
    this.#asyncBindings.add(binding);
    for (const route of [...this.#byType.values(), this.#wildcard]) if (route.bindings.includes(binding)) route.sync = false;
  }

  /** Waits for an async call to settle, or for its release (time limit, shutdown). */
  #settle(w: Worker, result: PromiseLike<unknown>): Promise<Settled> {
    this.#watchTimeouts();
    return new Promise<Settled>((resolve) => {
      w.release = resolve;
      try {
        result.then(
          () => resolve(OK),
          (error: unknown) => resolve({ outcome: 'error', error }),
        );
      } catch (error) {
        // A thenable whose then() throws: the call failed (not the worker).
        resolve({ outcome: 'error', error });
      }
    });
  }

  /** Starts a worker for every waiting call no idle worker will take, up to `concurrency` workers. */
  readonly #flush = (): void => {
    this.#flushScheduled = false;
    while (this.#workers.size < this.#options.concurrency && this.#workers.size - this.#busy < this.#waiting.length) {
      const worker: Worker = { call: undefined, type: '', context: undefined, startedAt: 0, release: undefined };
      this.#workers.add(worker);
      void this.#work(worker);
    }
  };

  /**
   * Runs waiting calls until none is left, after the call it was started for
   * when it adopts one (an inline call that returned a promise). Never rejects.
   */
  async #work(w: Worker, adopted?: { readonly call: Call; readonly context: Abortable; readonly result: PromiseLike<unknown>; readonly type: string }): Promise<void> {
    try {
      let burstFrom = performance.now();
      // One clock reading per call: a synchronous call ends when the next one starts.
      let clock = performance.now();
      if (adopted !== undefined) {
        w.call = adopted.call;
        w.context = adopted.context;
        this.#busy++;
        const settled = await this.#settle(w, adopted.result);
        clock = performance.now();
        w.call = undefined;
        w.context = undefined;
        w.release = undefined;
        this.#busy--;
        this.#settled(adopted.call.binding.plugin, adopted.type, clock - w.startedAt, settled);
      }
      for (;;) {
        if (this.#syncMs - this.#syncMsAtTurn > SLICE_MS) {
          await this.#stepAside();
          clock = performance.now();
          burstFrom = clock;
        }
        // Every slot taken while this worker paused (an inline call's first promise, adopted by a worker of
        // its own): that worker takes the next call when its call settles; this one ends.
        if (this.#busy >= this.#options.concurrency) return;
        const call = this.#take();
        if (call === undefined) return;
        w.call = call;
        this.#busy++;
        let settled: Settled;
        const startedAt = clock;
        w.startedAt = startedAt;
        // Read before the call: a handler that is the only one to get its event may change it.
        const type = call.event.event;
        w.type = type;
        try {
          const context = call.binding.context();
          w.context = context;
          const result = call.binding.handler(call.event, context as never);
          if (isThenable(result)) {
            this.#syncMs += performance.now() - startedAt;
            this.#markAsync(call.binding);
            settled = await this.#settle(w, result);
            clock = performance.now();
            burstFrom = clock;
          } else {
            settled = OK;
            clock = performance.now();
            this.#syncMs += clock - startedAt;
          }
        } catch (error) {
          settled = { outcome: 'error', error };
          clock = performance.now();
          if (w.release === undefined) this.#syncMs += clock - startedAt;
        }
        w.call = undefined;
        w.context = undefined;
        w.release = undefined;
        this.#busy--;
        this.#settled(call.binding.plugin, type, clock - startedAt, settled);
        if (clock - burstFrom >= BURST_MS) {
          await nextTurn();
          clock = performance.now();
          burstFrom = clock;
        }
      }
    } catch (err) {
      // Only a broken listener of 'handlerFailed' or of a counter gets here; the worker ends, the others go on.
      this.#log.error({ err: describeError(err) }, 'dispatch worker failed; it is replaced');
    } finally {
      if (w.call !== undefined) this.#busy--;
      this.#workers.delete(w);
      if (this.#workers.size === 0) {
        this.#idle?.resolve();
        this.#idle = undefined;
      }
      if (this.#waiting.length > 0 && !this.#flushScheduled) {
        this.#flushScheduled = true;
        queueMicrotask(this.#flush);
      }
    }
  }

  /**
   * Waits for a timer turn. A timer created after a block runs after every
   * timer that fell due during it; but a worker woken in the same turn as
   * another that blocked again meanwhile waits for one more, so blocks never
   * add up across workers.
   */
  async #stepAside(): Promise<void> {
    while (this.#syncMs - this.#syncMsAtTurn > SLICE_MS) {
      const before = this.#syncMs;
      await afterDueTimers();
      if (this.#syncMs === before) this.#syncMsAtTurn = before;
    }
  }

  #whenIdle(): Promise<void> {
    if (this.#workers.size === 0) return Promise.resolve();
    if (!this.#idle) {
      let resolve!: () => void;
      const promise = new Promise<void>((r) => (resolve = r));
      this.#idle = { promise, resolve };
    }
    return this.#idle.promise;
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

  #settled(plugin: string, type: string, ms: number, settled: Settled): void {
    const seconds = ms / 1000;
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
    if (settled.outcome === 'timeout') this.counts.timedOut++;
    else this.counts.failed++;
    this.#logFailure(plugin, type, settled.outcome, message);
    this.emit('handlerFailed', { plugin, event: type, reason: settled.outcome, error: message });
  }

  #logFailure(plugin: string, event: string, outcome: 'error' | 'timeout', err: string): void {
    this.#failTimer ??= setTimeout(() => this.#flushFailLog(), DROP_LOG_EVERY_MS).unref();
    if (this.#failLogged < FAIL_LOG_BURST) {
      this.#failLogged++;
      if (outcome === 'timeout') {
        this.#log.warn(
          { code: Code.AGENTD_ERR_HANDLER_TIMEOUT, plugin, event, timeoutMs: this.#options.handlerTimeoutMs },
          'handler timed out; its signal was aborted and its slot freed',
        );
      } else this.#log.error({ code: Code.AGENTD_ERR_HANDLER_FAILED, plugin, event, err }, 'handler failed');
      return;
    }
    const key = `${outcome}\u0000${plugin}\u0000${event}`;
    const row = this.#failSuppressed.get(key);
    if (row) {
      row.calls++;
      row.lastErr = err;
    } else if (this.#failSuppressed.size < FAIL_SUMMARY_ROWS) this.#failSuppressed.set(key, { plugin, event, outcome, calls: 1, lastErr: err });
    else this.#failOther++;
  }

  /** Ends the failure log window: one line (per outcome) for the failures counted but not logged in it. */
  #flushFailLog(): void {
    clearTimeout(this.#failTimer);
    this.#failTimer = undefined;
    this.#failLogged = 0;
    const rows = [...this.#failSuppressed.values()];
    const other = this.#failOther;
    this.#failSuppressed.clear();
    this.#failOther = 0;
    for (const outcome of ['error', 'timeout'] as const) {
      const suppressed = rows.filter((r) => r.outcome === outcome).map(({ outcome: _o, ...r }) => r);
      const otherCalls = outcome === 'error' ? other : 0;
      if (suppressed.length === 0 && otherCalls === 0) continue;
      const fields = { code: outcome === 'error' ? Code.AGENTD_ERR_HANDLER_FAILED : Code.AGENTD_ERR_HANDLER_TIMEOUT, suppressed, ...(otherCalls > 0 ? { otherCalls } : {}) };
      if (outcome === 'error') this.#log.error(fields, 'more handler calls failed than are logged one by one');
      else this.#log.warn(fields, 'more handler calls timed out than are logged one by one');
    }
  }

  #drop(reason: DropReason, event: AgentEvent, calls: number, type: TypeCounts = this.counts.of(event.event)): void {
    this.counts.dropped[reason] += calls;
    type.dropped[reason] += calls;
    try {
      this.emit('dropped', { reason, event: event.event, channel: event.channel, calls });
    } catch (err) {
      // A listener's bug (embedding code's eventDropped): dispatch goes on, the drop stays counted.
      this.#log.error({ err: describeError(err) }, "a 'dropped' listener failed");
    }
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
      await orAfter(this.#whenIdle(), left, undefined, { ref: true });
      if (this.#waiting.length > 0) this.#flush();
    }
    if (this.#waiting.length === 0 && this.#workers.size === 0) {
      this.#flushDropLog();
      this.#flushFailLog();
      return { drained: true, waiting: 0, running: [] };
    }
    const now = performance.now();
    const result: DrainResult = {
      drained: false,
      waiting: this.#waiting.length,
      running: [...this.#workers]
        .filter((w) => w.call !== undefined)
        .map((w) => ({ plugin: w.call!.binding.plugin, event: w.type, runningMs: Math.round(now - w.startedAt) })),
    };
    this.abort();
    return result;
  }

  /** Discards waiting calls and aborts the signals of running ones. */
  abort(): void {
    this.stopAccepting();
    for (let call = this.#waiting.shift(); call !== undefined; call = this.#waiting.shift()) {
      this.counts.dropped.shutdown++;
      this.counts.of(call.event.event).dropped.shutdown++;
    }
    this.#waitingBytes = 0;
    for (const w of this.#workers) {
      w.context?.abort(SHUTDOWN);
      w.release?.({ outcome: 'aborted', error: SHUTDOWN });
    }
    clearInterval(this.#timeoutTimer);
    this.#timeoutTimer = undefined;
    this.#flushDropLog();
    this.#flushFailLog();
  }
}
