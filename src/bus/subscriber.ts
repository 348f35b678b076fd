import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { EventEmitter } from 'eventemitter3';
import type { Redis } from 'ioredis';
import { orAfter } from '../deadline.ts';
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
  /** The confirmed subscription is gone: the connection closed, or a periodic probe did not come back. */
  lost: (info: { readonly reason: string }) => void;
  /**
   * A periodic probe was published but never arrived: the subscriber connection is open and deaf
   * (a half-open path). The owner should recycle the connection.
   */
  deaf: (info: { readonly reason: string }) => void;
}

export interface EventSubscriberOptions {
  readonly subscriber: Redis;
  readonly command: Redis;
  readonly patterns: readonly string[];
  readonly probeChannel: string;
  /** Plain channels to SUBSCRIBE to as well, each with its own listener (e.g. keyspace expiry events). */
  readonly channels?: ReadonlyMap<string, (message: string) => void>;
  readonly log: Logger;
  /** Ms between probes of a confirmed subscription (0: probe only after a reconnect). Default 5,000. */
  readonly probeIntervalMs?: number;
  /** Ms a probe may take to come back before the subscription counts as lost. Default 2,000. */
  readonly probeTimeoutMs?: number;
  /** True while the connection flaps: the lost / confirmed again lines go to debug. */
  readonly quiet?: () => boolean;
  /** Called for every message on a subscribed event pattern or channel, straight from the socket (the channel decoded). */
  readonly onMessage: (channel: string, payload: Buffer) => void;
}

const DEFAULT_PROBE_INTERVAL_MS = 5_000;
const DEFAULT_PROBE_TIMEOUT_MS = 2_000;
const RETRY_MS = 250;

type ProbeOutcome = 'arrived' | 'lost' | 'no-subscriber' | 'not-sent';

/** Byte equality in JS: for a channel name's few dozen bytes, a loop costs a fifth of Buffer#equals's native call. */
function sameBytes(a: Buffer, b: Buffer): boolean {
  const n = a.length;
  if (n !== b.length) return false;
  for (let i = n - 1; i >= 0; i--) if (a[i] !== b[i]) return false;
  return true;
}

/**
 * Channel names decoded from the socket's bytes. Messages come on few
 * channels, and floods on one: the last name is reused while the bytes match.
 */
class ChannelNames {
  #bytes: Buffer | undefined;
  #name = '';

  of(channel: Buffer): string {
    if (this.#bytes !== undefined && sameBytes(channel, this.#bytes)) return this.#name;
    this.#name = channel.toString();
    this.#bytes = Buffer.from(channel);
    return this.#name;
  }
}

/**
 * Holds the pattern subscription. ioredis calls a connection `ready` before
 * the server has confirmed any subscription, so after every (re)connect this
 * subscribes again and publishes a probe to itself: only when the probe comes
 * back is the subscription confirmed. While confirmed, it probes again every
 * `probeIntervalMs`: a connection that stays open but stops delivering (a
 * NAT or proxy that forwards nothing) is found within interval + timeout.
 */
export class EventSubscriber extends EventEmitter<SubscriberEvents> {
  readonly #o: EventSubscriberOptions;
  #confirmed = false;
  #everConfirmed = false;
  #lostAt = Date.now();
  #stopped = false;
  #confirming = false;
  #probeWaiter: { token: string; resolve: () => void } | undefined;
  #probeTimer: NodeJS.Timeout | undefined;
  readonly #probeIntervalMs: number;
  readonly #probeTimeoutMs: number;
  /** Exact event channels to SUBSCRIBE to instead of PSUBSCRIBE-ing to `patterns` (see useChannels). */
  #eventChannels: ReadonlySet<string> | undefined;
  /** start() was called: only then does a ready connection subscribe (so useChannels() before start() is never raced). */
  #started = false;
  /** Messages delivered on the subscriber connection (any channel): a probe behind a backlog is not a deaf connection. */
  #delivered = 0;
  /** Connections closed so far: a probe started on an earlier connection counts against nobody. */
  #closes = 0;
  /** Patterns with a listener of their own (listenPattern): their messages never reach onMessage. */
  readonly #own = new Map<string, (channel: string, message: string) => void>();

  constructor(options: EventSubscriberOptions) {
    super();
    this.#o = options;
    this.#probeIntervalMs = options.probeIntervalMs ?? DEFAULT_PROBE_INTERVAL_MS;
    this.#probeTimeoutMs = options.probeTimeoutMs ?? DEFAULT_PROBE_TIMEOUT_MS;
    const { subscriber, probeChannel } = options;
    const own = this.#own;
    // Buffers only: a 'message' listener would make ioredis decode every payload to a string as well.
    const names = new ChannelNames();
    subscriber.on('pmessageBuffer', (pattern: string, channel: Buffer, payload: Buffer) => {
      this.#delivered++;
      const listener = own?.get(pattern);
      if (listener) listener(channel.toString(), payload.toString());
      else options.onMessage(names.of(channel), payload);
    });
    subscriber.on('messageBuffer', (channel: Buffer, payload: Buffer) => {
      this.#delivered++;
      const name = names.of(channel);
      if (this.#eventChannels?.has(name)) {
        options.onMessage(name, payload);
      } else if (name === probeChannel) {
        if (this.#probeWaiter?.token === payload.toString()) this.#probeWaiter.resolve();
      } else options.channels?.get(name)?.(payload.toString());
    });
    subscriber.on('ready', () => void this.#confirm());
    subscriber.on('close', () => {
      this.#closes++;
      clearTimeout(this.#probeTimer);
      if (!this.#confirmed) return;
      this.#confirmed = false;
      this.#lostAt = Date.now();
      if (!this.#stopped) {
        this.#o.log[this.#o.quiet?.() ? 'debug' : 'warn']('event subscription lost: events published until it is confirmed again are missed');
        this.emit('lost', { reason: 'event subscription lost' });
      }
    });
  }

  /**
   * PSUBSCRIBE to `pattern` as well, with a listener of its own (channel,
   * message); its messages never reach onMessage. Call before start().
   */
  listenPattern(pattern: string, listener: (channel: string, message: string) => void): void {
    this.#own.set(pattern, listener);
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
    return [...(this.#eventChannels ? [] : this.#o.patterns), ...this.#own.keys()];
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
      const timer = setTimeout(done, timeoutMs).unref();
      this.once('confirmed', done);
    });
  }

  async #confirm(): Promise<void> {
    // Already confirmed on this connection (a 'ready' came before start()): nothing to redo.
    if (this.#confirming || this.#stopped || this.#confirmed || !this.#started) return;
    this.#confirming = true;
    const { subscriber, command, log } = this.#o;
    try {
      while (!this.#stopped && subscriber.status === 'ready') {
        try {
          // Answered within the probe's deadlines, or the connection is deaf: recycled by the owner
          // (with redis.commandTimeoutMs=0 nothing else would ever end the wait).
          const subscribing = (async () => {
            const psub = this.#patterns();
            if (psub.length > 0) await subscriber.psubscribe(...psub);
            await subscriber.subscribe(...this.#channels());
            return true;
          })().catch((err: unknown) => {
            log.debug({ err: describeError(err) }, 'subscription confirmation attempt failed');
            return false;
          });
          const answered = await orAfter(subscribing, 2 * this.#probeTimeoutMs, undefined);
          if (answered === undefined) {
            const reason = `SUBSCRIBE not answered within ${2 * this.#probeTimeoutMs} ms (2 × events.probeTimeoutMs): the subscriber connection is deaf`;
            log.debug({ reason }, 'subscription confirmation attempt failed');
            this.emit('deaf', { reason });
            return;
          }
          if (answered && (await this.#probe(command))) {
            const gapMs = Date.now() - this.#lostAt;
            const again = this.#everConfirmed;
            this.#confirmed = true;
            this.#everConfirmed = true;
            if (again) log[this.#o.quiet?.() ? 'debug' : 'warn']({ gapMs, ...this.subscribed }, 'event subscription confirmed again; events published during the gap were missed');
            else log.info(this.subscribed, 'event subscription confirmed');
            this.emit('confirmed', { again, gapMs });
            this.#scheduleProbe();
            return;
          }
        } catch (err) {
          log.debug({ err: describeError(err) }, 'subscription confirmation attempt failed');
        }
        await sleep(RETRY_MS, undefined, { ref: false });
      }
    } finally {
      this.#confirming = false;
    }
  }

  #scheduleProbe(): void {
    clearTimeout(this.#probeTimer);
    if (this.#probeIntervalMs <= 0 || this.#stopped) return;
    this.#probeTimer = setTimeout(() => void this.#periodicProbe(), this.#probeIntervalMs);
    this.#probeTimer.unref();
  }

  /**
   * One check of a confirmed subscription. Only a probe that was published
   * (PUBLISH answered) and did not arrive counts against the subscriber: a
   * failing command connection is the command side's problem, reported there.
   */
  async #periodicProbe(): Promise<void> {
    if (!this.#confirmed || this.#stopped || this.#confirming) return;
    const { command, log } = this.#o;
    const closes = this.#closes;
    let outcome: ProbeOutcome;
    try {
      outcome = await this.#probeOnce(command);
    } catch {
      outcome = 'not-sent';
    }
    // The connection it probed closed meanwhile (lost, and reported, then): whatever came of it says
    // nothing about the connection now, which its own confirmation probed and its timer probes next.
    if (!this.#confirmed || this.#stopped || this.#closes !== closes) return;
    if (outcome === 'arrived' || outcome === 'not-sent') {
      this.#scheduleProbe();
      return;
    }
    const reason =
      outcome === 'no-subscriber'
        ? 'event subscription probe found no subscriber on the server (the subscription is gone)'
        : `event subscription probe not delivered within ${this.#probeTimeoutMs} ms (events.probeTimeoutMs): the subscriber connection is open but deaf`;
    this.#confirmed = false;
    this.#lostAt = Date.now();
    log.warn({ probeIntervalMs: this.#probeIntervalMs, probeTimeoutMs: this.#probeTimeoutMs }, `${reason}; recycling it, events published until it is confirmed again are missed`);
    this.emit('lost', { reason });
    this.emit('deaf', { reason });
  }

  async #probe(command: Redis): Promise<boolean> {
    return (await this.#probeOnce(command)) === 'arrived';
  }

  /**
   * Publishes a token on the probe channel and waits for it on the subscriber.
   * The PUBLISH must be answered within the timeout (else 'not-sent': the
   * command path is slow, not the subscriber); the token must then arrive
   * within the timeout of that answer. PUBLISH counts receivers: 0 means the
   * server holds no subscription for us.
   */
  async #probeOnce(command: Redis): Promise<ProbeOutcome> {
    if (command.status !== 'ready') return 'not-sent';
    const closes = this.#closes;
    const token = randomBytes(8).toString('hex');
    let arrivedNow = false;
    let arrive!: () => void;
    const arrival = new Promise<undefined>((resolve) => (arrive = () => resolve(undefined)));
    this.#probeWaiter = {
      token,
      resolve: () => {
        arrivedNow = true;
        arrive();
      },
    };
    try {
      const published = command.publish(this.#o.probeChannel, token).then(
        (n) => n,
        () => undefined,
      );
      // Whichever comes first: the PUBLISH answer, the token, or the deadline.
      const receivers = await orAfter(Promise.race([published, arrival]), this.#probeTimeoutMs, 'late' as const);
      if (arrivedNow) return 'arrived';
      if (receivers === 'late' || receivers === undefined) return 'not-sent';
      if (receivers === 0) return 'no-subscriber';
      // A probe queued behind a backlog is late, not lost: while messages keep arriving the connection
      // delivers, and recycling it would throw the backlog away. Lost only after a timeout with nothing.
      // The connection closed (the token went with it) or another probe took the waiter: the wait ends,
      // else what the next connection delivers would keep it going.
      for (;;) {
        const delivered = this.#delivered;
        await orAfter(arrival, this.#probeTimeoutMs, undefined);
        if (arrivedNow) return 'arrived';
        if (this.#delivered === delivered || this.#closes !== closes || this.#probeWaiter?.token !== token) return 'lost';
      }
    } finally {
      if (this.#probeWaiter?.token === token) this.#probeWaiter = undefined;
    }
  }

  /** Unsubscribes so Redis stops sending; messages already in flight still arrive. */
  async stop(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#probeTimer);
    this.#confirmed = false;
    const { subscriber } = this.#o;
    if (subscriber.status !== 'ready') return;
    const psub = this.#patterns();
    try {
      await orAfter(Promise.all([psub.length > 0 ? subscriber.punsubscribe(...psub) : undefined, subscriber.unsubscribe(...this.#channels())]), 1_000, undefined);
    } catch {
      // The connection is closing anyway.
    }
  }
}
