import { monitorEventLoopDelay, type ELDHistogram } from 'node:perf_hooks';
import type { Logger } from '../log.ts';

export interface LoopDelay {
  readonly maxMs: number;
  readonly p99Ms: number;
}

const TICK_MS = 20;

/**
 * Watches event-loop delay: a blocked loop delays heartbeats, and a heartbeat
 * late by more than TTL − interval makes a live agent look dead to its peers.
 */
export class LoopMonitor {
  readonly #histogram: ELDHistogram;
  readonly #budgetMs: number;
  readonly #log: Logger;
  #ticker: NodeJS.Timeout | undefined;
  #windowMaxMs = 0;
  /** The worst delay seen since start, in ms. */
  worstMs = 0;
  last: LoopDelay = { maxMs: 0, p99Ms: 0 };

  /** `budgetMs`: how late a beat may be before the heartbeat key expires (TTL − interval). */
  constructor(budgetMs: number, log: Logger) {
    this.#budgetMs = budgetMs;
    this.#log = log;
    this.#histogram = monitorEventLoopDelay({ resolution: 20 });
  }

  start(): void {
    this.#histogram.enable();
    // The histogram forgets a block still in progress when reset(), and
    // check() often runs right after one: a timer of our own records how
    // late it fires, so no block goes unreported.
    let expected = performance.now() + TICK_MS;
    this.#ticker = setInterval(() => {
      const now = performance.now();
      this.#windowMaxMs = Math.max(this.#windowMaxMs, now - expected);
      expected = now + TICK_MS;
    }, TICK_MS);
    this.#ticker.unref();
  }

  stop(): void {
    this.#histogram.disable();
    clearInterval(this.#ticker);
  }

  /** Reads and resets the window; warns when the loop was blocked for over half the budget. */
  check(): LoopDelay {
    const h = this.#histogram;
    const delay = { maxMs: Math.round(Math.max(h.max / 1e6, this.#windowMaxMs)), p99Ms: Math.round(h.percentile(99) / 1e6) };
    h.reset();
    this.#windowMaxMs = 0;
    this.last = delay;
    this.worstMs = Math.max(this.worstMs, delay.maxMs);
    if (delay.maxMs > this.#budgetMs / 2) {
      this.#log.warn(
        { loopDelayMaxMs: delay.maxMs, budgetMs: this.#budgetMs },
        'event loop was blocked for over half of heartbeat.ttl - heartbeat.interval: a longer block would make peers report this agent down',
      );
    }
    return delay;
  }
}
