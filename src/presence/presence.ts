import { EventEmitter } from 'eventemitter3';
import type { Redis } from 'ioredis';
import { makeEnvelope } from '../bus/publish.ts';
import { describeError } from '../errors.ts';
import type { Logger } from '../log.ts';
import type { AgentInfo } from '../plugins/types.ts';
import { REGISTRY_KEY, denMembersKey, eventChannel, heartbeatKey } from '../redis/keys.ts';

export type AgentStatus = 'online' | 'offline' | 'down';

/** The JSON value under the agent's id in `global:agent_registry`. */
export interface RegistryRecord {
  readonly id: string;
  readonly den: string;
  readonly host: string;
  readonly pid: number;
  readonly version: string;
  readonly startedAt: number;
  readonly status: AgentStatus;
  readonly lastSeen: number;
  readonly downAt?: number;
}

export interface MembershipChange {
  readonly type: 'agent_online' | 'agent_offline';
  readonly agent: string;
  readonly den: string;
  readonly rejoined?: boolean;
}

export interface BeatResult {
  readonly ok: boolean;
  /** The agent was missing from its den and put itself back. */
  readonly rejoined: boolean;
  readonly error?: string;
}

interface PresenceEvents {
  membership: (change: MembershipChange) => void;
  beat: (result: BeatResult) => void;
}

export interface PresenceOptions {
  readonly redis: Redis;
  readonly agent: AgentInfo;
  readonly host: string;
  readonly pid: number;
  readonly version: string;
  readonly ttlSeconds: number;
  readonly intervalMs: number;
  readonly log: Logger;
  /**
   * Awaited before announcing a rejoin, so that after a Redis restart the
   * announcement goes out once our own subscriber (and likely our peers') is back.
   */
  readonly beforeRejoin?: () => Promise<void>;
}

class DeadlineError extends Error {}

function withDeadline<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    promise,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new DeadlineError(`no answer from redis within ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

/**
 * Keeps the agent's presence true: heartbeat key, den membership and
 * registry record, all re-asserted in one MULTI round trip on every beat.
 */
export class Presence extends EventEmitter<PresenceEvents> {
  readonly #o: PresenceOptions;
  readonly #startedAt = Date.now();
  #timer: NodeJS.Timeout | undefined;
  #nextAt = 0;
  #joined = false;
  #stopped = false;
  #inFlight: Promise<BeatResult> | undefined;
  #failing = false;
  /** Unix ms of the last beat Redis acknowledged. */
  lastBeatAt = 0;

  constructor(options: PresenceOptions) {
    super();
    this.#o = options;
  }

  /**
   * Half an interval: a frozen Redis is noticed within 1.5 intervals at worst,
   * and a beat never outlives the next one (no stacking behind a slow Redis).
   */
  get #deadlineMs(): number {
    return Math.max(100, Math.min(this.#o.intervalMs / 2, 5_000));
  }

  record(status: AgentStatus, now: number): RegistryRecord {
    const { agent, host, pid, version } = this.#o;
    return { id: agent.id, den: agent.den, host, pid, version, startedAt: this.#startedAt, status, lastSeen: now };
  }

  #membershipData(extra: Record<string, unknown>): Record<string, unknown> {
    return { agent: this.#o.agent.id, den: this.#o.agent.den, host: this.#o.host, ...extra };
  }

  /** The first beat, then `agent_online`; later beats run on the timer. */
  async join(): Promise<void> {
    const result = await this.beat();
    if (!result.ok) throw new Error(result.error ?? 'heartbeat failed');
    this.#joined = true;
    await this.#announce('agent_online', this.#membershipData({}));
    this.#schedule(Date.now() + this.#o.intervalMs);
  }

  /** Beat now instead of at the next tick, e.g. right after Redis came back. */
  beatSoon(): void {
    if (!this.#joined || this.#stopped) return;
    this.#schedule(Date.now());
  }

  #schedule(at: number): void {
    clearTimeout(this.#timer);
    this.#nextAt = at;
    this.#timer = setTimeout(() => void this.#tick(), Math.max(0, at - Date.now()));
    this.#timer.unref();
  }

  async #tick(): Promise<void> {
    if (this.#stopped) return;
    const planned = this.#nextAt;
    const lateMs = Date.now() - planned;
    if (lateMs > Math.max(1_000, this.#o.intervalMs / 2)) {
      this.#o.log.warn({ lateMs }, 'heartbeat is late: the event loop was blocked');
    }
    // Schedule from the plan, not from when this beat ends, so slow beats do not drift into a missed TTL.
    let next = planned + this.#o.intervalMs;
    if (next <= Date.now()) next = Date.now() + this.#o.intervalMs;
    this.#schedule(next);
    const result = await this.beat();
    if (result.ok && result.rejoined) {
      this.#o.log.warn('agent was missing from its den (Redis restart or peer reaped it); rejoined');
      await this.#o.beforeRejoin?.();
      await this.#announce('agent_online', this.#membershipData({ rejoined: true })).catch(() => undefined);
    }
  }

  /** One beat: SET heartbeat EX ttl, SADD den, HSET registry — atomically, in one round trip. */
  beat(): Promise<BeatResult> {
    // One beat at a time: a beat still waiting on a frozen Redis is not joined by another.
    this.#inFlight ??= this.#beatOnce().finally(() => {
      this.#inFlight = undefined;
    });
    return this.#inFlight;
  }

  async #beatOnce(): Promise<BeatResult> {
    const { redis, agent, ttlSeconds } = this.#o;
    const now = Date.now();
    let result: BeatResult;
    try {
      const replies = await withDeadline(
        redis
          .multi()
          .set(heartbeatKey(agent.id), String(now), 'EX', ttlSeconds)
          .sadd(denMembersKey(agent.den), agent.id)
          .hset(REGISTRY_KEY, agent.id, JSON.stringify(this.record('online', now)))
          .exec(),
        this.#deadlineMs,
      );
      const failed = replies?.find(([err]) => err !== null)?.[0];
      if (!replies || failed) throw failed ?? new Error('transaction aborted');
      this.lastBeatAt = now;
      result = { ok: true, rejoined: this.#joined && replies[1]?.[1] === 1 };
      if (this.#failing) {
        this.#failing = false;
        this.#o.log.info('heartbeat restored');
      }
    } catch (err) {
      result = { ok: false, rejoined: false, error: describeError(err) };
      // One line when beats start failing, not one per beat.
      if (!this.#failing) {
        this.#failing = true;
        this.#o.log.warn({ code: 'AGENTD_ERR_HEARTBEAT', err: result.error, lastBeatAgoMs: this.lastBeatAt ? now - this.lastBeatAt : undefined }, 'heartbeat failed');
      }
    }
    this.emit('beat', result);
    return result;
  }

  async #announce(type: 'agent_online' | 'agent_offline', data: Record<string, unknown>): Promise<void> {
    await this.#o.redis.publish(eventChannel(type), JSON.stringify(makeEnvelope(type, data, this.#o.agent)));
    this.emit('membership', { type, agent: this.#o.agent.id, den: this.#o.agent.den, ...(data['rejoined'] ? { rejoined: true } : {}) });
  }

  /** Stops beating. */
  stop(): void {
    this.#stopped = true;
    clearTimeout(this.#timer);
  }

  /**
   * Graceful leave: out of the den, registry record offline, heartbeat
   * deleted and `agent_offline` published — one MULTI round trip.
   */
  async leave(reason = 'shutdown'): Promise<void> {
    this.stop();
    if (!this.#joined) return;
    const { redis, agent } = this.#o;
    const now = Date.now();
    const data = this.#membershipData({ reason });
    const replies = await withDeadline(
      redis
        .multi()
        .srem(denMembersKey(agent.den), agent.id)
        .hset(REGISTRY_KEY, agent.id, JSON.stringify(this.record('offline', now)))
        .del(heartbeatKey(agent.id))
        .publish(eventChannel('agent_offline'), JSON.stringify(makeEnvelope('agent_offline', data, agent, now)))
        .exec(),
      this.#deadlineMs,
    );
    const failed = replies?.find(([err]) => err !== null)?.[0];
    if (!replies || failed) throw failed ?? new Error('transaction aborted');
    this.#joined = false;
    this.emit('membership', { type: 'agent_offline', agent: agent.id, den: agent.den });
  }
}
