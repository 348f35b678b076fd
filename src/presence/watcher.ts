import { EventEmitter } from 'eventemitter3';
import type { Redis } from 'ioredis';
import { describeError } from '../errors.ts';
import type { Logger } from '../log.ts';
import type { AgentInfo } from '../plugins/types.ts';
import { REGISTRY_KEY, agentOfHeartbeatKey, denMembersKey, heartbeatKey, keyOfKeyspaceChannel } from '../redis/keys.ts';
import { randomBytes } from 'node:crypto';
import { reapAgent, sampleDen, sweepDen, sweeperLease } from '../redis/scripts.ts';
import { parseRecord } from './record.ts';
import type { KeyRing } from '../security/keys.ts';

export type Detector = 'expiry' | 'sweep';

/** Longest a member that does not hold the den's sweeper lease waits before it checks an expiry itself, ms. */
export const EXPIRY_DEFER_MS = 250;

/** Data of an `agent_down` event. */
export interface AgentDown {
  readonly agent: string;
  readonly den: string;
  readonly host: string | null;
  /** Unix ms of the dead agent's last beat, from its registry record (null when it had none). */
  readonly lastSeen: number | null;
  /** Id of the agent whose watcher reaped it. */
  readonly detectedBy: string;
  /** Which detector saw it first: a keyspace expiry notification or the periodic sweep. */
  readonly via: Detector;
}

/** A sweep found so much of a den dead at once that it reaped none of it. */
export interface MassDeathHold {
  readonly den: string;
  readonly members: number;
  readonly missing: number;
}

interface WatcherEvents {
  down: (down: AgentDown) => void;
  /** A mass-death hold started in a den (once per episode). */
  held: (hold: MassDeathHold) => void;
  /** A den member without an agentd registry record was removed quietly (no agent_down). */
  ghost: (ghost: { readonly id: string; readonly den: string }) => void;
}

export interface PeerWatcherOptions {
  readonly redis: Redis;
  readonly agent: AgentInfo;
  /** Empty: own den. ['*']: every den named in the registry. */
  readonly dens: readonly string[];
  readonly sweepIntervalMs: number;
  readonly notifications: 'listen' | 'enable' | 'off';
  readonly log: Logger;
  /** Heartbeat TTL, ms: a peer's registry lastSeen must be this old too before it is reaped. */
  readonly ttlMs?: number;
  /**
   * Local health first (memberlist's Lifeguard): while this returns false —
   * our own presence writes are failing — the watcher reaps nobody.
   */
  readonly healthy?: () => boolean;
  /**
   * How long, ms, our own beats have landed without a failure. The watcher
   * reaps only once this reaches ttlMs: after a Redis outage, freeze or OOM a
   * live peer needs up to one TTL of working Redis to beat again.
   */
  readonly steadyMs?: () => number;
  /** Unix ms in Redis's clock (the `now` of a reap, compared with lastSeen, which agentd writes in Redis time). */
  readonly now?: () => number;
  /** Mass-death brake: hold when at least this share of a den's members is dead at once... */
  readonly massDeathShare?: number;
  /** ...and at least this many (0 turns the brake off). */
  readonly massDeathMin?: number;
  /** Ms after which a hold that still stands is released and the dead are reaped (0: hold until it clears). */
  readonly massDeathHoldMs?: number;
  /** Sign the agent_down this watcher publishes. */
  readonly keys?: KeyRing;
  /** No ghosts: remove den members without an agentd registry record quietly instead of announcing them. */
  readonly ghosts?: boolean;
  /**
   * Who sweeps: 'lease' (default) — only the holder of the den's sweeper
   * lease, so a den costs one sweep per interval whatever its size; 'every' —
   * every watcher sweeps every interval (the old behaviour, O(N²) per den).
   */
  readonly sweeper?: 'lease' | 'every';
  /** Lease length, ms (default 3 × sweepIntervalMs): a dead holder is replaced within it. */
  readonly leaseMs?: number;
  /** Members sampled by the expiry path's mass-death check (default 32; a smaller den is counted exactly). */
  readonly expirySample?: number;
}

/** Distinct agents an expiry check waits for at most (notifications can be spoofed; the sweep is the backstop). */
const MAX_PENDING_EXPIRIES = 1_000;
/** Longer ids in a notification are ignored (agentd's own are at most 128 characters; the sweep sees every id). */
const MAX_NOTIFIED_ID_LENGTH = 1_024;

/**
 * Finds dead peers two ways — keyspace expiry notifications (fast, but lossy)
 * and a periodic sweep (slower, never misses) — and hands both to one atomic
 * reap, so each death is reported once however many watchers see it.
 */
export class PeerWatcher extends EventEmitter<WatcherEvents> {
  readonly #o: PeerWatcherOptions;
  #timer: NodeJS.Timeout | undefined;
  #sweeping = false;
  #stopped = true;
  #notificationsRefused = false;
  /** Agents reaped by this watcher. */
  reaped = 0;
  /** Keyspace notifications delivered to this watcher (only heartbeat keys' should ever arrive). */
  notificationsReceived = 0;
  /** Dens currently held by the mass-death brake, with the time the hold started. */
  readonly #held = new Map<string, number>();
  #unhealthyLogged = false;
  /**
   * Agents whose heartbeat expiry was notified, waiting for one check (coalesced: a burst
   * costs one registry read and one sweep per den). Anyone can PUBLISH on a keyspace
   * channel, so a notification is only a hint: the set is bounded, one check runs at a time.
   */
  readonly #pendingExpiry = new Set<string>();
  /**
   * When (performance.now()) this watcher first saw each dead-looking member's
   * heartbeat missing, by `den\nid`: the second signal for members without a
   * credible lastSeen (no record, or a registry deleted or evicted).
   */
  readonly #missingSince = new Map<string, number>();
  #expiryTimer: NodeJS.Timeout | undefined;
  #expiryChecking = false;
  /** This watcher's lease token: agent id and a random part, so a twin with the same id is another holder. */
  readonly #token: string;
  /** Dens whose sweeper lease this watcher held at its last tick. */
  readonly #leases = new Set<string>();
  /** Sweeps this watcher ran (one per den per tick it swept). */
  sweeps = 0;
  /** Unix ms until which nobody is reaped (a grace after a reconnect or a failover). */
  #graceUntil = 0;
  /** Unix ms of the last reconnect's grace request, and of the first of its episode. */
  #lastGraceAt = Number.NEGATIVE_INFINITY;
  #graceEpisodeAt = 0;
  #leaseRefused = false;

  constructor(options: PeerWatcherOptions) {
    super();
    this.#o = options;
    this.#token = `${options.agent.id} ${randomBytes(6).toString('hex')}`;
  }

  get #leaseMs(): number {
    return this.#o.leaseMs ?? 3 * this.#o.sweepIntervalMs;
  }

  /** Dens whose sweeper lease this watcher holds (as of its last tick). */
  get leases(): readonly string[] {
    return [...this.#leases];
  }

  /**
   * Reaps nobody for `ms` from now (a reconnect or a failover: the promoted
   * replica may lack the latest beats; every live agent beats again within
   * one heartbeat interval of its own reconnect).
   */
  graceFor(ms: number): void {
    const now = Date.now();
    // A reconnect within one grace of the last starts no new episode: a reconnect storm (CLIENT
    // KILL every second) extends the grace to at most max(ttl, ms) from its first reconnect, then
    // reaping goes on while it lasts (every live agent has beaten on each of its reconnects).
    if (now - this.#lastGraceAt >= ms) this.#graceEpisodeAt = now;
    this.#lastGraceAt = now;
    const cap = this.#graceEpisodeAt + Math.max(this.#o.ttlMs ?? 0, ms);
    this.#graceUntil = Math.max(this.#graceUntil, Math.min(now + ms, cap));
  }

  get #allDens(): boolean {
    return this.#o.dens.length === 1 && this.#o.dens[0] === '*';
  }

  #watches(den: string): boolean {
    if (this.#allDens) return true;
    return this.#o.dens.length === 0 ? den === this.#o.agent.den : this.#o.dens.includes(den);
  }

  start(): void {
    this.#stopped = false;
    this.#schedule(this.#nextDelay());
  }

  /** The interval ±10 %: watchers started together do not all sweep at the same instant. */
  #nextDelay(): number {
    return this.#o.sweepIntervalMs * (0.9 + Math.random() * 0.2);
  }

  stop(): void {
    this.#stopped = true;
    clearTimeout(this.#timer);
    clearTimeout(this.#expiryTimer);
    this.#expiryTimer = undefined;
  }

  /** Gives up the leases this watcher holds (graceful stop), so another member takes over at once. */
  async releaseLeases(): Promise<void> {
    const dens = [...this.#leases];
    this.#leases.clear();
    if (this.#o.redis.status !== 'ready') return;
    await Promise.all(dens.map((den) => sweeperLease(this.#o.redis, den, this.#token, 0).catch(() => undefined)));
  }

  #schedule(ms: number): void {
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => {
      void this.tick().then(
        (next) => {
          if (!this.#stopped) this.#schedule(next);
        },
        () => {
          if (!this.#stopped) this.#schedule(this.#nextDelay());
        },
      );
    }, ms);
    this.#timer.unref();
  }

  /**
   * With notifications = enable, makes sure the server emits keyspace
   * notifications for expired keys (K and x), keeping whatever flags it
   * already has. A refusal — usual on managed Redis — is logged once; the
   * sweep still finds every death.
   */
  async enableNotifications(): Promise<void> {
    if (this.#o.notifications !== 'enable') return;
    try {
      const reply = (await this.#o.redis.config('GET', 'notify-keyspace-events')) as string[];
      const flags = reply[1] ?? '';
      const hasExpired = flags.includes('x') || flags.includes('A');
      if (flags.includes('K') && hasExpired) return;
      const wanted = `${flags}${flags.includes('K') ? '' : 'K'}${hasExpired ? '' : 'x'}`;
      await this.#o.redis.config('SET', 'notify-keyspace-events', wanted);
      this.#o.log.info({ flags: wanted }, 'enabled keyspace expiry notifications');
    } catch (err) {
      if (!this.#notificationsRefused) {
        this.#notificationsRefused = true;
        this.#o.log.warn({ err: describeError(err) }, 'cannot enable keyspace notifications; relying on the sweep alone');
      }
    }
  }

  /** Listener for the heartbeat keyspace pattern of database `db`: the channel names the key, the message is the event. */
  onKeyspace(db: number, channel: string, event: string): void {
    this.notificationsReceived++;
    if (event !== 'expired') return;
    const key = keyOfKeyspaceChannel(db, channel);
    if (key !== undefined) this.onExpired(key);
  }

  /** Listener for the expired-keys channel: the message is the key that expired. */
  onExpired(key: string): void {
    const id = agentOfHeartbeatKey(key);
    if (id === undefined || id === this.#o.agent.id || this.#stopped) return;
    // A channel name can be 512 MB: a huge "id" would only go back to Redis in the HMGET.
    if (id.length > MAX_NOTIFIED_ID_LENGTH) return;
    // Past the bound, the sweep finds whoever really died.
    if (this.#pendingExpiry.size >= MAX_PENDING_EXPIRIES && !this.#pendingExpiry.has(id)) return;
    this.#pendingExpiry.add(id);
    this.#scheduleExpiryCheck();
  }

  #scheduleExpiryCheck(): void {
    if (this.#expiryTimer !== undefined || this.#expiryChecking) return;
    // The den's sweeper reacts at once; the other members a little later, and only to the ones
    // it has not reaped by then (one SISMEMBER each): one death costs the den O(N) small calls.
    const first = this.#leases.size > 0 || (this.#o.sweeper ?? 'lease') === 'every';
    this.#expiryTimer = setTimeout(
      () => {
        this.#expiryTimer = undefined;
        void this.#reapExpired();
      },
      first ? 10 : 10 + Math.random() * EXPIRY_DEFER_MS,
    ).unref();
  }

  async #reapExpired(): Promise<void> {
    const ids = [...this.#pendingExpiry];
    this.#pendingExpiry.clear();
    if (ids.length === 0 || this.#stopped || !this.#healthy()) return;
    this.#expiryChecking = true;
    try {
      // Without a registry record the den is unknown here; the sweep of its den will find it.
      const records = await this.#o.redis.hmget(REGISTRY_KEY, ...ids);
      const byDen = new Map<string, Set<string>>();
      ids.forEach((id, i) => {
        const den = parseRecord(records[i]).den;
        if (typeof den !== 'string' || !this.#watches(den)) return;
        let set = byDen.get(den);
        if (!set) byDen.set(den, (set = new Set()));
        set.add(id);
      });
      for (const [den, pending] of byDen) {
        try {
          // Only notified members still in the den whose heartbeat key is really gone (a
          // notification is a hint; the den's sweeper may have reaped them already).
          const ids = [...pending];
          const checks = (await this.#o.redis.pipeline(ids.flatMap((id) => [['sismember', denMembersKey(den), id], ['exists', heartbeatKey(id)]])).exec()) ?? [];
          const gone = ids.filter((_, i) => checks[2 * i]?.[1] === 1 && checks[2 * i + 1]?.[1] === 0);
          if (gone.length === 0) continue;
          this.#trackMissing(den, gone, false);
          // The mass-death check from a sample of the den: O(sample) per watcher per expiry, so
          // N watchers reacting to one death cost O(N) in all, not O(N²) as a full sweep each would.
          const sample = await sampleDen(this.#o.redis, den, this.#o.expirySample ?? 32);
          const missing = sample.sampled === 0 ? 0 : Math.round((sample.missing / sample.sampled) * sample.members);
          // Health again after the round trips: Redis may have been frozen while they were in flight.
          if (!this.#healthy() || this.#inGrace() || this.#brake(den, sample.members, Math.max(missing, gone.length))) continue;
          for (const id of gone) if (this.#healthy()) await this.#reap(id, den, 'expiry');
        } catch (err) {
          this.#o.log.debug({ peerDen: den, err: describeError(err) }, 'reap after expiry notification failed; the sweep will retry');
        }
      }
    } catch (err) {
      this.#o.log.debug({ agents: ids.length, err: describeError(err) }, 'reap after expiry notification failed; the sweep will retry');
    } finally {
      this.#expiryChecking = false;
      if (this.#pendingExpiry.size > 0 && !this.#stopped) this.#scheduleExpiryCheck();
    }
  }

  #inGrace(): boolean {
    return Date.now() < this.#graceUntil;
  }

  /** Local health first: false (and one log line per episode) while our own presence writes fail. */
  #healthy(): boolean {
    const ok = this.#o.healthy?.() ?? true;
    if (ok) {
      if (this.#unhealthyLogged) this.#o.log.info({ afterMs: this.#o.ttlMs ?? 0 }, 'own presence writes work again; reaping dead peers again after one heartbeat.ttl of steady beats');
      this.#unhealthyLogged = false;
      // Probation: peers get one TTL of working Redis to beat again before anyone is reaped.
      return (this.#o.steadyMs?.() ?? Infinity) >= (this.#o.ttlMs ?? 0);
    }
    if (!this.#unhealthyLogged) {
      this.#unhealthyLogged = true;
      this.#o.log.warn('not reaping anyone: this agent\'s own heartbeat is failing or late, so it cannot tell dead peers from its own trouble');
    }
    return false;
  }

  /**
   * The mass-death brake: true (hold, reap nobody in this den) when at least
   * massDeathShare of the den's members, and at least massDeathMin of them,
   * are dead at once — more likely a fault of Redis or of the network than a
   * real mass death. Logged and counted once per episode; released when the
   * share drops, or after massDeathHoldMs.
   */
  #brake(den: string, members: number, missing: number): boolean {
    const share = this.#o.massDeathShare ?? 0.55;
    const min = this.#o.massDeathMin ?? 3;
    const trips = min > 0 && missing >= min && members > 0 && missing / members >= share;
    const since = this.#held.get(den);
    if (!trips) {
      if (since !== undefined) {
        this.#held.delete(den);
        this.#o.log.info({ peerDen: den, members, missing }, 'mass death hold released: the share of dead members is below the brake');
      }
      return false;
    }
    const now = Date.now();
    if (since === undefined) {
      this.#held.set(den, now);
      this.#o.log.warn(
        { peerDen: den, members, missing, share, min },
        'mass death: most of the den looks dead at once; holding the reap (a Redis or network fault is likelier than a mass death)',
      );
      this.emit('held', { den, members, missing });
      return true;
    }
    const holdMs = this.#o.massDeathHoldMs ?? 0;
    if (holdMs > 0 && now - since >= holdMs) {
      if (since >= 0) this.#o.log.warn({ peerDen: den, members, missing, heldMs: now - since }, 'mass death hold expired; reaping');
      this.#held.set(den, -1); // released by time: reap from now on, until the episode ends
      return false;
    }
    return since < 0 ? false : true;
  }

  /** Notes when each member of `dead` was first seen missing; a full sweep of the den also forgets the others. */
  #trackMissing(den: string, dead: readonly string[], complete: boolean): void {
    const now = performance.now();
    const keys = new Set(dead.map((id) => `${den}\n${id}`));
    if (complete) for (const k of this.#missingSince.keys()) if (k.startsWith(`${den}\n`) && !keys.has(k)) this.#missingSince.delete(k);
    for (const k of keys) if (!this.#missingSince.has(k)) this.#missingSince.set(k, now);
  }

  async #densToSweep(): Promise<string[]> {
    if (!this.#allDens) return this.#o.dens.length === 0 ? [this.#o.agent.den] : [...this.#o.dens];
    const dens = new Set<string>([this.#o.agent.den]);
    for (const raw of await this.#o.redis.hvals(REGISTRY_KEY)) {
      const den = parseRecord(raw).den;
      if (typeof den === 'string') dens.add(den);
    }
    return [...dens];
  }

  /**
   * One timer turn: with sweeper 'lease', takes or renews the lease of each
   * watched den and sweeps the dens it holds; with 'every', sweeps them all.
   * Resolves with the ms until the next turn: a watcher that holds no lease
   * comes back when the holder's lease would lapse (so a dead holder is
   * replaced within the lease), one that holds one after the sweep interval.
   */
  async tick(): Promise<number> {
    if (this.#o.redis.status !== 'ready') return this.#nextDelay();
    if ((this.#o.sweeper ?? 'lease') === 'every') {
      await this.#sweep();
      return this.#nextDelay();
    }
    const dens = await this.#densToSweep();
    const mine: string[] = [];
    let next = this.#leaseMs;
    // An unhealthy watcher neither takes nor keeps a lease: a healthy member takes over.
    const healthy = this.#healthy();
    for (const den of dens) {
      if (!healthy) {
        if (this.#leases.delete(den)) await sweeperLease(this.#o.redis, den, this.#token, 0).catch(() => undefined);
        continue;
      }
      const lease = await sweeperLease(this.#o.redis, den, this.#token, this.#leaseMs).catch((err: unknown) => {
        // An ACL without the lease key or its commands (NOPERM): sweep every interval, as before the lease.
        if (!/\bNOPERM\b/.test(describeError(err))) throw err;
        if (!this.#leaseRefused) {
          this.#leaseRefused = true;
          this.#o.log.warn({ peerDen: den, err: describeError(err) }, 'cannot use the sweeper lease (NOPERM); sweeping every interval instead (quadratic in the den size): allow ~den:*:sweeper and +get +pttl +srandmember');
        }
        return { held: true as const, ms: this.#leaseMs };
      });
      if (lease.held) {
        if (!this.#leases.has(den)) this.#o.log.debug({ peerDen: den }, 'took the sweeper lease of the den');
        this.#leases.add(den);
        mine.push(den);
        next = Math.min(next, this.#nextDelay());
      } else {
        this.#leases.delete(den);
        // Not ours: a holder that beats us renews it; back when it would lapse (plus jitter).
        const lapse = lease.pttlMs > 0 ? lease.pttlMs : this.#o.sweepIntervalMs;
        next = Math.min(next, lapse + Math.random() * 0.1 * this.#o.sweepIntervalMs);
      }
    }
    for (const den of [...this.#leases]) if (!dens.includes(den)) this.#leases.delete(den);
    if (mine.length > 0) await this.#sweep(mine);
    return Math.max(next, 10);
  }

  /** One pass over the watched dens (or `only` these): one script call per den, one reap per dead member. */
  async #sweep(only?: readonly string[]): Promise<void> {
    if (this.#sweeping || this.#o.redis.status !== 'ready') return;
    this.#sweeping = true;
    try {
      const dens = only ? [...only] : await this.#densToSweep();
      for (const den of dens) {
        this.sweeps++;
        const found = await sweepDen(this.#o.redis, den);
        // Our own beat will put us back.
        const dead = found.missing.filter((id) => id !== this.#o.agent.id);
        this.#trackMissing(den, dead, true);
        // Health checked after the round trip: a sweep sent just before Redis froze answers only after it resumes.
        if (!this.#healthy() || this.#inGrace() || this.#brake(den, found.members, dead.length)) continue;
        for (const id of dead) if (this.#healthy()) await this.#reap(id, den, 'sweep');
      }
    } catch (err) {
      this.#o.log.debug({ err: describeError(err) }, 'sweep failed; retrying at the next interval');
    } finally {
      this.#sweeping = false;
    }
  }

  async #reap(id: string, den: string, via: Detector): Promise<boolean> {
    const now = this.#o.now?.() ?? Date.now();
    const since = this.#missingSince.get(`${den}\n${id}`);
    const missingForMs = since === undefined ? 0 : performance.now() - since;
    const outcome = await reapAgent(this.#o.redis, {
      id,
      den,
      now,
      watcher: this.#o.agent,
      via,
      minAgeMs: this.#o.ttlMs ?? 0,
      missingForMs,
      ...(this.#o.keys ? { keys: this.#o.keys } : {}),
      ...(this.#o.ghosts ? { ghosts: true } : {}),
    });
    if (outcome.reaped) this.#missingSince.delete(`${den}\n${id}`);
    if (!outcome.reaped) {
      if (outcome.reason === 'ghost') {
        this.#o.log.warn({ peer: id.slice(0, 128), peerDen: den }, 'removed a den member that has no registry record written by agentd (a ghost); not announced as agent_down');
        this.emit('ghost', { id, den });
      }
      if (outcome.reason === 'fresh') this.#o.log.debug({ peer: id, peerDen: den }, 'heartbeat key gone but the registry says the peer beat recently: deleted, not expired; not a death');
      return false;
    }
    this.reaped++;
    const down = (JSON.parse(outcome.envelope) as { data: AgentDown }).data;
    // `peer`, not `agent`: every line already carries this agent's own id as `agent`.
    this.#o.log.warn(
      {
        peer: down.agent,
        peerDen: down.den,
        host: down.host,
        lastSeen: down.lastSeen,
        via,
        silentMs: down.lastSeen === null ? undefined : now - down.lastSeen,
        ...(outcome.record === 'kept' ? { recordKept: 'the registry record cannot be rewritten losslessly; left as it was' } : {}),
      },
      'agent down: heartbeat expired',
    );
    this.emit('down', down);
    return true;
  }
}
