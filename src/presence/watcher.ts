import { EventEmitter } from 'eventemitter3';
import type { Redis } from 'ioredis';
import { describeError } from '../errors.ts';
import type { Logger } from '../log.ts';
import type { AgentInfo } from '../plugins/types.ts';
import { REGISTRY_KEY, agentOfHeartbeatKey, denMembersKey, keyOfKeyspaceChannel } from '../redis/keys.ts';
import { randomBytes } from 'node:crypto';
import { reapAgent, sampleDen, sweepDen, sweeperLease } from '../redis/scripts.ts';
import type { RegistryRecord } from './presence.ts';

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

export interface SweepResult {
  readonly dens: number;
  readonly members: number;
  readonly missing: number;
  readonly reaped: number;
  readonly ms: number;
}

/** A sweep found so much of a den dead at once that it reaped none of it. */
export interface MassDeathHold {
  readonly den: string;
  readonly members: number;
  readonly missing: number;
}

interface WatcherEvents {
  down: (down: AgentDown) => void;
  sweep: (result: SweepResult) => void;
  /** A mass-death hold started in a den (once per episode). */
  held: (hold: MassDeathHold) => void;
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
  /** Mass-death brake: hold when at least this share of a den's members is dead at once... */
  readonly massDeathShare?: number;
  /** ...and at least this many (0 turns the brake off). */
  readonly massDeathMin?: number;
  /** Ms after which a hold that still stands is released and the dead are reaped (0: hold until it clears). */
  readonly massDeathHoldMs?: number;
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

function parseRecord(raw: string | null | undefined): Partial<RegistryRecord> {
  if (!raw) return {};
  try {
    const value: unknown = JSON.parse(raw);
    return value !== null && typeof value === 'object' ? (value as Partial<RegistryRecord>) : {};
  } catch {
    return {};
  }
}

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
  /** Expired heartbeats waiting for the den check, by den (coalesced, so a burst costs one sweep per den). */
  readonly #pendingExpiry = new Map<string, Set<string>>();
  #expiryTimer: NodeJS.Timeout | undefined;
  /** This watcher's lease token: agent id and a random part, so a twin with the same id is another holder. */
  readonly #token: string;
  /** Dens whose sweeper lease this watcher held at its last tick. */
  readonly #leases = new Set<string>();
  /** Sweeps this watcher ran (one per den per tick it swept). */
  sweeps = 0;
  /** Unix ms until which nobody is reaped (a grace after a reconnect or a failover). */
  #graceUntil = 0;
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
    this.#graceUntil = Math.max(this.#graceUntil, Date.now() + ms);
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
    void this.#fromExpiry(id);
  }

  async #fromExpiry(id: string): Promise<void> {
    try {
      const record = parseRecord(await this.#o.redis.hget(REGISTRY_KEY, id));
      // Without a registry record the den is unknown here; the sweep of its den will find it.
      if (typeof record.den !== 'string' || !this.#watches(record.den)) return;
      let pending = this.#pendingExpiry.get(record.den);
      if (!pending) this.#pendingExpiry.set(record.den, (pending = new Set()));
      pending.add(id);
      // Coalesce a burst of expiries into one check per den, through the same brake as the sweep.
      // The den's sweeper reacts at once; the other members a little later, and only to the ones
      // it has not reaped by then (one SISMEMBER each): one death costs the den O(N) small calls.
      const first = this.#leases.has(record.den) || (this.#o.sweeper ?? 'lease') === 'every';
      this.#expiryTimer ??= setTimeout(
        () => {
          this.#expiryTimer = undefined;
          void this.#reapExpired();
        },
        first ? 10 : 10 + Math.random() * EXPIRY_DEFER_MS,
      ).unref();
    } catch (err) {
      this.#o.log.debug({ agent: id, err: describeError(err) }, 'reap after expiry notification failed; the sweep will retry');
    }
  }

  async #reapExpired(): Promise<void> {
    const batch = [...this.#pendingExpiry];
    this.#pendingExpiry.clear();
    if (this.#stopped || !this.#healthy()) return;
    if (this.#inGrace()) return;
    for (const [den, found] of batch) {
      try {
        let ids = [...found];
        if (!this.#leases.has(den) && (this.#o.sweeper ?? 'lease') === 'lease') {
          const members = (await this.#o.redis.pipeline(ids.map((id) => ['sismember', denMembersKey(den), id])).exec()) ?? [];
          ids = ids.filter((_, i) => members[i]?.[1] === 1);
          if (ids.length === 0) continue;
        }
        // The mass-death check from a sample of the den: O(sample) per watcher per expiry, so
        // N watchers reacting to one death cost O(N) in all, not O(N²) as a full sweep each would.
        const sample = await sampleDen(this.#o.redis, den, this.#o.expirySample ?? 32);
        const missing = sample.sampled === 0 ? 0 : Math.round((sample.missing / sample.sampled) * sample.members);
        if (this.#brake(den, sample.members, Math.max(missing, 0))) continue;
        for (const id of ids) await this.#reap(id, den, 'expiry');
      } catch (err) {
        this.#o.log.debug({ peerDen: den, err: describeError(err) }, 'reap after expiry notification failed; the sweep will retry');
      }
    }
  }

  #inGrace(): boolean {
    return Date.now() < this.#graceUntil;
  }

  /** Local health first: false (and one log line per episode) while our own presence writes fail. */
  #healthy(): boolean {
    const ok = this.#o.healthy?.() ?? true;
    if (ok) {
      if (this.#unhealthyLogged) this.#o.log.info('own presence writes work again; reaping dead peers again');
      this.#unhealthyLogged = false;
      return true;
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
      await this.sweep();
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
    if (mine.length > 0) await this.sweep(mine);
    return Math.max(next, 10);
  }

  /** One pass over the watched dens (or `only` these): one script call per den, one reap per dead member. */
  async sweep(only?: readonly string[]): Promise<SweepResult | undefined> {
    if (this.#sweeping || this.#o.redis.status !== 'ready') return undefined;
    this.#sweeping = true;
    const t0 = performance.now();
    let members = 0;
    let missing = 0;
    let reaped = 0;
    try {
      const dens = only ? [...only] : await this.#densToSweep();
      const healthy = this.#healthy() && !this.#inGrace();
      for (const den of dens) {
        this.sweeps++;
        const found = await sweepDen(this.#o.redis, den);
        members += found.members;
        // Our own beat will put us back.
        const dead = found.missing.filter((id) => id !== this.#o.agent.id);
        missing += dead.length;
        if (!healthy || this.#brake(den, found.members, dead.length)) continue;
        for (const id of dead) if (await this.#reap(id, den, 'sweep')) reaped++;
      }
      const result = { dens: dens.length, members, missing, reaped, ms: performance.now() - t0 };
      this.emit('sweep', result);
      return result;
    } catch (err) {
      this.#o.log.debug({ err: describeError(err) }, 'sweep failed; retrying at the next interval');
      return undefined;
    } finally {
      this.#sweeping = false;
    }
  }

  async #reap(id: string, den: string, via: Detector): Promise<boolean> {
    const now = Date.now();
    const outcome = await reapAgent(this.#o.redis, { id, den, now, watcher: this.#o.agent, via, minAgeMs: this.#o.ttlMs ?? 0 });
    if (!outcome.reaped) {
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
