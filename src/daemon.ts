import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { EventEmitter } from 'eventemitter3';
import { Dispatcher, type DrainResult, type DropReason, type HandlerFailedInfo } from './bus/dispatcher.ts';
import { Intake, type IntakeReason } from './bus/intake.ts';
import { EventCounters } from './bus/counters.ts';
import { publishEvent } from './bus/publish.ts';
import { EventSubscriber } from './bus/subscriber.ts';
import { exactEventChannels } from './bus/channels.ts';
import type { AgentdConfig } from './config/schema.ts';
import { AgentdError, describeError, isAgentdError } from './errors.ts';
import { createLogger, type Logger } from './log.ts';
import { loadPlugins, validatePlugin, type LoadedPlugin } from './plugins/loader.ts';
import { PluginHost } from './plugins/host.ts';
import type { AgentInfo, Plugin, PluginOptions } from './plugins/types.ts';
import { Metrics } from './http/metrics.ts';
import type { HttpEndpoint, Readiness } from './http/server.ts';
import { DenEventRing, StatusCollector, type DurableStatus } from './http/status.ts';
import { streamDepth } from './durable/streams.ts';
import { AgentMemory } from './memory/memory.ts';
import { MemoryMonitor } from './memory/monitor.ts';
import { LoopMonitor } from './presence/loop-monitor.ts';
import { Presence, type BeatResult, type MembershipChange } from './presence/presence.ts';
import { PeerWatcher, type AgentDown } from './presence/watcher.ts';
import { Durable } from './durable/durable.ts';
import { Connections, createClient, redisDb, redisOptions, type ConnectionStateChange } from './redis/connection.ts';
import { DAEMON_COMMANDS, preflight } from './redis/preflight.ts';
import { deadLetterKey, denMembersKey, denTasksKey, heartbeatKeyspacePattern, inboxKey, probeChannel } from './redis/keys.ts';
import { VERSION } from './version.ts';
import { orAfter } from './deadline.ts';
import { loadKeys, type KeyRing } from './security/keys.ts';
import { Verifier } from './security/signing.ts';
import { checkTlsRequired } from './security/tls-policy.ts';

export type DaemonState = 'idle' | 'starting' | 'ready' | 'degraded' | 'closing' | 'closed';

export interface EventDroppedInfo {
  /** Bad input reasons (and intake_error) come from intake; the others from the handler queue. */
  readonly reason: IntakeReason | DropReason;
  readonly channel: string;
  /** The event type, when the message got far enough to have one. */
  readonly event?: string;
  readonly bytes?: number;
}

export interface CloseResult {
  /** Every queued and running handler call finished within the drain timeout. */
  readonly drained: boolean;
  /** What was left when the drain timeout hit. */
  readonly left?: Omit<DrainResult, 'drained'>;
  /** Steps that failed while closing (each failure is logged; later steps still run). */
  readonly errors: readonly string[];
}

export interface DaemonEvents {
  /** Ready: plugins set up, subscription confirmed, presence written. `again` after a recovery. */
  ready: (info: { readonly again: boolean }) => void;
  /** No longer fully working (connection lost, subscription lost); `ready` follows on recovery. */
  degraded: (info: { readonly reason: string }) => void;
  eventDropped: (info: EventDroppedInfo) => void;
  handlerFailed: (info: HandlerFailedInfo) => void;
  connection: (change: ConnectionStateChange) => void;
  membership: (change: MembershipChange) => void;
  /** This agent's watcher reaped a dead peer and published agent_down. */
  peerDown: (down: AgentDown) => void;
  heartbeat: (result: BeatResult) => void;
  closed: (result: CloseResult) => void;
}

export interface DaemonStats {
  /** Messages read from subscribed patterns (valid or not). */
  readonly received: number;
  readonly invalid: Readonly<Record<IntakeReason, number>>;
  readonly dispatched: number;
  readonly unhandled: number;
  readonly completed: number;
  readonly failed: number;
  readonly timedOut: number;
  readonly dropped: Readonly<Record<DropReason, number>>;
  readonly waiting: number;
  readonly running: number;
  readonly lastBeatAt: number;
  /** Dead peers this agent reaped. */
  readonly reaped: number;
  /** Worst event-loop delay seen, in ms. */
  readonly loopDelayMaxMs: number;
}

export type InlinePlugin = Plugin<PluginOptions> | { readonly plugin: Plugin<PluginOptions>; readonly options?: PluginOptions };

export interface DaemonOptions {
  readonly config: AgentdConfig;
  /** Logger to use; one is made from config.log when absent. */
  readonly logger?: Logger;
  /** Plugin objects from code, set up after the ones in config.plugins. */
  readonly plugins?: readonly InlinePlugin[];
}

/**
 * The agent daemon: one per agent VM. Embeddable — `start()` and `close()`
 * do all the work and nothing here touches `process` (signals and exit codes
 * belong to the CLI entry).
 */
export class AgentDaemon extends EventEmitter<DaemonEvents> {
  readonly config: AgentdConfig;
  readonly log: Logger;
  readonly agent: AgentInfo;
  readonly #connections: Connections;
  readonly #dispatcher: Dispatcher;
  readonly #presence: Presence;
  readonly #subscriber: EventSubscriber;
  readonly #watcher: PeerWatcher | undefined;
  readonly #loop: LoopMonitor;
  readonly #memoryMonitor: MemoryMonitor;
  /** Durable messages: inbox, den tasks, request/reply (src/durable). */
  readonly durable: Durable;
  /** Prometheus metrics of this daemon (served on /metrics when http.port is set). */
  readonly metrics: Metrics;
  #http: HttpEndpoint | undefined;
  /** Membership events of this den, for the status page. */
  readonly #denEvents: DenEventRing;
  /** This agent's short-term memory (also each plugin's `ctx.memory`). */
  readonly memory: AgentMemory;
  readonly #inline: readonly InlinePlugin[];
  readonly #startAbort = new AbortController();
  readonly #intake: Intake;
  /** Event counts: intake and the dispatcher move them, stats() and /metrics read them. */
  readonly #counters: EventCounters;
  readonly #probeChannel: string;
  /** Signing keys (security.signing warn or require); never logged. */
  readonly #keys: KeyRing | undefined;
  #plugins: PluginHost | undefined;
  #state: DaemonState = 'idle';
  #everReady = false;
  #degradedBy: string | undefined;
  #closing: Promise<CloseResult> | undefined;
  /** Settles when start() has stopped (done, failed or stopped at a checkpoint by close()). */
  #starting: Promise<unknown> | undefined;
  /** The last beat landed: a reconnect alone (e.g. onto a server now a replica) does not make us ready. */
  #lastBeatOk = true;
  #refusedAt = 0;
  #refusedBy: string | undefined;

  constructor(options: DaemonOptions) {
    super();
    const { config } = options;
    this.config = config;
    this.agent = Object.freeze({ id: config.agent.id, den: config.agent.den });
    this.log = options.logger ?? createLogger({ level: config.log.level, base: { agent: this.agent.id, den: this.agent.den } });
    this.#inline = options.plugins ?? [];
    this.#probeChannel = probeChannel(this.agent.id, randomBytes(6).toString('hex'));

    // The parts, each built after what it uses; their events are wired in #wire().
    checkTlsRequired(config);
    this.#keys = config.security.signing === 'off' ? undefined : loadKeys(config.security.keysFile);
    this.#connections = new Connections(config, this.log);
    this.#counters = new EventCounters();
    this.metrics = new Metrics(this.#counters);
    const { checkInterval, warnRatio, ...memoryOptions } = config.memory;
    this.memory = new AgentMemory(this.#connections.command, this.agent.id, memoryOptions);
    this.#memoryMonitor = new MemoryMonitor(this.#connections.command, { intervalSeconds: checkInterval, warnRatio, log: this.log.child({ component: 'memory' }) });
    this.#loop = new LoopMonitor((config.heartbeat.ttl - config.heartbeat.interval) * 1000, this.log.child({ component: 'presence' }));
    const metrics = this.metrics;

    this.#dispatcher = new Dispatcher({
      concurrency: config.queue.concurrency,
      maxWaiting: config.queue.max,
      maxWaitingBytes: config.queue.maxBytes,
      overflow: config.queue.overflow,
      handlerTimeoutMs: config.queue.handlerTimeoutMs,
      log: this.log.child({ component: 'dispatch' }),
      counters: this.#counters,
      onHandlerDone: (plugin, event, seconds, outcome) => metrics.handler(plugin, event, seconds, outcome),
    });

    const durable = new Durable({
      redis: this.#connections.command,
      agent: this.agent,
      config,
      log: this.log.child({ component: 'durable' }),
      ...(this.#keys ? { keys: this.#keys } : {}),
      hooks: {
        acked: (kind, seconds) => metrics.durableAcked(kind, seconds),
        redelivered: (kind) => metrics.durableRedelivered(kind),
        deadLettered: (kind, reason) => metrics.durableDeadLettered(kind, reason),
        trimmed: (kind, n) => metrics.durableTrimmed(kind, n),
        handlerDone: (plugin, event, seconds, outcome) => metrics.handler(plugin, event, seconds, outcome),
      },
    });
    this.durable = durable;

    const denEvents = new DenEventRing(this.agent.den);
    this.#denEvents = denEvents;
    this.#intake = new Intake({
      probeChannel: this.#probeChannel,
      maxBytes: config.events.maxBytes,
      maxDepth: config.events.maxDepth,
      dispatcher: this.#dispatcher,
      counters: this.#counters,
      log: this.log.child({ component: 'intake' }),
      onDropped: (d) => this.emit('eventDropped', d),
      onMembership: (event) => {
        denEvents.observe(event);
        if (event.event !== 'agent_down') return;
        const data = event.data as { den?: unknown; agent?: unknown } | null;
        metrics.agentDown(typeof data?.den === 'string' ? data.den : 'unknown');
        // A peer's watcher reaped someone: requests waiting on that agent fail now, not at their timeout.
        durable.peerDown(String(data?.agent));
      },
      security: {
        signing: config.security.signing,
        channelCheck: config.security.channelCheck,
        ...(this.#keys ? { verifier: new Verifier({ keys: this.#keys, toleranceMs: config.security.tolerance * 1000 }) } : {}),
      },
    });

    const intake = this.#intake;
    const channels = new Map(config.durable.enabled ? durable.doorbells() : []);
    const subscriber = new EventSubscriber({
      subscriber: this.#connections.subscriber,
      command: this.#connections.command,
      patterns: config.events.patterns,
      probeChannel: this.#probeChannel,
      ...(channels.size > 0 ? { channels } : {}),
      log: this.log.child({ component: 'subscriber' }),
      probeIntervalMs: config.events.probeInterval * 1000,
      probeTimeoutMs: config.events.probeTimeoutMs,
      onMessage: intake.onMessage,
      quiet: () => this.#connections.flapping,
    });
    this.#subscriber = subscriber;

    this.#presence = new Presence({
      redis: this.#connections.command,
      agent: this.agent,
      host: hostname(),
      pid: process.pid,
      version: VERSION,
      ttlSeconds: config.heartbeat.ttl,
      intervalMs: config.heartbeat.interval * 1000,
      log: this.log.child({ component: 'presence' }),
      beforeRejoin: () => subscriber.whenConfirmed(2_000),
      ...(this.#keys ? { keys: this.#keys } : {}),
    });
    const presence = this.#presence;

    if (config.watch.enabled) {
      const watcher = new PeerWatcher({
        redis: this.#connections.command,
        agent: this.agent,
        dens: config.watch.dens,
        sweepIntervalMs: config.watch.sweepInterval * 1000,
        notifications: config.watch.notifications,
        log: this.log.child({ component: 'watcher' }),
        ttlMs: config.heartbeat.ttl * 1000,
        healthy: () => presence.healthy,
        steadyMs: () => presence.steadyMs,
        now: () => presence.redisNow(),
        massDeathShare: config.watch.massDeathShare,
        massDeathMin: config.watch.massDeathMin,
        massDeathHoldMs: config.watch.massDeathHold * 1000,
        ...(this.#keys ? { keys: this.#keys } : {}),
        ghosts: config.security.signing === 'require',
        sweeper: config.watch.sweeper,
      });
      this.#watcher = watcher;
      // Heartbeat keys' keyspace notifications only: the expiries of every other key never reach us.
      if (config.watch.notifications !== 'off') {
        const db = redisDb(config.redis.url);
        subscriber.listenPattern(heartbeatKeyspacePattern(db), (channel, event) => {
          metrics.expiryNotification();
          watcher.onKeyspace(db, channel, event);
        });
      }
    }

    metrics.watch({
      queue: () => ({ waiting: this.#dispatcher.waiting, running: this.#dispatcher.running }),
      lastBeatAt: () => presence.lastBeatAt,
      loopDelayMs: () => this.#loop.last.maxMs,
      connected: (role) => (role === 'command' ? this.#connections.command : this.#connections.subscriber).status === 'ready',
      subscriptionConfirmed: () => subscriber.confirmed,
      ready: () => this.#state === 'ready',
      denMembers: () => this.#denMembers(),
      redisMemory: () => this.#memoryMonitor.last,
      durable: () => ({ inFlight: durable.consumer.inFlight, running: durable.consumer.running }),
    });
    metrics.knowDens([this.agent.den, ...config.watch.dens]);
    metrics.describe({ agent: this.agent.id, den: this.agent.den, version: VERSION, heartbeatTtlSeconds: config.heartbeat.ttl, heartbeatIntervalSeconds: config.heartbeat.interval, memoryWarnRatio: config.memory.warnRatio });
    this.#wire();
  }

  /** The parts' events, each listened to once. */
  #wire(): void {
    const { config, metrics } = this;
    const connections = this.#connections;
    connections.on('state', (change) => this.#onConnectionState(change));
    // A flapping connection damps the per-loss lines (here too); its end says where the daemon is.
    connections.on('steady', () => {
      if (!connections.flapping && this.#state === 'ready') this.log.info({ afterFlapping: true }, 'agentd ready again');
    });
    // NOPERM / READONLY from any command: degraded with the reason until the window passes without one.
    connections.on('refused', (r) => {
      // A plugin's own command refused is the plugin's error (its call rejects), not the daemon's state.
      if (!DAEMON_COMMANDS.has(r.command)) return;
      const reason = `redis refused ${r.command.toUpperCase()}: ${r.message}`;
      // READONLY ends with the next beat that lands (a primary again); NOPERM has no such signal.
      if (r.kind === 'NOPERM') {
        this.#refusedAt = Date.now();
        this.#refusedBy = reason;
      }
      this.#degrade(reason);
    });

    this.#dispatcher.on('dropped', (d) => this.emit('eventDropped', { reason: d.reason, channel: d.channel, event: d.event }));
    this.#dispatcher.on('handlerFailed', (info) => this.emit('handlerFailed', info));

    this.#subscriber.on('lost', ({ reason }) => this.#degrade(reason));
    // Open but deaf (a half-open path): drop the socket so ioredis reconnects and we subscribe again.
    // Always (no minimum gap): a deaf connection left open would never be confirmed again.
    this.#subscriber.on('deaf', ({ reason }) => connections.recycle('subscriber', reason, 0));
    this.#subscriber.on('confirmed', () => this.#refreshState());

    this.#presence.on('membership', (m) => this.emit('membership', m));
    this.#presence.on('beat', (b) => {
      this.#loop.check();
      this.emit('heartbeat', b);
      this.#lastBeatOk = b.ok;
      if (b.ok) this.#refreshState();
      else this.#degrade('heartbeat failing');
      this.#checkUnanswered(b);
    });
    this.#presence.on('twin', () => metrics.duplicateInstance());

    const watcher = this.#watcher;
    if (watcher === undefined) return;
    watcher.on('down', (down) => {
      metrics.reaped();
      this.emit('peerDown', down);
      if (config.durable.enabled) void this.durable.handover(down.agent, down.den);
    });
    watcher.on('held', (hold) => metrics.massDeathHold(hold.den));
    watcher.on('ghost', () => metrics.ghostRemoved());
  }

  get state(): DaemonState {
    return this.#state;
  }

  /** Publishes an event from this agent; resolves with the number of receivers. */
  publish(type: string, data: unknown): Promise<number> {
    return publishEvent(this.#connections.command, type, data, this.agent, this.#keys);
  }

  stats(): DaemonStats {
    const c = this.#counters;
    return {
      received: c.received,
      invalid: { ...c.invalid },
      dispatched: c.dispatched,
      unhandled: c.unhandled,
      completed: c.completed,
      failed: c.failed,
      timedOut: c.timedOut,
      dropped: { ...c.dropped },
      waiting: this.#dispatcher.waiting,
      running: this.#dispatcher.running,
      lastBeatAt: this.#presence.lastBeatAt,
      reaped: this.#watcher?.reaped ?? 0,
      loopDelayMaxMs: this.#loop.worstMs,
    };
  }

  #setState(state: DaemonState): void {
    this.#state = state;
  }

  /** Back to ready once every part works again: both connections, a confirmed subscription, a fresh beat. */
  #refreshState(): void {
    if (this.#state !== 'degraded') return;
    const beatFresh = Date.now() - this.#presence.lastBeatAt < this.config.heartbeat.interval * 2000;
    if (!this.#connections.ready || !this.#subscriber.confirmed || !beatFresh || !this.#lastBeatOk || this.#recentRefusal() !== undefined) return;
    this.#setState('ready');
    this.#degradedBy = undefined;
    const again = this.#everReady;
    this.#everReady = true;
    this.log[again && this.#connections.flapping ? 'debug' : 'info'](again ? 'agentd ready again' : 'agentd ready');
    this.emit('ready', { again });
  }

  /** A NOPERM/READONLY seen within the last two sweeps or beats (whichever is longer): still degraded. */
  #recentRefusal(): string | undefined {
    const windowMs = 2_000 * Math.max(this.config.heartbeat.interval, this.config.watch.enabled ? this.config.watch.sweepInterval : 0);
    return this.#refusedBy !== undefined && Date.now() - this.#refusedAt < windowMs ? this.#refusedBy : undefined;
  }

  #degrade(reason: string): void {
    if (this.#state !== 'ready') return;
    this.#degradedBy = reason;
    this.#setState('degraded');
    // A connection loss while it flaps is damped (the 'redis connection flapping' line says it); any other reason is not.
    const loss = /^(redis (command|subscriber) connection lost|event subscription lost)$/.test(reason);
    this.log[loss && this.#connections.flapping ? 'debug' : 'warn']({ reason }, 'agentd degraded');
    this.emit('degraded', { reason });
  }

  /** Unix ms of the first of a run of beats unanswered on a ready command connection (0: none). */
  #unansweredSince = 0;

  /**
   * A ready command connection on which beats go unanswered for commandTimeoutMs is recycled: a
   * middlebox that discarded bytes leaves replies out of step with their commands for good (each
   * reply goes to an older command), and as bytes keep coming back, ioredis's socket timeout never fires.
   */
  #checkUnanswered(b: { readonly ok: boolean; readonly error?: string }): void {
    const limit = this.config.redis.commandTimeoutMs;
    if (b.ok || limit <= 0 || !/^no answer from redis/.test(b.error ?? '') || this.#connections.command.status !== 'ready') {
      this.#unansweredSince = 0;
      return;
    }
    const now = Date.now();
    if (this.#unansweredSince === 0) this.#unansweredSince = now;
    else if (now - this.#unansweredSince >= limit && this.#connections.recycle('command', 'heartbeats unanswered on a connection that is up')) {
      this.log.warn({ conn: 'command', unansweredMs: now - this.#unansweredSince }, 'redis connection answers, but not our heartbeats: reconnecting (its replies may be out of step with its commands)');
      this.#unansweredSince = 0;
    }
  }

  #onConnectionState(change: ConnectionStateChange): void {
    this.emit('connection', change);
    if (change.state === 'reconnecting') this.metrics.reconnect(change.role);
    if (change.state === 'reconnecting') this.#degrade(`redis ${change.role} connection lost`);
    // Re-assert presence as soon as commands work again: a restarted Redis has forgotten us.
    if (change.role === 'command' && change.state === 'ready' && change.downMs !== undefined) {
      this.#presence.beatSoon();
      // After a reconnect or a failover the server may lack recent beats (a promoted replica that lagged):
      // reap nobody until every live agent has had one interval (and one reconnect delay) to beat again.
      this.#watcher?.graceFor(this.config.heartbeat.interval * 1000 + this.config.redis.reconnectMaxDelayMs);
      // A restarted server has its configured notify-keyspace-events back.
      void this.#watcher?.enableNotifications();
    }
    if (change.state === 'ready') this.#refreshState();
  }

  /** Member counts of the watched dens (own den when not watching), for the metrics scrape. */
  async #denMembers(): Promise<Array<readonly [string, number]>> {
    const watched = this.config.watch.enabled ? this.config.watch.dens.filter((d) => d !== '*') : [];
    const dens = [...new Set([this.agent.den, ...watched])];
    const counts = await Promise.all(dens.map((den) => this.#connections.command.scard(denMembersKey(den))));
    return dens.map((den, i) => [den, counts[i] ?? 0] as const);
  }

  /** The data of the den status page (http.statusPage). */
  #statusCollector(): StatusCollector {
    return new StatusCollector({
      agent: this.agent,
      version: VERSION,
      redis: this.#connections.command,
      heartbeat: { ttlSeconds: this.config.heartbeat.ttl, intervalSeconds: this.config.heartbeat.interval },
      queue: { concurrency: this.config.queue.concurrency, max: this.config.queue.max },
      memoryWarnRatio: this.config.memory.warnRatio,
      registry: this.metrics.registry,
      events: this.#denEvents,
      readiness: () => this.readiness(),
      stats: () => this.stats(),
      loopDelayMs: () => this.#loop.last.maxMs,
      redisMemory: () => this.#memoryMonitor.last,
      ...(this.config.durable.enabled ? { durable: () => this.#durableStatus() } : {}),
    });
  }

  /** Depth of this agent's inbox and its den's tasks, with their dead letters, for the status page. */
  async #durableStatus(): Promise<DurableStatus> {
    const redis = this.#connections.command;
    const inbox = inboxKey(this.agent.id);
    const tasks = denTasksKey(this.agent.den);
    const [i, t] = await Promise.all([streamDepth(redis, inbox, deadLetterKey(inbox)), streamDepth(redis, tasks, deadLetterKey(tasks))]);
    return {
      inbox: { length: i.length, pending: i.pending },
      denTasks: { length: t.length, pending: t.pending },
      deadLetters: { inbox: i.dead, denTasks: t.dead },
    };
  }

  /** Whether the daemon is ready, and if not, why: /readyz serves this. */
  readiness(): Readiness {
    const reasons: string[] = [];
    if (this.#state === 'idle' || this.#state === 'starting') reasons.push(`daemon is ${this.#state}`);
    if (this.#state === 'closing' || this.#state === 'closed') reasons.push(`daemon is ${this.#state}`);
    if (this.#connections.command.status !== 'ready') reasons.push(`redis command connection is ${this.#connections.command.status}`);
    if (this.#connections.subscriber.status !== 'ready') reasons.push(`redis subscriber connection is ${this.#connections.subscriber.status}`);
    if (!this.#subscriber.confirmed) reasons.push('event subscription not confirmed');
    const beatAge = Date.now() - this.#presence.lastBeatAt;
    const staleAfter = this.config.heartbeat.interval * 2000;
    if (this.#presence.lastBeatAt === 0) reasons.push('no heartbeat written yet');
    else if (beatAge > staleAfter) reasons.push(`last heartbeat ${Math.round(beatAge / 1000)} s ago (stale after ${staleAfter / 1000} s)`);
    const refusal = this.#recentRefusal();
    if (refusal !== undefined && (this.#state === 'ready' || this.#state === 'degraded')) reasons.push(refusal);
    if (reasons.length === 0 && this.#state === 'degraded') reasons.push(this.#degradedBy ?? 'degraded');
    return { ready: reasons.length === 0 && this.#state === 'ready', state: this.#state, reasons };
  }

  async #loadAllPlugins(): Promise<LoadedPlugin[]> {
    const fromConfig = await loadPlugins(this.config.plugins, this.config.lifecycle.setupTimeoutMs);
    const inline = this.#inline.map((p, i): LoadedPlugin => {
      const wrapped = typeof p === 'object' && p !== null && 'plugin' in p;
      const plugin = wrapped ? p.plugin : p;
      const options = wrapped ? (p.options ?? {}) : {};
      try {
        validatePlugin(plugin);
      } catch (err) {
        throw new AgentdError('AGENTD_ERR_PLUGIN_LOAD', `plugin #${i} given in code: ${(err as Error).message}`);
      }
      return { plugin, options, source: '(code)' };
    });
    return [...fromConfig, ...inline];
  }

  /**
   * Loads and sets up plugins, connects, confirms the subscription and
   * writes presence. Waits for Redis as long as it takes; `close()` cancels.
   * Rejects with an AgentdError for a plugin that cannot load or set up, and
   * with AGENTD_ERR_CLOSED when close() came first or during the start.
   */
  async start(): Promise<void> {
    if (this.#closing !== undefined) throw new AgentdError('AGENTD_ERR_CLOSED', 'start() called after close(); a closed daemon does not start again');
    if (this.#state !== 'idle') throw new AgentdError('AGENTD_ERR_ALREADY_STARTED', `start() called in state ${this.#state}; a daemon starts once`);
    this.#setState('starting');
    const signal = this.#startAbort.signal;
    const run = this.#start().catch((err: unknown) => {
      // Once closed, the close is the outcome: a step that failed because of it (a setup
      // that honoured its aborted signal, say) is not a start failure.
      if (!signal.aborted || (isAgentdError(err) && err.code === 'AGENTD_ERR_CLOSED')) throw err;
      this.log.debug({ err: describeError(err) }, 'a start step failed after close');
      throw signal.reason;
    });
    this.#starting = run.catch(() => undefined);
    return run;
  }

  /**
   * The steps of start. After every await it checks the start signal, which
   * close() aborts: once closed, nothing more is started (no beat, monitor,
   * watcher or `ready`), and close() waits for this to stop before it tears
   * down what was already done.
   */
  async #start(): Promise<void> {
    const signal = this.#startAbort.signal;
    const t0 = performance.now();
    this.log.info({ version: VERSION, patterns: this.config.events.patterns }, 'agentd starting');
    const loaded = await this.#loadAllPlugins();
    signal.throwIfAborted();
    // Up before Redis, so a supervisor sees "alive, not ready" while we wait.
    if (this.config.http.port !== 0) {
      // Loaded only when served: node:http alone costs a daemon without an endpoint megabytes and milliseconds.
      const { startHttpEndpoint } = await import('./http/server.ts');
      this.#http = await startHttpEndpoint({
        host: this.config.http.host,
        port: this.config.http.port,
        source: { readiness: () => this.readiness(), loopDelayMs: () => this.#loop.last.maxMs },
        registry: this.metrics.registry,
        log: this.log.child({ component: 'http' }),
        status: this.config.http.statusPage ? this.#statusCollector() : undefined,
      });
      signal.throwIfAborted();
    }
    this.#plugins = new PluginHost(loaded, {
      agent: this.agent,
      log: this.log,
      redis: this.#connections.command,
      publish: (type, data) => this.publish(type, data),
      memory: this.memory,
      timeoutMs: this.config.lifecycle.setupTimeoutMs,
      durable: this.durable,
    });

    this.#connections.connect();
    await Connections.whenReady(this.#connections.command, signal);
    signal.throwIfAborted();
    // What cannot work (a Cluster, a replica, missing ACL permissions) stops here: exit 2, one line.
    await preflight({
      config: this.config,
      probeChannel: this.#probeChannel,
      log: this.log.child({ component: 'redis' }),
      // Every answer of the check has a deadline, even with redis.commandTimeoutMs=0 (none on the command connection).
      connect: () =>
        createClient({
          ...redisOptions(this.config, 'command'),
          connectionName: `agentd:${this.agent.id}:check`,
          retryStrategy: () => null,
          commandTimeout: this.config.redis.commandTimeoutMs > 0 ? this.config.redis.commandTimeoutMs : this.config.redis.connectTimeoutMs,
        }),
      signal,
    });
    signal.throwIfAborted();
    await this.#plugins.setup();
    signal.throwIfAborted();
    this.#dispatcher.setBindings(this.#plugins.bindings());
    this.#counters.know(this.#dispatcher.types);
    const exact = exactEventChannels(this.config.events, this.#plugins.bindings());
    if (exact) this.#subscriber.useChannels(exact);
    await this.#subscriber.start(signal);
    signal.throwIfAborted();

    // The first beat can fail if Redis drops right now; keep trying until it lands or we are closed.
    // Backing off to 5 s, and one line per distinct error, not one per attempt.
    let joinRetryMs = 250;
    let joinErr: string | undefined;
    for (;;) {
      signal.throwIfAborted();
      try {
        await this.#presence.join();
        break;
      } catch (err) {
        if (err instanceof AgentdError && err.code === 'AGENTD_ERR_DUPLICATE_ID') throw err;
        const text = describeError(err);
        if (text !== joinErr) this.log.warn({ err: text }, 'could not write presence yet; retrying');
        joinErr = text;
        signal.throwIfAborted();
        await Connections.whenReady(this.#connections.command, signal);
        await new Promise((r) => setTimeout(r, joinRetryMs));
        joinRetryMs = Math.min(5_000, joinRetryMs * 2);
      }
    }
    // A close that came while the first beat was in flight: close() leaves once this returns.
    signal.throwIfAborted();
    this.#loop.start();
    this.#memoryMonitor.start();
    if (this.#watcher) {
      await this.#watcher.enableNotifications();
      signal.throwIfAborted();
      this.#watcher.start();
    }
    if (this.config.durable.enabled) await this.durable.start(this.#plugins.bindings());
    this.log.info({ plugins: this.#plugins.names, startMs: Math.round(performance.now() - t0) }, 'agentd started');
    if (this.#subscriber.confirmed && this.#connections.ready) {
      this.#setState('ready');
      this.#everReady = true;
      this.log.info('agentd ready');
      this.emit('ready', { again: false });
    } else {
      // Redis dropped again between the subscription and the first beat: ready follows on recovery.
      this.#degradedBy = 'redis connection lost during start';
      this.#setState('degraded');
    }
  }

  /**
   * After a fatal error: stop beating and leave the den now (agent_offline
   * with `reason`), without draining or closing plugins — the process is about
   * to exit. Best effort; bounded by the beat deadline. The CLI calls it.
   */
  async leaveNow(reason: string): Promise<void> {
    this.#startAbort.abort(new AgentdError('AGENTD_ERR_CLOSED', 'daemon stopped by a fatal error'));
    this.#watcher?.stop();
    this.#presence.stop();
    // A start in progress stops at its next checkpoint (a first beat in flight lands first); leave after it.
    if (this.#state === 'starting' && this.#starting !== undefined) {
      await orAfter(this.#starting, 2_000, undefined, { ref: true });
    }
    await this.#presence.leave(reason);
  }

  /** What is still queued or running, for a last log line when shutdown is cut short. */
  pendingWork(): { waiting: number; running: number } {
    return { waiting: this.#dispatcher.waiting, running: this.#dispatcher.running };
  }

  /**
   * Graceful stop: stop taking events, drain up to the drain timeout, close
   * plugins in reverse, leave presence, close connections. Idempotent.
   */
  close(options: { drainTimeoutMs?: number } = {}): Promise<CloseResult> {
    this.#closing ??= this.#close(options.drainTimeoutMs ?? this.config.lifecycle.drainTimeoutMs);
    return this.#closing;
  }

  /**
   * Waits for an interrupted start to reach its next checkpoint, so that
   * close() tears down everything it did (a first beat in flight lands, then
   * is undone by leave). Bounded: a plugin setup has setupTimeoutMs, a beat
   * a deadline below 5 s.
   */
  async #startStopped(): Promise<void> {
    if (this.#starting === undefined) return;
    this.#plugins?.shutdownStarted();
    const limitMs = this.config.lifecycle.setupTimeoutMs + 5_000;
    const late = await orAfter(this.#starting.then(() => false), limitMs, true, { ref: true });
    if (late) this.log.warn({ limitMs }, 'start did not stop in time; closing anyway');
  }

  async #close(drainTimeoutMs: number): Promise<CloseResult> {
    this.#setState('closing');
    this.#startAbort.abort(new AgentdError('AGENTD_ERR_CLOSED', 'daemon closed during start'));
    await this.#startStopped();
    const errors: string[] = [];
    const step = async (name: string, work: () => Promise<unknown>): Promise<void> => {
      try {
        await work();
      } catch (err) {
        const message = `${name}: ${describeError(err)}`;
        errors.push(message);
        this.log.error({ step: name, err: describeError(err) }, 'shutdown step failed');
      }
    };
    this.log.info({ waiting: this.#dispatcher.waiting, running: this.#dispatcher.running }, 'agentd stopping');

    this.#plugins?.shutdownStarted();
    this.#watcher?.stop();
    this.#loop.stop();
    this.#memoryMonitor.stop();
    // Unsubscribe first: what was already on its way is still handled, not dropped.
    await step('unsubscribe', () => this.#subscriber.stop());
    this.#dispatcher.stopAccepting();
    const durableStopped = this.durable.stop(drainTimeoutMs);
    let drain: DrainResult = { drained: true, waiting: 0, running: [] };
    await step('drain', async () => {
      drain = await this.#dispatcher.drain(drainTimeoutMs);
    });
    if (!drain.drained) {
      this.log.error({ drainTimeoutMs, waiting: drain.waiting, running: drain.running }, 'drain timeout: discarded waiting handler calls and aborted running ones');
    }
    await step('durable', () => durableStopped);
    await step('plugins', async () => this.#plugins?.close());
    this.#presence.stop();
    await step('sweeper lease', async () => this.#watcher?.releaseLeases());
    // Whatever start got to: leave() undoes a join that wrote anything, and is a no-op otherwise.
    await step('leave', () => this.#presence.leave());
    await step('disconnect', () => this.#connections.close());
    await step('http', async () => this.#http?.close());
    this.#intake.flushLog();
    this.#setState('closed');
    const result: CloseResult = drain.drained ? { drained: true, errors } : { drained: false, left: { waiting: drain.waiting, running: drain.running }, errors };
    this.log.info({ drained: result.drained, stats: this.stats() }, 'agentd stopped');
    this.log.flush();
    this.emit('closed', result);
    return result;
  }
}
