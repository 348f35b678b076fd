import { EventEmitter } from 'eventemitter3';
import PQueue from 'p-queue';
import type { OverflowPolicy } from '../config/schema.ts';
import { describeError } from '../errors.ts';
import type { Logger } from '../log.ts';
import type { AgentEvent } from './envelope.ts';
import { Fifo } from './fifo.ts';

/** One plugin's handler for one event type (or '*'), ready to call. */
export interface Binding {
  readonly plugin: string;
  /** The key it was registered under: an event type or '*'. */
  readonly on: string;
  readonly call: (event: AgentEvent, signal: AbortSignal) => unknown;
}

export type DropReason = 'queue_full' | 'evicted' | 'shutdown';

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

export interface HandlerDoneInfo {
  readonly plugin: string;
  readonly event: string;
  readonly durationMs: number;
  readonly outcome: 'ok' | 'error' | 'timeout' | 'aborted';
}

export interface DispatcherEvents {
  dropped: (info: DroppedInfo) => void;
  handlerFailed: (info: HandlerFailedInfo) => void;
  handlerDone: (info: HandlerDoneInfo) => void;
}

export interface DispatcherOptions {
  readonly concurrency: number;
  readonly maxWaiting: number;
  readonly overflow: OverflowPolicy;
  readonly handlerTimeoutMs: number;
  readonly log: Logger;
}

export interface DispatcherCounts {
  /** Events that had at least one handler and were queued. */
  dispatched: number;
  /** Events no handler was registered for. */
  unhandled: number;
  /** Handler calls that resolved. */
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
  /** Only under drop-oldest: lets a waiting call be evicted. */
  readonly controller: AbortController | undefined;
  startedAt: number;
}

const EVICTED = new Error('evicted by a newer event (queue.overflow = drop-oldest)');
const SHUTDOWN = new Error('daemon shutting down');
const DROP_LOG_EVERY_MS = 5_000;

/**
 * Runs handler calls through one bounded p-queue. `dispatch` never waits:
 * when the queue is full the overflow policy drops work right here, so the
 * socket is always read at full speed and Redis never has to cut us off.
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
  readonly #running = new Set<Call>();
  /** Calls waiting under drop-oldest, oldest first; entries that started are skipped lazily. */
  readonly #waiting = new Fifo<Call>();
  readonly #shutdown = new AbortController();
  #accepting = true;
  #dropsSinceLog = 0;
  #lastDropLog = 0;

  constructor(options: DispatcherOptions) {
    super();
    this.#options = options;
    this.#log = options.log;
    this.#queue = new PQueue({ concurrency: options.concurrency, timeout: options.handlerTimeoutMs });
  }

  /** Replaces the handler table. Each event type gets its own handlers followed by the '*' handlers. */
  setBindings(bindings: readonly Binding[]): void {
    this.#wildcard = bindings.filter((b) => b.on === '*');
    this.#byType.clear();
    for (const b of bindings) {
      if (b.on === '*') continue;
      const list = this.#byType.get(b.on) ?? [];
      this.#byType.set(b.on, [...list, b]);
    }
    for (const [type, list] of this.#byType) this.#byType.set(type, [...list, ...this.#wildcard]);
  }

  get waiting(): number {
    return this.#queue.size;
  }

  get running(): number {
    return this.#queue.pending;
  }

  /** The event types some handler is registered for ('*' excluded). */
  get types(): IterableIterator<string> {
    return this.#byType.keys();
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
    const room = this.#options.maxWaiting - this.#queue.size;
    if (need > room) {
      if (this.#options.overflow === 'drop-newest' || need > this.#options.maxWaiting) {
        this.#drop('queue_full', event, need);
        return 'dropped';
      }
      this.#evict(need - room);
    }
    this.counts.dispatched++;
    for (const binding of bindings) this.#enqueue(binding, event);
    return 'queued';
  }

  #enqueue(binding: Binding, event: AgentEvent): void {
    const controller = this.#options.overflow === 'drop-oldest' ? new AbortController() : undefined;
    const call: Call = { binding, event, controller, startedAt: 0 };
    if (controller) this.#waiting.push(call);
    this.#queue
      .add(
        ({ signal }) => {
          call.startedAt = performance.now();
          this.#running.add(call);
          // p-queue always hands a signal here, because every call has a timeout.
          return binding.call(event, signal as AbortSignal);
        },
        { signal: controller?.signal ?? this.#shutdown.signal },
      )
      .then(
        () => this.#settled(call, undefined),
        (err: unknown) => this.#settled(call, err),
      );
  }

  #settled(call: Call, err: unknown): void {
    const started = call.startedAt !== 0;
    this.#running.delete(call);
    const plugin = call.binding.plugin;
    const type = call.event.event;
    // A call that never started was evicted or discarded at shutdown, and counted there.
    if (!started) return;
    const durationMs = performance.now() - call.startedAt;
    if (err === undefined) {
      this.counts.completed++;
      this.emit('handlerDone', { plugin, event: type, durationMs, outcome: 'ok' });
      return;
    }
    if (err === SHUTDOWN) {
      this.#log.warn({ plugin, event: type, runningMs: Math.round(durationMs) }, 'handler aborted at shutdown');
      this.emit('handlerDone', { plugin, event: type, durationMs, outcome: 'aborted' });
      return;
    }
    const timedOut = (err as { name?: unknown } | null)?.name === 'TimeoutError';
    const message = describeError(err);
    if (timedOut) {
      this.counts.timedOut++;
      this.#log.warn({ code: 'AGENTD_ERR_HANDLER_TIMEOUT', plugin, event: type, timeoutMs: this.#options.handlerTimeoutMs }, 'handler timed out; its signal was aborted and its slot freed');
    } else {
      this.counts.failed++;
      this.#log.error({ code: 'AGENTD_ERR_HANDLER_FAILED', plugin, event: type, err: message }, 'handler failed');
    }
    this.emit('handlerDone', { plugin, event: type, durationMs, outcome: timedOut ? 'timeout' : 'error' });
    this.emit('handlerFailed', { plugin, event: type, reason: timedOut ? 'timeout' : 'error', error: message });
  }

  /** Drop-oldest: abort the longest-waiting calls until `count` slots are free. */
  #evict(count: number): void {
    let left = count;
    while (left > 0) {
      const victim = this.#waiting.shift();
      if (victim === undefined) return;
      if (victim.startedAt !== 0 || victim.controller?.signal.aborted) continue;
      victim.controller?.abort(EVICTED);
      left--;
      this.#drop('evicted', victim.event, 1);
    }
  }

  #drop(reason: DropReason, event: AgentEvent, calls: number): void {
    this.counts.dropped[reason] += calls;
    this.emit('dropped', { reason, event: event.event, channel: event.channel, calls });
    // Under overload this fires thousands of times a second: one line now, then a summary every few seconds.
    this.#dropsSinceLog += calls;
    const now = Date.now();
    if (now - this.#lastDropLog >= DROP_LOG_EVERY_MS) {
      this.#log.warn(
        { reason, event: event.event, dropped: this.#dropsSinceLog, waiting: this.#queue.size, running: this.#queue.pending, totalDropped: this.counts.dropped },
        'handler queue full: dropping events',
      );
      this.#dropsSinceLog = 0;
      this.#lastDropLog = now;
    }
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
    let timer: NodeJS.Timeout | undefined;
    const timedOut = await Promise.race([
      this.#queue.onIdle().then(() => false),
      new Promise<boolean>((resolve) => {
        timer = setTimeout(() => resolve(true), timeoutMs);
      }),
    ]);
    clearTimeout(timer);
    if (!timedOut) return { drained: true, waiting: 0, running: [] };
    const now = performance.now();
    const result: DrainResult = {
      drained: false,
      waiting: this.#queue.size,
      running: [...this.#running].map((c) => ({ plugin: c.binding.plugin, event: c.event.event, runningMs: Math.round(now - c.startedAt) })),
    };
    this.abort();
    return result;
  }

  /** Discards waiting calls and aborts the signals of running ones. */
  abort(): void {
    this.stopAccepting();
    const waiting = this.#queue.size;
    if (waiting > 0) this.counts.dropped.shutdown += waiting;
    this.#queue.clear();
    this.#waiting.clear();
    this.#shutdown.abort(SHUTDOWN);
    for (const call of this.#running) call.controller?.abort(SHUTDOWN);
  }
}
