import { createRequire } from 'node:module';
import type { Registry } from 'prom-client';
import type { EventCounters } from '../bus/counters.ts';
import type { HandlerOutcome } from '../bus/dispatcher.ts';
import { ReadCounter, TallyCounter, TallyHistogram, type Cell, type CustomMetric } from './tally.ts';

type PromClient = typeof import('prom-client');
/** prom-client is loaded when a registry is first needed (/metrics, the status page): a daemon serving neither never loads it. */
const loadPromClient = (): PromClient => createRequire(import.meta.url)('prom-client') as PromClient;

/** Who a daemon is and the settings its alert thresholds scale with (Metrics.describe). */
export interface DaemonInfo {
  agent: string;
  den: string;
  version: string;
  heartbeatTtlSeconds: number;
  heartbeatIntervalSeconds: number;
  memoryWarnRatio: number;
}

/** Read at scrape time, so nothing on the hot path keeps gauges up to date. */
export interface MetricsSource {
  queue(): { waiting: number; running: number };
  lastBeatAt(): number;
  loopDelayMs(): number;
  connected(role: 'command' | 'subscriber'): boolean;
  subscriptionConfirmed(): boolean;
  ready(): boolean;
  denMembers(): Promise<ReadonlyArray<readonly [den: string, members: number]>>;
  redisMemory(): { usedBytes: number; maxBytes: number } | undefined;
  /** Durable entries read and not yet acknowledged, and those running. */
  durable(): { inFlight: number; running: number };
}

/** Dens not watched here (agent_down comes from the network) count under this label. */
const OTHER = 'other';

/**
 * The daemon's Prometheus metrics, in a registry of its own (several daemons
 * can share a process). Counters move on the hot path; gauges are read from
 * the daemon when scraped.
 */
export class Metrics {
  #registry: Registry | undefined;
  /** The cells of the last (plugin, type) a handler call finished for (see handler()). */
  #run: { readonly plugin: string; readonly type: string; readonly label: string; readonly calls: Partial<Record<HandlerOutcome, Cell>>; readonly duration: Cell } | undefined;
  /** The counters and histograms, registered when the registry is made. */
  readonly #custom: CustomMetric[] = [];
  #source: MetricsSource | undefined;
  #info: DaemonInfo | undefined;
  readonly #counters: EventCounters;
  readonly #calls: TallyCounter;
  readonly #duration: TallyHistogram;
  readonly #reconnects: TallyCounter;
  readonly #agentsDown: TallyCounter;
  readonly #reaped: TallyCounter;
  readonly #massDeathHolds: TallyCounter;
  readonly #duplicates: TallyCounter;
  readonly #expiryNotifications: TallyCounter;
  // Durable messages (src/durable): counters by stream kind (inbox, tasks).
  readonly #durableAcked: TallyCounter;
  readonly #durableRedelivered: TallyCounter;
  readonly #durableDead: TallyCounter;
  readonly #durableTrimmed: TallyCounter;
  readonly #durableLatency: TallyHistogram;
  readonly #ghosts: TallyCounter;
  /** Dens that may appear as label values: ours and the ones we watch. */
  readonly #dens = new Set<string>();

  /** `counters`: the daemon's event counters, read when scraped (the same ones stats() reads). */
  constructor(counters: EventCounters) {
    const registry = this.#custom;
    this.#counters = counters;
    // Event counts: read from the counters at scrape time; every series exists from the start (at 0), for
    // the same reason as agentd_agents_down_total (see knowDens).
    const byType = (pick: 'received' | 'dispatched') => () => [...counters.byType()].map(([event, c]) => ({ labels: { event }, value: c[pick] }));
    new ReadCounter({ name: 'agentd_events_received_total', help: 'Valid events read from the subscribed patterns, by event type.', registry, read: byType('received') });
    new ReadCounter({ name: 'agentd_events_dispatched_total', help: 'Events queued for their handlers, by event type.', registry, read: byType('dispatched') });
    new ReadCounter({
      name: 'agentd_events_dropped_total',
      help: 'Events or handler calls dropped, by event type and reason (too_large, not_json, not_object, no_event, forbidden_key, too_deep, intake_error, channel_mismatch, unsigned, bad_signature, unknown_key, stale, replayed, queue_full, evicted, shutdown).',
      registry,
      read: () => [
        ...Object.entries(counters.invalid).map(([reason, value]) => ({ labels: { event: 'invalid', reason }, value })),
        ...[...counters.byType()].flatMap(([event, c]) => Object.entries(c.dropped).map(([reason, value]) => ({ labels: { event, reason }, value }))),
      ],
    });
    new ReadCounter({ name: 'agentd_events_unhandled_total', help: 'Valid events no plugin has a handler for.', registry, read: () => [{ labels: {}, value: counters.unhandled }] });
    this.#calls = new TallyCounter({ name: 'agentd_handler_calls_total', help: 'Finished handler calls, by plugin, event type and outcome (ok, error, timeout, aborted).', labelNames: ['plugin', 'event', 'outcome'], registry });
    this.#duration = new TallyHistogram({
      name: 'agentd_handler_duration_seconds',
      help: 'Handler call duration, by plugin (a timed-out call counts up to its time limit).',
      labelNames: ['plugin'],
      buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30],
      registry,
    });
    this.#reconnects = new TallyCounter({ name: 'agentd_redis_reconnects_total', help: 'Reconnection attempts, by connection.', labelNames: ['conn'], registry });
    this.#agentsDown = new TallyCounter({ name: 'agentd_agents_down_total', help: 'agent_down events seen on the bus (from any watcher), by den (dens not watched here count as "other").', labelNames: ['den'], registry });
    this.#reaped = new TallyCounter({ name: 'agentd_peers_reaped_total', help: 'Dead peers this agent reaped and announced as agent_down.', labelNames: [], registry });
    this.#massDeathHolds = new TallyCounter({ name: 'agentd_mass_death_holds_total', help: 'Mass-death holds this watcher started (most of a den dead at once: reaped nobody), by den.', labelNames: ['den'], registry });
    this.#duplicates = new TallyCounter({ name: 'agentd_duplicate_instances_total', help: 'Beats that found the registry record written by another live instance with this agent id.', labelNames: [], registry });
    this.#expiryNotifications = new TallyCounter({ name: 'agentd_expiry_notifications_total', help: 'Keyspace notifications delivered to the watcher (heartbeat keys only).', labelNames: [], registry });

    this.#durableAcked = new TallyCounter({ name: 'agentd_durable_acked_total', help: 'Durable entries acknowledged after their handlers succeeded, by stream kind (inbox, tasks).', labelNames: ['kind'], registry });
    this.#durableRedelivered = new TallyCounter({ name: 'agentd_durable_redelivered_total', help: 'Durable entries taken over from a dead or stopped member, or left pending from before a restart, by stream kind.', labelNames: ['kind'], registry });
    this.#durableDead = new TallyCounter({ name: 'agentd_durable_dead_lettered_total', help: 'Durable entries moved to a dead-letter stream, by stream kind and reason (failed, unhandled, bad_envelope, redelivered, retention).', labelNames: ['kind', 'reason'], registry });
    this.#durableTrimmed = new TallyCounter({ name: 'agentd_durable_trimmed_total', help: 'Durable entries trimmed (durable.maxLen) before they were acknowledged, by stream kind.', labelNames: ['kind'], registry });
    this.#durableLatency = new TallyHistogram({
      name: 'agentd_durable_ack_latency_seconds',
      help: 'From XADD (the entry id\'s time) to acknowledgement, by stream kind; includes retries and waiting in Redis.',
      labelNames: ['kind'],
      buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 300],
      registry,
    });
    new ReadCounter({
      name: 'agentd_events_untrusted_total',
      help: 'Messages that failed a trust check, by reason (channel_mismatch, unsigned, bad_signature, unknown_key, stale, replayed); dropped unless security.signing=warn lets signature failures through.',
      registry,
      read: () => Object.entries(counters.untrusted).map(([reason, value]) => ({ labels: { reason }, value })),
    });
    this.#ghosts = new TallyCounter({ name: 'agentd_ghosts_removed_total', help: 'Den members without an agentd registry record that this watcher removed quietly (security.signing=require).', labelNames: [], registry });
  }

  /**
   * The gauges, read from the daemon when scraped. Called once, when every
   * part the source reads from exists.
   */
  watch(source: MetricsSource): void {
    this.#source = source;
  }

  /** The registry /metrics serves, made (and prom-client loaded) on first use. */
  get registry(): Registry {
    if (this.#registry !== undefined) return this.#registry;
    const prom = loadPromClient();
    const registry = new prom.Registry();
    this.#registry = registry;
    prom.collectDefaultMetrics({ register: registry });
    for (const m of this.#custom) registry.registerMetric(m as never);
    if (this.#source !== undefined) this.#gauges(prom, registry, this.#source);
    if (this.#info !== undefined) this.#infoGauges(prom, registry, this.#info);
    return registry;
  }

  #gauges(prom: PromClient, registry: Registry, source: MetricsSource): void {
    const { Gauge } = prom;
    const registers = [registry];
    const gauge = (name: string, help: string, read: () => number): void => {
      new Gauge({
        name,
        help,
        registers,
        collect() {
          this.set(read());
        },
      });
    };
    gauge('agentd_queue_waiting', 'Handler calls waiting for a slot.', () => source.queue().waiting);
    gauge('agentd_queue_running', 'Handler calls running.', () => source.queue().running);
    gauge('agentd_heartbeat_age_seconds', 'Seconds since the last heartbeat Redis acknowledged (-1 before the first).', () => {
      const at = source.lastBeatAt();
      return at === 0 ? -1 : (Date.now() - at) / 1000;
    });
    gauge('agentd_event_loop_delay_seconds', 'Longest event-loop delay in the last heartbeat interval.', () => source.loopDelayMs() / 1000);
    gauge('agentd_subscription_confirmed', '1 while the event subscription is confirmed by a probe.', () => (source.subscriptionConfirmed() ? 1 : 0));
    gauge('agentd_ready', '1 while the daemon is ready.', () => (source.ready() ? 1 : 0));
    gauge('agentd_durable_pending', 'Durable entries read by this agent and not yet acknowledged (running, waiting, or waiting for a retry).', () => source.durable().inFlight);
    gauge('agentd_durable_running', 'Durable entries whose handlers are running.', () => source.durable().running);
    new Gauge({
      name: 'agentd_redis_connected',
      help: '1 while the connection is ready, by connection (command, subscriber).',
      labelNames: ['conn'],
      registers,
      collect() {
        this.set({ conn: 'command' }, source.connected('command') ? 1 : 0);
        this.set({ conn: 'subscriber' }, source.connected('subscriber') ? 1 : 0);
      },
    });
    new Gauge({
      name: 'agentd_den_members_online',
      help: 'Members of each watched den, read when scraped.',
      labelNames: ['den'],
      registers,
      async collect() {
        this.reset();
        for (const [den, members] of await source.denMembers().catch(() => [])) this.set({ den }, members);
      },
    });
    new Gauge({
      name: 'agentd_redis_memory_bytes',
      help: 'Redis memory from the last memory check: used, and max (0 without a limit).',
      labelNames: ['kind'],
      registers,
      collect() {
        const m = source.redisMemory();
        if (!m) return;
        this.set({ kind: 'used' }, m.usedBytes);
        this.set({ kind: 'max' }, m.maxBytes);
      },
    });
  }

  /**
   * Who this daemon is and the settings alert thresholds scale with, as
   * constant series: `agentd_agent_info{agent,den,version} 1` (join it on
   * `instance` to filter any metric by den or agent), the heartbeat TTL and
   * interval, and the Redis memory warn ratio. Called once.
   */
  describe(info: DaemonInfo): void {
    this.#info = info;
  }

  #infoGauges(prom: PromClient, registry: Registry, info: DaemonInfo): void {
    const { Gauge } = prom;
    const registers = [registry];
    new Gauge({ name: 'agentd_agent_info', help: 'Always 1; labels name this daemon: agent id, den and agentd version.', labelNames: ['agent', 'den', 'version'], registers }).set(
      { agent: info.agent, den: info.den, version: info.version },
      1,
    );
    new Gauge({ name: 'agentd_heartbeat_ttl_seconds', help: 'The heartbeat.ttl setting: peers report this agent down once its heartbeat is this old.', registers }).set(info.heartbeatTtlSeconds);
    new Gauge({ name: 'agentd_heartbeat_interval_seconds', help: 'The heartbeat.interval setting.', registers }).set(info.heartbeatIntervalSeconds);
    new Gauge({ name: 'agentd_redis_memory_warn_ratio', help: 'The memory.warnRatio setting: the daemon warns when Redis used memory passes this share of maxmemory.', registers }).set(info.memoryWarnRatio);
  }

  /** A finished handler call. Calls come in runs of one plugin and type: their cells are looked up once a run. */
  handler(plugin: string, type: string, seconds: number, outcome: HandlerOutcome): void {
    let run = this.#run;
    if (run === undefined || run.plugin !== plugin || run.type !== type) {
      run = { plugin, type, label: this.#counters.label(type), calls: {}, duration: this.#duration.cell(plugin) };
      this.#run = run;
    }
    (run.calls[outcome] ??= this.#calls.cell(plugin, run.label, outcome)).value++;
    this.#duration.observeIn(run.duration, seconds);
  }

  reconnect(conn: string): void {
    this.#reconnects.inc(conn);
  }

  /** Dens that may appear as label values (the data of agent_down comes from the network). */
  knowDens(dens: Iterable<string>): void {
    for (const d of dens) if (d !== '*') this.#dens.add(d);
    // Exported at 0 from the start: a counter series that first appears at 1 has no increase(),
    // so the first death a fleet sees would never fire AgentdAgentDown.
    for (const d of [...this.#dens, OTHER]) this.#agentsDown.inc(d, undefined, undefined, 0);
  }

  agentDown(den: string): void {
    this.#agentsDown.inc(this.#dens.has(den) ? den : OTHER);
  }

  reaped(): void {
    this.#reaped.inc('');
  }

  massDeathHold(den: string): void {
    this.#massDeathHolds.inc(this.#dens.has(den) ? den : OTHER);
  }

  duplicateInstance(): void {
    this.#duplicates.inc('');
  }

  expiryNotification(): void {
    this.#expiryNotifications.inc('');
  }

  durableAcked(kind: string, latencySeconds: number): void {
    this.#durableAcked.inc(kind);
    this.#durableLatency.observe(latencySeconds, kind);
  }

  durableRedelivered(kind: string): void {
    this.#durableRedelivered.inc(kind);
  }

  durableDeadLettered(kind: string, reason: string): void {
    this.#durableDead.inc(kind, reason);
  }

  durableTrimmed(kind: string, count: number): void {
    this.#durableTrimmed.inc(kind, undefined, undefined, count);
  }

  ghostRemoved(): void {
    this.#ghosts.inc('');
  }
}
