import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'eventemitter3';
import type { Redis } from 'ioredis';
import { makeEnvelope } from '../bus/publish.ts';
import { withRedisDeadline } from '../deadline.ts';
import { AgentdError, Code, describeError } from '../errors.ts';
import type { Logger } from '../log.ts';
import type { AgentInfo } from '../plugins/types.ts';
import { REGISTRY_KEY, denMembersKey, eventChannel, heartbeatKey } from '../redis/keys.ts';
import { leaveAgent } from '../redis/scripts.ts';
import { parseRecord, type UntrustedRecord } from './record.ts';
import type { KeyRing } from '../security/keys.ts';
import { sealEnvelope } from '../security/signing.ts';

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
  /** Random token of the daemon process that wrote the record: tells twins with one agent id apart. */
  readonly instance?: string;
  /** The writer's heartbeat.ttl, seconds: how old lastSeen must be before a watcher may reap it. */
  readonly heartbeatTtl?: number;
}

/** Another live daemon instance with this agent id, as its registry record describes it. */
export interface TwinInfo {
  readonly host: string | null;
  readonly pid: number | null;
  readonly instance: string;
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
  /**
   * The full beat failed but the heartbeat key's TTL was renewed (PEXPIRE,
   * which Redis still runs when it refuses writes over maxmemory).
   */
  readonly keptAlive?: boolean;
}

interface PresenceEvents {
  membership: (change: MembershipChange) => void;
  beat: (result: BeatResult) => void;
  /** Another live instance with this agent id wrote the registry record since our last beat. */
  twin: (twin: TwinInfo) => void;
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
  /** Signing keys: agent_online and agent_offline are signed with them (security.signing warn or require). */
  readonly keys?: KeyRing;
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
  /** Unix ms (local clock) of the first beat of the current unbroken run of successful beats (0: failing). */
  #okSince = 0;
  /** A beat has failed since start: from then on the watcher waits for steadyMs to reach the TTL. */
  #everFailed = false;
  /** A beat has failed since the last one that landed. */
  #failedSinceBeat = false;
  /** A beat that may have run unseen (its connection closed while it was in flight) a TTL after the last landed one. */
  #lostAfterTtl = false;
  /**
   * Redis's clock minus ours, ms, measured with TIME on every beat: lastSeen in
   * the registry is written in Redis time, so a peer's skewed clock cannot make
   * it look dead (or alive) to a watcher that compares it with Redis's TIME.
   */
  #clockOffset = 0;
  /** This daemon process's token in the registry record (a twin with the same agent id has another). */
  readonly instance = randomBytes(8).toString('hex');
  /** Unix ms when another live instance with this agent id was last seen (0: never). */
  twinSeenAt = 0;
  #twin: TwinInfo | undefined;

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
    return { id: agent.id, den: agent.den, host, pid, version, startedAt: this.#startedAt, status, lastSeen: now, instance: this.instance, heartbeatTtl: this.#o.ttlSeconds };
  }

  #membershipData(extra: Record<string, unknown>): Record<string, unknown> {
    return { agent: this.#o.agent.id, den: this.#o.agent.den, host: this.#o.host, ...extra };
  }

  /** The first beat, then `agent_online`; later beats run on the timer. */
  async join(): Promise<void> {
    await this.#refuseLiveTwin();
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
      let replies: Array<[Error | null, unknown]> | null;
      try {
        replies = await withRedisDeadline(
          redis
            .multi()
            .hget(REGISTRY_KEY, agent.id)
            .set(heartbeatKey(agent.id), String(now), 'EX', ttlSeconds)
            .sadd(denMembersKey(agent.den), agent.id)
            .hset(REGISTRY_KEY, agent.id, JSON.stringify(this.record('online', this.redisNow())))
            .time()
            .exec(),
          this.#deadlineMs,
        );
      } catch (err) {
        throw new Error(transactionCause(err), { cause: err });
      }
      const failed = replies?.find(([err]) => err !== null)?.[0];
      if (!replies || failed) throw failed ?? new Error('transaction aborted');
      this.#measureClock(replies[4]?.[1]);
      this.#checkTwin(replies[0]?.[1]);
      // A beat that lands long after the last one ends a stretch as a failure does: peers that
      // shared the trouble (a busy or frozen Redis expired every key at once) need their turn to beat.
      const gap = now - this.lastBeatAt;
      // A failure since the last landed beat ends the stretch too, unless that beat is recent enough
      // that every peer beating at our interval still had one landed beat an interval before its key
      // would expire (a connection killed and back at once): restarting the probation at each such
      // blip let a reconnect storm hold every reap for as long as it lasted.
      const blip = this.lastBeatAt > 0 && gap + 2 * this.#o.intervalMs <= this.#o.ttlSeconds * 1000;
      if ((this.lastBeatAt > 0 && gap > 2 * this.#o.intervalMs + this.#deadlineMs) || (this.#failedSinceBeat && !blip)) {
        this.#okSince = 0;
        this.#everFailed = true;
      }
      this.#failedSinceBeat = false;
      this.lastBeatAt = now;
      if (this.#okSince === 0) this.#okSince = now;
      // A beat lost with its connection may still have run in Redis (SADD and all) after a peer reaped
      // us: then this SADD finds us in the den, yet nobody has announced our return.
      result = { ok: true, rejoined: this.#joined && (replies[2]?.[1] === 1 || this.#lostAfterTtl) };
      this.#lostAfterTtl = false;
      if (this.#failing) {
        this.#failing = false;
        this.#o.log.info('heartbeat restored');
      }
    } catch (err) {
      // Whether this ends the steady stretch is decided by the next landed beat (above).
      this.#failedSinceBeat = true;
      // Sent, then its connection went (outcome unknown), a TTL or more after our last landed beat.
      if (this.#joined && this.lastBeatAt > 0 && now - this.lastBeatAt >= ttlSeconds * 1000 && /max retries per request|Connection is closed|Socket timeout/i.test(describeError(err))) this.#lostAfterTtl = true;
      this.#everFailed = true;
      const error = describeError(err);
      // Over maxmemory Redis refuses SET, SADD and HSET (and so the whole MULTI), but still runs
      // PEXPIRE: renew the key we have, so that a full Redis does not make us look dead.
      const keptAlive = /\bOOM\b/.test(error) ? await this.#keepAlive() : false;
      result = { ok: false, rejoined: false, error, ...(keptAlive ? { keptAlive } : {}) };
      // One line when beats start failing, not one per beat.
      if (!this.#failing) {
        this.#failing = true;
        this.#o.log.warn(
          { code: Code.AGENTD_ERR_HEARTBEAT, err: error, keptAlive, lastBeatAgoMs: this.lastBeatAt ? now - this.lastBeatAt : undefined },
          keptAlive ? 'heartbeat failed; the heartbeat key is kept alive with PEXPIRE while Redis refuses writes' : 'heartbeat failed',
        );
      }
    }
    this.emit('beat', result);
    return result;
  }

  /** PEXPIRE of the heartbeat key alone; true when the key exists and its TTL was renewed. */
  async #keepAlive(): Promise<boolean> {
    try {
      const reply = await withRedisDeadline(this.#o.redis.pexpire(heartbeatKey(this.#o.agent.id), this.#o.ttlSeconds * 1000), this.#deadlineMs);
      return reply === 1;
    } catch {
      return false;
    }
  }

  /**
   * Whether this agent's own presence writes work: the last beat succeeded
   * and is recent. A watcher that is unsure of its own health reaps nobody.
   */
  get healthy(): boolean {
    return !this.#failing && this.lastBeatAt > 0 && Date.now() - this.lastBeatAt <= 2 * this.#o.intervalMs + this.#deadlineMs;
  }

  /**
   * How long, ms, this agent's beats have been landing without a failure (0
   * while unhealthy; infinite when no beat has failed since start). After a
   * failure, peers may not have been able to beat either (a Redis outage,
   * freeze or OOM hits everyone): the watcher waits for this to reach heartbeat.ttl.
   */
  get steadyMs(): number {
    if (!this.healthy) return 0;
    return this.#everFailed ? Date.now() - this.#okSince : Number.POSITIVE_INFINITY;
  }

  /** Unix ms by Redis's clock, as far as the last beat measured it. */
  redisNow(): number {
    return Date.now() + this.#clockOffset;
  }

  /** Redis's TIME reply ([seconds, microseconds]) against our clock when the reply arrived. */
  #measureClock(reply: unknown): void {
    if (!Array.isArray(reply) || reply.length !== 2) return;
    const ms = Number(reply[0]) * 1000 + Math.floor(Number(reply[1]) / 1000);
    if (Number.isFinite(ms) && ms > 0) this.#clockOffset = ms - Date.now();
  }

  /** The record a beat replaced: a different instance token there means a twin wrote it since our last beat. */
  #checkTwin(previous: unknown): void {
    if (!this.#joined || typeof previous !== 'string') return;
    const rec = parseRecord(previous);
    if (typeof rec.instance !== 'string' || rec.instance === this.instance) return;
    // Written before we started (e.g. a Redis restored from an old snapshot): a predecessor, not a twin.
    if (typeof rec.lastSeen !== 'number' || rec.lastSeen <= this.#startedAt + this.#clockOffset) return;
    const twin: TwinInfo = { host: typeof rec.host === 'string' ? rec.host : null, pid: typeof rec.pid === 'number' ? rec.pid : null, instance: rec.instance };
    const first = this.#twin?.instance !== twin.instance || Date.now() - this.twinSeenAt > this.#o.ttlSeconds * 1000;
    this.twinSeenAt = Date.now();
    this.#twin = twin;
    if (first) {
      this.#o.log.error(
        { code: Code.AGENTD_ERR_DUPLICATE_ID, otherHost: twin.host, otherPid: twin.pid, otherInstance: twin.instance, instance: this.instance },
        `another instance with agent id ${this.#o.agent.id} is live (host ${twin.host ?? '?'}, pid ${twin.pid ?? '?'}): two daemons share one id; give each its own agent.id`,
      );
    }
    this.emit('twin', twin);
  }

  /**
   * Before the first beat: is another instance with this agent id live? Its
   * record says online with another token and its heartbeat key exists. A
   * dead predecessor on this host (its pid is gone, or is ours now) is not a
   * twin; otherwise wait up to 1.5 intervals for it to beat again. A beat
   * means a live twin: refuse to start.
   */
  async #refuseLiveTwin(): Promise<void> {
    const { redis, agent, host, pid } = this.#o;
    const read = async (): Promise<{ rec: UntrustedRecord; alive: boolean }> => {
      const replies = await withRedisDeadline(redis.multi().hget(REGISTRY_KEY, agent.id).exists(heartbeatKey(agent.id)).time().exec(), this.#deadlineMs);
      this.#measureClock(replies?.[2]?.[1]);
      return { rec: parseRecord(replies?.[0]?.[1] as string | null), alive: replies?.[1]?.[1] === 1 };
    };
    const first = await read();
    const other = first.rec;
    if (!first.alive || other.status !== 'online' || typeof other.instance !== 'string' || other.instance === this.instance) return;
    if (other.host === host && typeof other.pid === 'number' && (other.pid === pid || !processAlive(other.pid))) return;
    const deadline = Date.now() + Math.min(1.5 * this.#o.intervalMs, this.#o.ttlSeconds * 1000);
    while (Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, Math.max(25, this.#o.intervalMs / 5)));
      if (this.#stopped) throw new AgentdError('AGENTD_ERR_CLOSED', 'daemon closed during start');
      const now = await read();
      if (!now.alive || now.rec.instance !== other.instance) return;
      if (now.rec.lastSeen !== other.lastSeen) {
        throw new AgentdError(
          'AGENTD_ERR_DUPLICATE_ID',
          `agent id ${agent.id} is already live on host ${String(other.host ?? '?')} (pid ${String(other.pid ?? '?')}); give this daemon its own agent.id (AGENTD_AGENT_ID)`,
        );
      }
    }
    this.#o.log.warn({ otherHost: other.host, otherPid: other.pid }, 'the registry record of this agent id is from another instance that stopped beating; taking over');
  }

  async #announce(type: 'agent_online' | 'agent_offline', data: Record<string, unknown>): Promise<void> {
    const channel = eventChannel(type);
    await this.#o.redis.publish(channel, sealEnvelope(makeEnvelope(type, data, this.#o.agent), channel, this.#o.keys));
    this.emit('membership', { type, agent: this.#o.agent.id, den: this.#o.agent.den, ...(data['rejoined'] ? { rejoined: true } : {}) });
  }

  /** Stops beating. */
  stop(): void {
    this.#stopped = true;
    clearTimeout(this.#timer);
  }

  /**
   * Graceful leave: out of the den, registry record offline, heartbeat
   * deleted and `agent_offline` published — one script, and only if the
   * registry record is this instance's. A live twin (same agent id) keeps
   * its presence: seen within the TTL, we do not touch anything.
   */
  async leave(reason = 'shutdown'): Promise<void> {
    this.stop();
    if (!this.#joined) return;
    const { redis, agent } = this.#o;
    const now = Date.now();
    if (this.#twin && now - this.twinSeenAt <= this.#o.ttlSeconds * 1000) {
      this.#o.log.warn({ otherHost: this.#twin.host, otherPid: this.#twin.pid }, 'not leaving: another live instance with this agent id keeps the presence');
      this.#joined = false;
      return;
    }
    const data = this.#membershipData({ reason });
    const outcome = await withRedisDeadline(
      leaveAgent(redis, {
        id: agent.id,
        den: agent.den,
        instance: this.instance,
        record: JSON.stringify(this.record('offline', this.redisNow())),
        envelope: sealEnvelope(makeEnvelope('agent_offline', data, agent, now), eventChannel('agent_offline'), this.#o.keys),
      }),
      this.#deadlineMs,
    );
    this.#joined = false;
    if (!outcome.left) {
      const rec = parseRecord(outcome.owner);
      this.#o.log.warn({ otherHost: rec.host, otherPid: rec.pid }, 'not leaving: the registry record belongs to another instance with this agent id');
      return;
    }
    this.emit('membership', { type: 'agent_offline', agent: agent.id, den: agent.den });
  }
}

function processAlive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * What made a MULTI fail. ioredis rejects an aborted transaction with
 * `EXECABORT`, which says nothing; the refusals of the queued commands (e.g.
 * `OOM command not allowed when used memory > 'maxmemory'`) are in
 * `previousErrors`. The cause goes first.
 */
export function transactionCause(err: unknown): string {
  const previous = (err as { previousErrors?: unknown } | null)?.previousErrors;
  const base = describeError(err);
  if (!Array.isArray(previous) || previous.length === 0) return base;
  const causes = [...new Set(previous.map((e) => describeError(e)))];
  return `${causes.join('; ')} (${base})`;
}
