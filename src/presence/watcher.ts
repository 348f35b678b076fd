import { EventEmitter } from 'eventemitter3';
import type { Redis } from 'ioredis';
import { describeError } from '../errors.ts';
import type { Logger } from '../log.ts';
import type { AgentInfo } from '../plugins/types.ts';
import { REGISTRY_KEY, agentOfHeartbeatKey } from '../redis/keys.ts';
import { reapAgent, sweepDen } from '../redis/scripts.ts';
import type { RegistryRecord } from './presence.ts';

export type Detector = 'expiry' | 'sweep';

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

interface WatcherEvents {
  down: (down: AgentDown) => void;
  sweep: (result: SweepResult) => void;
}

export interface PeerWatcherOptions {
  readonly redis: Redis;
  readonly agent: AgentInfo;
  /** Empty: own den. ['*']: every den named in the registry. */
  readonly dens: readonly string[];
  readonly sweepIntervalMs: number;
  readonly notifications: 'listen' | 'enable' | 'off';
  readonly log: Logger;
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

  constructor(options: PeerWatcherOptions) {
    super();
    this.#o = options;
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
  }

  #schedule(ms: number): void {
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => {
      void this.sweep().finally(() => {
        if (!this.#stopped) this.#schedule(this.#nextDelay());
      });
    }, ms);
    this.#timer.unref();
  }

  /**
   * With notifications = enable, makes sure the server emits expired-key
   * events (E and x), keeping whatever flags it already has. A refusal —
   * usual on managed Redis — is logged once; the sweep still finds every death.
   */
  async enableNotifications(): Promise<void> {
    if (this.#o.notifications !== 'enable') return;
    try {
      const reply = (await this.#o.redis.config('GET', 'notify-keyspace-events')) as string[];
      const flags = reply[1] ?? '';
      const hasExpired = flags.includes('x') || flags.includes('A');
      if (flags.includes('E') && hasExpired) return;
      const wanted = `${flags}${flags.includes('E') ? '' : 'E'}${hasExpired ? '' : 'x'}`;
      await this.#o.redis.config('SET', 'notify-keyspace-events', wanted);
      this.#o.log.info({ flags: wanted }, 'enabled keyspace expiry notifications');
    } catch (err) {
      if (!this.#notificationsRefused) {
        this.#notificationsRefused = true;
        this.#o.log.warn({ err: describeError(err) }, 'cannot enable keyspace notifications; relying on the sweep alone');
      }
    }
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
      await this.#reap(id, record.den, 'expiry');
    } catch (err) {
      this.#o.log.debug({ agent: id, err: describeError(err) }, 'reap after expiry notification failed; the sweep will retry');
    }
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

  /** One pass over the watched dens: one script call per den, one reap per dead member. */
  async sweep(): Promise<SweepResult | undefined> {
    if (this.#sweeping || this.#o.redis.status !== 'ready') return undefined;
    this.#sweeping = true;
    const t0 = performance.now();
    let members = 0;
    let missing = 0;
    let reaped = 0;
    try {
      const dens = await this.#densToSweep();
      for (const den of dens) {
        const found = await sweepDen(this.#o.redis, den);
        members += found.members;
        for (const id of found.missing) {
          if (id === this.#o.agent.id) continue; // our own beat will put us back
          missing++;
          if (await this.#reap(id, den, 'sweep')) reaped++;
        }
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
    const outcome = await reapAgent(this.#o.redis, { id, den, now, watcher: this.#o.agent, via });
    if (!outcome.reaped) return false;
    this.reaped++;
    const down = (JSON.parse(outcome.envelope) as { data: AgentDown }).data;
    // `peer`, not `agent`: every line already carries this agent's own id as `agent`.
    this.#o.log.warn(
      { peer: down.agent, peerDen: down.den, host: down.host, lastSeen: down.lastSeen, via, silentMs: down.lastSeen === null ? undefined : now - down.lastSeen },
      'agent down: heartbeat expired',
    );
    this.emit('down', down);
    return true;
  }
}
