import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'eventemitter3';
import type { Redis } from 'ioredis';
import { describeError } from '../errors.ts';
import type { Logger } from '../log.ts';

export interface SubscriptionConfirmed {
  /** Confirmed again after the subscriber connection was lost. */
  readonly again: boolean;
  /** Time without a confirmed subscription: events published then were missed. */
  readonly gapMs: number;
}

interface SubscriberEvents {
  confirmed: (info: SubscriptionConfirmed) => void;
  lost: () => void;
}

export interface EventSubscriberOptions {
  readonly subscriber: Redis;
  readonly command: Redis;
  readonly patterns: readonly string[];
  readonly probeChannel: string;
  /** Plain channels to SUBSCRIBE to as well, each with its own listener (e.g. keyspace expiry events). */
  readonly channels?: ReadonlyMap<string, (message: string) => void>;
  /** Patterns to PSUBSCRIBE to as well, each with its own listener (channel, message); their messages never reach onMessage. */
  readonly patternListeners?: ReadonlyMap<string, (channel: string, message: string) => void>;
  readonly log: Logger;
  /** Called for every message on a subscribed pattern, straight from the socket. */
  readonly onMessage: (channel: Buffer, payload: Buffer) => void;
}

const PROBE_WAIT_MS = 1_000;
const RETRY_MS = 250;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms).unref());

/**
 * Holds the pattern subscription. ioredis calls a connection `ready` before
 * the server has confirmed any subscription, so after every (re)connect this
 * subscribes again and publishes a probe to itself: only when the probe comes
 * back is the subscription confirmed.
 */
export class EventSubscriber extends EventEmitter<SubscriberEvents> {
  readonly #o: EventSubscriberOptions;
  #confirmed = false;
  #everConfirmed = false;
  #lostAt = Date.now();
  #stopped = false;
  #confirming = false;
  #probeWaiter: { token: string; resolve: () => void } | undefined;
  /** Exact event channels to SUBSCRIBE to instead of PSUBSCRIBE-ing to `patterns` (see useChannels). */
  #eventChannels: ReadonlySet<string> | undefined;
  /** start() was called: only then does a ready connection subscribe (so useChannels() before start() is never raced). */
  #started = false;

  constructor(options: EventSubscriberOptions) {
    super();
    this.#o = options;
    const { subscriber, probeChannel } = options;
    const own = options.patternListeners;
    subscriber.on('pmessageBuffer', (pattern: string, channel: Buffer, payload: Buffer) => {
      const listener = own?.get(pattern);
      if (listener) listener(channel.toString(), payload.toString());
      else options.onMessage(channel, payload);
    });
    subscriber.on('message', (channel: string, message: string) => {
      if (channel === probeChannel) {
        if (this.#probeWaiter?.token === message) this.#probeWaiter.resolve();
        return;
      }
      options.channels?.get(channel)?.(message);
    });
    subscriber.on('messageBuffer', (channel: Buffer, payload: Buffer) => {
      if (this.#eventChannels?.has(channel.toString())) options.onMessage(channel, payload);
    });
    subscriber.on('ready', () => void this.#confirm());
    subscriber.on('close', () => {
      if (!this.#confirmed) return;
      this.#confirmed = false;
      this.#lostAt = Date.now();
      if (!this.#stopped) {
        this.#o.log.warn('event subscription lost: events published until it is confirmed again are missed');
        this.emit('lost');
      }
    });
  }

  /**
   * Subscribe to exactly these event channels (SUBSCRIBE) instead of the
   * patterns (PSUBSCRIBE), from the next confirmation on: Redis then sends
   * this daemon only the events it handles. Call before start().
   */
  useChannels(channels: readonly string[]): void {
    this.#eventChannels = new Set(channels);
  }

  /** What the subscription covers: the exact channels, or the patterns. */
  get subscribed(): { readonly channels?: readonly string[]; readonly patterns?: readonly string[] } {
    return this.#eventChannels ? { channels: [...this.#eventChannels] } : { patterns: this.#o.patterns };
  }

  /** The patterns to PSUBSCRIBE to: the event patterns (unless exact channels replace them) and the listeners'. */
  #patterns(): string[] {
    return [...(this.#eventChannels ? [] : this.#o.patterns), ...(this.#o.patternListeners?.keys() ?? [])];
  }

  /** The channels to SUBSCRIBE to: the probe, the listeners' and the exact event channels. */
  #channels(): string[] {
    return [this.#o.probeChannel, ...(this.#o.channels?.keys() ?? []), ...(this.#eventChannels ?? [])];
  }

  get confirmed(): boolean {
    return this.#confirmed;
  }

  /** Starts confirming (if the connection is ready) and resolves once confirmed. */
  start(signal?: AbortSignal): Promise<void> {
    this.#started = true;
    if (this.#o.subscriber.status === 'ready') void this.#confirm();
    if (this.#confirmed) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const onAbort = (): void => {
        this.off('confirmed', onConfirmed);
        reject(signal?.reason ?? new Error('aborted'));
      };
      const onConfirmed = (): void => {
        signal?.removeEventListener('abort', onAbort);
        resolve();
      };
      this.once('confirmed', onConfirmed);
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  /** Resolves once the subscription is confirmed, or after `timeoutMs` regardless. Never rejects. */
  whenConfirmed(timeoutMs: number): Promise<void> {
    if (this.#confirmed) return Promise.resolve();
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        this.off('confirmed', done);
        resolve();
      };
      const timer = setTimeout(done, timeoutMs);
      this.once('confirmed', done);
    });
  }

  async #confirm(): Promise<void> {
    if (this.#confirming || this.#stopped || !this.#started) return;
    this.#confirming = true;
    const { subscriber, command, log } = this.#o;
    try {
      while (!this.#stopped && subscriber.status === 'ready') {
        try {
          const psub = this.#patterns();
          if (psub.length > 0) await subscriber.psubscribe(...psub);
          await subscriber.subscribe(...this.#channels());
          if (await this.#probe(command)) {
            const gapMs = Date.now() - this.#lostAt;
            const again = this.#everConfirmed;
            this.#confirmed = true;
            this.#everConfirmed = true;
            if (again) log.warn({ gapMs, ...this.subscribed }, 'event subscription confirmed again; events published during the gap were missed');
            else log.info(this.subscribed, 'event subscription confirmed');
            this.emit('confirmed', { again, gapMs });
            return;
          }
        } catch (err) {
          log.debug({ err: describeError(err) }, 'subscription confirmation attempt failed');
        }
        await sleep(RETRY_MS);
      }
    } finally {
      this.#confirming = false;
    }
  }

  async #probe(command: Redis): Promise<boolean> {
    if (command.status !== 'ready') return false;
    const token = randomBytes(8).toString('hex');
    let timer: NodeJS.Timeout | undefined;
    const arrived = new Promise<boolean>((resolve) => {
      this.#probeWaiter = { token, resolve: () => resolve(true) };
      timer = setTimeout(() => resolve(false), PROBE_WAIT_MS);
    });
    try {
      await command.publish(this.#o.probeChannel, token);
      return await arrived;
    } finally {
      clearTimeout(timer);
      this.#probeWaiter = undefined;
    }
  }

  /** Unsubscribes so Redis stops sending; messages already in flight still arrive. */
  async stop(): Promise<void> {
    this.#stopped = true;
    this.#confirmed = false;
    const { subscriber } = this.#o;
    if (subscriber.status !== 'ready') return;
    const psub = this.#patterns();
    try {
      await Promise.race([
        Promise.all([psub.length > 0 ? subscriber.punsubscribe(...psub) : undefined, subscriber.unsubscribe(...this.#channels())]),
        sleep(1_000),
      ]);
    } catch {
      // The connection is closing anyway.
    }
  }
}
