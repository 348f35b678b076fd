import { hostname } from 'node:os';

/**
 * The one description of every setting: its doc, format, default, environment
 * variable and command-line flag. Loading (load.ts) and the docs table are both
 * built from it; nothing else reads convict.
 */

export const ID_PATTERN = /^[A-Za-z0-9._-]{1,128}$/;

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export const OVERFLOW_POLICIES = ['drop-newest', 'drop-oldest'] as const;
export const TLS_REQUIRED = ['auto', 'true', 'false'] as const;
export const SIGNING = ['off', 'warn', 'require'] as const;

export const schema = {
  redis: {
    url: {
      doc: 'Redis URL: redis://[user:password@]host:port/db, or rediss:// for TLS. REDIS_URL is read too when AGENTD_REDIS_URL is unset.',
      format: 'redis-url',
      default: 'redis://127.0.0.1:6379/0',
      env: 'AGENTD_REDIS_URL',
      arg: 'redis-url',
      sensitive: true,
    },
    sentinels: {
      doc: 'Redis Sentinels to ask for the primary, as host:port (comma-separated in the environment). Empty: connect to redis.url. When set, the host and port of redis.url are not used (its user, password, database and rediss:// still are).',
      format: 'host-port-list',
      default: [] as string[],
      env: 'AGENTD_REDIS_SENTINELS',
      arg: 'redis-sentinels',
    },
    sentinelName: {
      doc: 'The master name the Sentinels monitor (with redis.sentinels).',
      format: 'agent-id',
      default: 'mymaster',
      env: 'AGENTD_REDIS_SENTINEL_NAME',
      arg: 'redis-sentinel-name',
    },
    passwordFile: {
      doc: 'File whose first line is the Redis password (overrides a password in the URL). Empty: none.',
      format: 'optional-path',
      default: '',
      env: 'AGENTD_REDIS_PASSWORD_FILE',
      arg: 'redis-password-file',
    },
    tls: {
      caFile: {
        doc: 'PEM file of the CA that signed the Redis server certificate (rediss:// only). Empty: the public CAs built into Node.',
        format: 'optional-path',
        default: '',
        env: 'AGENTD_REDIS_TLS_CA_FILE',
        arg: 'redis-tls-ca-file',
      },
      certFile: {
        doc: 'PEM client certificate for mutual TLS. Empty: none.',
        format: 'optional-path',
        default: '',
        env: 'AGENTD_REDIS_TLS_CERT_FILE',
        arg: 'redis-tls-cert-file',
      },
      keyFile: {
        doc: 'PEM private key of the client certificate. Empty: none.',
        format: 'optional-path',
        default: '',
        env: 'AGENTD_REDIS_TLS_KEY_FILE',
        arg: 'redis-tls-key-file',
      },
      serverName: {
        doc: 'Name the server certificate must carry (SNI and verification). Empty: the URL host.',
        format: String,
        default: '',
        env: 'AGENTD_REDIS_TLS_SERVERNAME',
        arg: 'redis-tls-servername',
      },
      verify: {
        doc: 'Verify the server certificate. Turning this off is logged as a warning at every start.',
        format: 'switch',
        default: true,
        env: 'AGENTD_REDIS_TLS_VERIFY',
        arg: 'redis-tls-verify',
      },
      required: {
        doc: 'Refuse a plain redis:// URL: auto (refuse it for any host but loopback: 127.0.0.0/8, ::1, localhost), true (refuse it for every host) or false (allow it anywhere). A refusal stops the start with exit 2.',
        format: TLS_REQUIRED as unknown as string[],
        default: 'auto',
        env: 'AGENTD_REDIS_TLS_REQUIRED',
        arg: 'redis-tls-required',
      },
    },
    connectTimeoutMs: {
      doc: 'Time limit for one connection attempt, in ms: TCP connect, TLS handshake, then AUTH/SELECT until the connection is ready; past it the attempt is dropped and retried.',
      format: 'positive-int',
      default: 10_000,
      env: 'AGENTD_REDIS_CONNECT_TIMEOUT_MS',
      arg: 'redis-connect-timeout-ms',
    },
    commandTimeoutMs: {
      doc: 'Time limit for one Redis command on the shared command connection, in ms (0: none); a connection on which a command waits this long without a byte coming back is recycled (reconnected).',
      format: 'non-negative-int',
      default: 5_000,
      env: 'AGENTD_REDIS_COMMAND_TIMEOUT_MS',
      arg: 'redis-command-timeout-ms',
    },
    reconnectMaxDelayMs: {
      doc: 'Upper bound of the jittered, exponential delay between reconnection attempts, in ms. Reconnection never gives up.',
      format: 'positive-int',
      default: 1_000,
      env: 'AGENTD_REDIS_RECONNECT_MAX_DELAY_MS',
      arg: 'redis-reconnect-max-delay-ms',
    },
    reconnectLogIntervalMs: {
      doc: 'While a connection is reconnecting, how often the "redis reconnecting" line is repeated at info, in ms (the first attempt is always logged; the attempts between are logged at debug).',
      format: 'positive-int',
      default: 30_000,
      env: 'AGENTD_REDIS_RECONNECT_LOG_INTERVAL_MS',
      arg: 'redis-reconnect-log-interval-ms',
    },
    flapLosses: {
      doc: 'Flap damping: a connection lost this many times within redis.flapWindowMs is flapping; its per-loss lines (error, lost, reconnecting, ready again) go to debug until it stays up for a whole window.',
      format: 'positive-int',
      default: 3,
      env: 'AGENTD_REDIS_FLAP_LOSSES',
      arg: 'redis-flap-losses',
    },
    flapWindowMs: {
      doc: 'Flap damping window, in ms: losses are counted over it; while a connection flaps, "redis connection still flapping" is logged at most once per window; it is steady again once it stayed up for a whole window.',
      format: 'positive-int',
      default: 60_000,
      env: 'AGENTD_REDIS_FLAP_WINDOW_MS',
      arg: 'redis-flap-window-ms',
    },
  },
  agent: {
    id: {
      doc: 'This agent\'s id: 1-128 characters of A-Z a-z 0-9 . _ -',
      format: 'agent-id',
      default: hostname(),
      env: 'AGENTD_AGENT_ID',
      arg: 'agent-id',
    },
    den: {
      doc: 'The den (group) this agent belongs to: 1-128 characters of A-Z a-z 0-9 . _ -',
      format: 'agent-id',
      default: 'default',
      env: 'AGENTD_DEN',
      arg: 'den',
    },
  },
  heartbeat: {
    ttl: {
      doc: 'Seconds the heartbeat key lives without a refresh; a peer treats the agent as dead after it expires.',
      format: 'positive-int',
      default: 60,
      env: 'AGENTD_HEARTBEAT_TTL',
      arg: 'heartbeat-ttl',
    },
    interval: {
      doc: 'Seconds between heartbeats (fractions allowed); must be below ttl / 2.',
      format: 'positive-number',
      default: 20,
      env: 'AGENTD_HEARTBEAT_INTERVAL',
      arg: 'heartbeat-interval',
    },
  },
  watch: {
    enabled: {
      doc: 'Watch peers: report agents whose heartbeat expired as agent_down (exactly once across all watchers) and remove them from their den.',
      format: 'switch',
      default: true,
      env: 'AGENTD_WATCH',
      arg: 'watch',
    },
    sweepInterval: {
      doc: 'Seconds between sweeps of the watched dens for members whose heartbeat key is gone (fractions allowed).',
      format: 'positive-number',
      default: 5,
      env: 'AGENTD_SWEEP_INTERVAL',
      arg: 'sweep-interval',
    },
    dens: {
      doc: 'Dens to watch (comma-separated in the environment); empty: this agent\'s own den; "*": every den named in the registry.',
      format: 'den-list',
      default: [] as string[],
      env: 'AGENTD_WATCH_DENS',
      arg: 'watch-dens',
    },
    notifications: {
      doc: 'Keyspace expiry notifications, which make detection faster than the sweep: listen (use them if the server sends them), enable (also try CONFIG SET notify-keyspace-events), off (sweep only).',
      format: ['listen', 'enable', 'off'],
      default: 'listen',
      env: 'AGENTD_WATCH_NOTIFICATIONS',
      arg: 'watch-notifications',
    },
    massDeathShare: {
      doc: 'Mass-death brake: when a sweep finds at least this share of a den\'s members dead at once (and at least watch.massDeathMin of them), it holds: logs, counts, reaps none of them. The default still reports a third of a den dying at once.',
      format: 'ratio',
      default: 0.55,
      env: 'AGENTD_WATCH_MASS_DEATH_SHARE',
      arg: 'watch-mass-death-share',
    },
    massDeathMin: {
      doc: 'Mass-death brake: fewest dead members at once that can trip it (0: brake off). Below it deaths are always reported, so in a den of 3 or fewer no death is ever held.',
      format: 'non-negative-int',
      default: 3,
      env: 'AGENTD_WATCH_MASS_DEATH_MIN',
      arg: 'watch-mass-death-min',
    },
    massDeathHold: {
      doc: 'Seconds a mass-death hold may last; then the dead are reaped after all (0: hold until the share drops below the brake).',
      format: 'non-negative-int',
      default: 300,
      env: 'AGENTD_WATCH_MASS_DEATH_HOLD',
      arg: 'watch-mass-death-hold',
    },
    sweeper: {
      doc: 'Who sweeps a den: lease (one member at a time, chosen by the den:<den>:sweeper lease, so watching costs Redis linear work in the den size) or every (every watcher sweeps every interval, quadratic; what agentd did before the lease).',
      format: ['lease', 'every'],
      default: 'lease',
      env: 'AGENTD_WATCH_SWEEPER',
      arg: 'watch-sweeper',
    },
  },
  events: {
    patterns: {
      doc: 'Channel patterns to PSUBSCRIBE to (comma-separated in the environment).',
      format: 'pattern-list',
      default: ['agent:events:*'],
      env: 'AGENTD_EVENT_PATTERNS',
      arg: 'event-patterns',
    },
    subscribe: {
      doc: 'How to subscribe to events: auto (SUBSCRIBE to exactly the channels of the handled event types, plus agent_online/offline/down, when no plugin has a \'*\' handler and events.patterns is the default; otherwise PSUBSCRIBE to events.patterns) or pattern (always PSUBSCRIBE to events.patterns, receiving every event).',
      format: ['auto', 'pattern'],
      default: 'auto',
      env: 'AGENTD_EVENT_SUBSCRIBE',
      arg: 'event-subscribe',
    },
    maxBytes: {
      doc: 'Largest message accepted on an event channel, in bytes; larger ones are dropped unread.',
      format: 'positive-int',
      default: 1_048_576,
      env: 'AGENTD_EVENT_MAX_BYTES',
      arg: 'event-max-bytes',
    },
    maxDepth: {
      doc: 'Deepest nesting of arrays and objects accepted in a message (the envelope object is level 1); deeper ones are dropped as too_deep.',
      format: 'positive-int',
      default: 64,
      env: 'AGENTD_EVENT_MAX_DEPTH',
      arg: 'event-max-depth',
    },
    probeInterval: {
      doc: 'Seconds between probes of the event subscription (a message the daemon publishes to itself and must receive); a subscriber connection that stays open but delivers nothing is found within probeInterval + probeTimeoutMs and recycled (fractions allowed).',
      format: 'positive-number',
      default: 5,
      env: 'AGENTD_EVENT_PROBE_INTERVAL',
      arg: 'event-probe-interval',
    },
    probeTimeoutMs: {
      doc: 'Time a subscription probe may take to come back, in ms (after PUBLISH is answered); past it the subscription counts as lost.',
      format: 'positive-int',
      default: 2_000,
      env: 'AGENTD_EVENT_PROBE_TIMEOUT_MS',
      arg: 'event-probe-timeout-ms',
    },
  },
  queue: {
    concurrency: {
      doc: 'Handler calls running at once.',
      format: 'positive-int',
      default: 16,
      env: 'AGENTD_QUEUE_CONCURRENCY',
      arg: 'queue-concurrency',
    },
    max: {
      doc: 'Handler calls waiting for a slot before the overflow policy applies (an event handled by two plugins takes two).',
      format: 'positive-int',
      default: 10_000,
      env: 'AGENTD_QUEUE_MAX',
      arg: 'queue-max',
    },
    maxBytes: {
      doc: 'Message bytes of the waiting events (each event counted once) before the overflow policy applies: bounds the memory a flood of large events can hold.',
      format: 'positive-int',
      default: 64 * 1024 * 1024,
      env: 'AGENTD_QUEUE_MAX_BYTES',
      arg: 'queue-max-bytes',
    },
    overflow: {
      doc: 'What a full queue does with a new event: drop-newest (drop the new event) or drop-oldest (drop the longest-waiting calls).',
      format: OVERFLOW_POLICIES as unknown as string[],
      default: 'drop-newest',
      env: 'AGENTD_QUEUE_OVERFLOW',
      arg: 'queue-overflow',
    },
    handlerTimeoutMs: {
      doc: 'Time limit of one handler call, in ms; at the limit its signal aborts and its slot is freed.',
      format: 'positive-int',
      default: 30_000,
      env: 'AGENTD_HANDLER_TIMEOUT_MS',
      arg: 'handler-timeout-ms',
    },
  },
  memory: {
    maxMessages: {
      doc: 'Conversation messages kept per session (agent:<id>:session:<sid>:messages).',
      format: 'positive-int',
      default: 20,
      env: 'AGENTD_MEMORY_MAX_MESSAGES',
      arg: 'memory-max-messages',
    },
    sessionTtl: {
      doc: 'Seconds a conversation window lives after its last message (the article recommends 1-4 h).',
      format: 'positive-int',
      default: 3_600,
      env: 'AGENTD_MEMORY_SESSION_TTL',
      arg: 'memory-session-ttl',
    },
    cacheTtl: {
      doc: 'Seconds an LLM response stays cached (agent:<id>:llm_cache:<sha256>; the article recommends 30-60 min).',
      format: 'positive-int',
      default: 3_600,
      env: 'AGENTD_MEMORY_CACHE_TTL',
      arg: 'memory-cache-ttl',
    },
    taskTtl: {
      doc: 'Seconds a task status lives (agent:<id>:task:<task_id>:status).',
      format: 'positive-int',
      default: 86_400,
      env: 'AGENTD_MEMORY_TASK_TTL',
      arg: 'memory-task-ttl',
    },
    topicTtl: {
      doc: 'Seconds topic memory lives (agent:<id>:memory:<topic> HASH).',
      format: 'positive-int',
      default: 86_400,
      env: 'AGENTD_MEMORY_TOPIC_TTL',
      arg: 'memory-topic-ttl',
    },
    prefsTtl: {
      doc: 'Seconds user preferences live (agent:<id>:prefs:<user_id> HASH).',
      format: 'positive-int',
      default: 604_800,
      env: 'AGENTD_MEMORY_PREFS_TTL',
      arg: 'memory-prefs-ttl',
    },
    rateLimitWindow: {
      doc: 'Default rate-limit window in seconds (agent:<id>:ratelimit:<window> counters expire with it).',
      format: 'positive-int',
      default: 60,
      env: 'AGENTD_MEMORY_RATE_LIMIT_WINDOW',
      arg: 'memory-rate-limit-window',
    },
    checkInterval: {
      doc: 'Seconds between checks of Redis memory use (INFO memory); 0 turns the check off.',
      format: 'non-negative-int',
      default: 60,
      env: 'AGENTD_MEMORY_CHECK_INTERVAL',
      arg: 'memory-check-interval',
    },
    warnRatio: {
      doc: 'Warn when Redis used memory passes this fraction of maxmemory (evictions start at the limit).',
      format: 'ratio',
      default: 0.8,
      env: 'AGENTD_MEMORY_WARN_RATIO',
      arg: 'memory-warn-ratio',
    },
  },
  durable: {
    enabled: {
      doc: 'Durable messages on Redis Streams: read this agent\'s inbox (inbox:<id>) and its den\'s shared tasks (den:<den>:tasks) and hand them to the handlers, at least once (docs/durable.md).',
      format: 'switch',
      default: true,
      env: 'AGENTD_DURABLE_ENABLED',
      arg: 'durable-enabled',
    },
    attempts: {
      doc: 'Deliveries of one durable entry before it is moved to the dead-letter stream (inbox:<id>:dead, den:<den>:dead).',
      format: 'positive-int',
      default: 5,
      env: 'AGENTD_DURABLE_ATTEMPTS',
      arg: 'durable-attempts',
    },
    backoffMs: {
      doc: 'Wait before the first retry of a failed durable entry, in ms; doubles with each attempt up to durable.backoffMaxMs.',
      format: 'positive-int',
      default: 1_000,
      env: 'AGENTD_DURABLE_BACKOFF_MS',
      arg: 'durable-backoff-ms',
    },
    backoffMaxMs: {
      doc: 'Longest wait between two attempts of a durable entry, in ms.',
      format: 'positive-int',
      default: 60_000,
      env: 'AGENTD_DURABLE_BACKOFF_MAX_MS',
      arg: 'durable-backoff-max-ms',
    },
    concurrency: {
      doc: 'Durable entries handled at once; at most as many more are read ahead, the rest wait in Redis (backpressure, never dropped).',
      format: 'positive-int',
      default: 16,
      env: 'AGENTD_DURABLE_CONCURRENCY',
      arg: 'durable-concurrency',
    },
    maxLen: {
      doc: 'Approximate cap (XADD MAXLEN ~) of every inbox, task and dead-letter stream agentd writes; an entry trimmed before it was acknowledged is counted and logged.',
      format: 'positive-int',
      default: 10_000,
      env: 'AGENTD_DURABLE_MAX_LEN',
      arg: 'durable-max-len',
    },
    pollInterval: {
      doc: 'Seconds between reads of the streams when no doorbell rang (fractions allowed): the longest a sender that does not PUBLISH waits.',
      format: 'positive-number',
      default: 1,
      env: 'AGENTD_DURABLE_POLL_INTERVAL',
      arg: 'durable-poll-interval',
    },
    orphanAfter: {
      doc: 'Seconds a den task may stay pending without its claim being refreshed before a live member takes it (the safety net behind the hand-over at agent_down; a running handler\'s claim is refreshed every orphanAfter / 4, so pollInterval must be at most that).',
      format: 'positive-number',
      default: 120,
      env: 'AGENTD_DURABLE_ORPHAN_AFTER',
      arg: 'durable-orphan-after',
    },
    retention: {
      doc: 'Seconds the inbox of an agent that is down or offline is kept for its return; then its unacknowledged entries are moved to inbox:<id>:dead.',
      format: 'positive-int',
      default: 86_400,
      env: 'AGENTD_DURABLE_RETENTION',
      arg: 'durable-retention',
    },
  },
  plugins: {
    doc: 'Plugin modules: paths (relative to the config file, or to the working directory when given by environment or flag) or package names; in a config file also {"module": "...", "options": {...}}. Comma-separated in the environment.',
    format: 'plugin-list',
    default: [] as unknown[],
    env: 'AGENTD_PLUGINS',
    arg: 'plugins',
  },
  lifecycle: {
    setupTimeoutMs: {
      doc: 'Time limit for each plugin\'s setup() and close(), in ms.',
      format: 'positive-int',
      default: 10_000,
      env: 'AGENTD_SETUP_TIMEOUT_MS',
      arg: 'setup-timeout-ms',
    },
    drainTimeoutMs: {
      doc: 'On SIGTERM/SIGINT, how long queued and running handlers may take to finish, in ms (keep it below the supervisor\'s stop timeout: Docker gives 10 s).',
      format: 'positive-int',
      default: 8_000,
      env: 'AGENTD_DRAIN_TIMEOUT_MS',
      arg: 'drain-timeout-ms',
    },
  },
  http: {
    host: {
      doc: 'Address the health and metrics endpoint listens on (0.0.0.0 in a container).',
      format: String,
      default: '127.0.0.1',
      env: 'AGENTD_HTTP_HOST',
      arg: 'http-host',
    },
    port: {
      doc: 'Port of the health and metrics endpoint (/healthz, /readyz, /metrics); 0 turns it off.',
      format: 'port-or-off',
      default: 9464,
      env: 'AGENTD_HTTP_PORT',
      arg: 'http-port',
    },
    statusPage: {
      doc: 'Serve the read-only den status page on the same endpoint: /status (HTML) and /status.json. Off by default; no authentication, so keep the endpoint on loopback or a private network.',
      format: 'switch',
      default: false,
      env: 'AGENTD_HTTP_STATUS_PAGE',
      arg: 'http-status-page',
    },
  },
  security: {
    signing: {
      doc: 'Signed envelopes (docs/security.md): off (publish unsigned, check nothing), warn (sign; count and log unsigned or bad messages but dispatch them) or require (sign; drop them, counted by reason).',
      format: SIGNING as unknown as string[],
      default: 'off',
      env: 'AGENTD_SECURITY_SIGNING',
      arg: 'security-signing',
    },
    keysFile: {
      doc: 'File of signing keys, one "<kid> <secret>" a line; the first signs, all verify (needed unless signing is off; must not be readable by others). Never logged.',
      format: 'optional-path',
      default: '',
      env: 'AGENTD_SECURITY_KEYS_FILE',
      arg: 'security-keys-file',
    },
    tolerance: {
      doc: 'Seconds a signed message\'s ts may differ from this host\'s clock before it is refused as stale.',
      format: 'positive-int',
      default: 300,
      env: 'AGENTD_SECURITY_TOLERANCE',
      arg: 'security-tolerance',
    },
    channelCheck: {
      doc: 'Refuse (count as channel_mismatch) an event whose type is not the one its channel agent:events:<type> names.',
      format: 'switch',
      default: true,
      env: 'AGENTD_SECURITY_CHANNEL_CHECK',
      arg: 'security-channel-check',
    },
  },
  log: {
    level: {
      doc: 'Log level: fatal, error, warn, info, debug, trace or silent.',
      format: LOG_LEVELS as unknown as string[],
      default: 'info',
      env: 'AGENTD_LOG_LEVEL',
      arg: 'log-level',
    },
  },
} as const;

export type LogLevel = (typeof LOG_LEVELS)[number];
export type OverflowPolicy = (typeof OVERFLOW_POLICIES)[number];
/** `redis.tls.required`: when a plain redis:// URL is refused. */
export type TlsRequired = (typeof TLS_REQUIRED)[number];
/** `security.signing`: whether envelopes are signed and what happens to unsigned or bad ones. */
export type SigningMode = (typeof SIGNING)[number];

export interface PluginSpec {
  /** Absolute file URL for paths, the bare name for packages. */
  readonly module: string;
  readonly options: Readonly<Record<string, unknown>>;
}

/**
 * The validated, frozen configuration: what `loadConfig` returns and
 * `new AgentDaemon({ config })` takes. One field per setting; each field's
 * doc is the setting's doc in the schema above (a test keeps them equal), and
 * `agentd help settings` and the README's table say the same.
 */
export interface AgentdConfig {
  readonly redis: {
    /**
     * Redis URL: redis://[user:password@]host:port/db, or rediss:// for TLS. REDIS_URL is read too when
     * AGENTD_REDIS_URL is unset.
     *
     * Setting `redis.url`: environment `AGENTD_REDIS_URL`, flag `--redis-url`.
     * @defaultValue `'redis://127.0.0.1:6379/0'`
     */
    readonly url: string;
    /**
     * Redis Sentinels to ask for the primary, as host:port (comma-separated in the environment). Empty: connect
     * to redis.url. When set, the host and port of redis.url are not used (its user, password, database and
     * rediss:// still are).
     *
     * Setting `redis.sentinels`: environment `AGENTD_REDIS_SENTINELS`, flag `--redis-sentinels`.
     * @defaultValue `[]`
     */
    readonly sentinels: readonly string[];
    /**
     * The master name the Sentinels monitor (with redis.sentinels).
     *
     * Setting `redis.sentinelName`: environment `AGENTD_REDIS_SENTINEL_NAME`, flag `--redis-sentinel-name`.
     * @defaultValue `'mymaster'`
     */
    readonly sentinelName: string;
    /**
     * File whose first line is the Redis password (overrides a password in the URL). Empty: none.
     *
     * Setting `redis.passwordFile`: environment `AGENTD_REDIS_PASSWORD_FILE`, flag `--redis-password-file`.
     * @defaultValue `''`
     */
    readonly passwordFile: string;
    readonly tls: {
      /**
       * PEM file of the CA that signed the Redis server certificate (rediss:// only). Empty: the public CAs
       * built into Node.
       *
       * Setting `redis.tls.caFile`: environment `AGENTD_REDIS_TLS_CA_FILE`, flag `--redis-tls-ca-file`.
       * @defaultValue `''`
       */
      readonly caFile: string;
      /**
       * PEM client certificate for mutual TLS. Empty: none.
       *
       * Setting `redis.tls.certFile`: environment `AGENTD_REDIS_TLS_CERT_FILE`, flag `--redis-tls-cert-file`.
       * @defaultValue `''`
       */
      readonly certFile: string;
      /**
       * PEM private key of the client certificate. Empty: none.
       *
       * Setting `redis.tls.keyFile`: environment `AGENTD_REDIS_TLS_KEY_FILE`, flag `--redis-tls-key-file`.
       * @defaultValue `''`
       */
      readonly keyFile: string;
      /**
       * Name the server certificate must carry (SNI and verification). Empty: the URL host.
       *
       * Setting `redis.tls.serverName`: environment `AGENTD_REDIS_TLS_SERVERNAME`, flag `--redis-tls-servername`.
       * @defaultValue `''`
       */
      readonly serverName: string;
      /**
       * Verify the server certificate. Turning this off is logged as a warning at every start.
       *
       * Setting `redis.tls.verify`: environment `AGENTD_REDIS_TLS_VERIFY`, flag `--redis-tls-verify`.
       * @defaultValue `true`
       */
      readonly verify: boolean;
      /**
       * Refuse a plain redis:// URL: auto (refuse it for any host but loopback: 127.0.0.0/8, ::1, localhost),
       * true (refuse it for every host) or false (allow it anywhere). A refusal stops the start with exit 2.
       *
       * Setting `redis.tls.required`: environment `AGENTD_REDIS_TLS_REQUIRED`, flag `--redis-tls-required`.
       * @defaultValue `'auto'`
       */
      readonly required: TlsRequired;
    };
    /**
     * Time limit for one connection attempt, in ms: TCP connect, TLS handshake, then AUTH/SELECT until the
     * connection is ready; past it the attempt is dropped and retried.
     *
     * Setting `redis.connectTimeoutMs`: environment `AGENTD_REDIS_CONNECT_TIMEOUT_MS`, flag `--redis-connect-timeout-ms`.
     * @defaultValue `10000`
     */
    readonly connectTimeoutMs: number;
    /**
     * Time limit for one Redis command on the shared command connection, in ms (0: none); a connection on which
     * a command waits this long without a byte coming back is recycled (reconnected).
     *
     * Setting `redis.commandTimeoutMs`: environment `AGENTD_REDIS_COMMAND_TIMEOUT_MS`, flag `--redis-command-timeout-ms`.
     * @defaultValue `5000`
     */
    readonly commandTimeoutMs: number;
    /**
     * Upper bound of the jittered, exponential delay between reconnection attempts, in ms. Reconnection never
     * gives up.
     *
     * Setting `redis.reconnectMaxDelayMs`: environment `AGENTD_REDIS_RECONNECT_MAX_DELAY_MS`, flag `--redis-reconnect-max-delay-ms`.
     * @defaultValue `1000`
     */
    readonly reconnectMaxDelayMs: number;
    /**
     * While a connection is reconnecting, how often the "redis reconnecting" line is repeated at info, in ms (the
     * first attempt is always logged; the attempts between are logged at debug).
     *
     * Setting `redis.reconnectLogIntervalMs`: environment `AGENTD_REDIS_RECONNECT_LOG_INTERVAL_MS`, flag `--redis-reconnect-log-interval-ms`.
     * @defaultValue `30000`
     */
    readonly reconnectLogIntervalMs: number;
    /**
     * Flap damping: a connection lost this many times within redis.flapWindowMs is flapping; its per-loss lines
     * (error, lost, reconnecting, ready again) go to debug until it stays up for a whole window.
     *
     * Setting `redis.flapLosses`: environment `AGENTD_REDIS_FLAP_LOSSES`, flag `--redis-flap-losses`.
     * @defaultValue `3`
     */
    readonly flapLosses: number;
    /**
     * Flap damping window, in ms: losses are counted over it; while a connection flaps, "redis connection still
     * flapping" is logged at most once per window; it is steady again once it stayed up for a whole window.
     *
     * Setting `redis.flapWindowMs`: environment `AGENTD_REDIS_FLAP_WINDOW_MS`, flag `--redis-flap-window-ms`.
     * @defaultValue `60000`
     */
    readonly flapWindowMs: number;
  };
  readonly agent: {
    /**
     * This agent's id: 1-128 characters of A-Z a-z 0-9 . _ -
     *
     * Setting `agent.id`: environment `AGENTD_AGENT_ID`, flag `--agent-id`.
     * @defaultValue the host name (`os.hostname()`)
     */
    readonly id: string;
    /**
     * The den (group) this agent belongs to: 1-128 characters of A-Z a-z 0-9 . _ -
     *
     * Setting `agent.den`: environment `AGENTD_DEN`, flag `--den`.
     * @defaultValue `'default'`
     */
    readonly den: string;
  };
  readonly heartbeat: {
    /**
     * Seconds the heartbeat key lives without a refresh; a peer treats the agent as dead after it expires.
     *
     * Setting `heartbeat.ttl`: environment `AGENTD_HEARTBEAT_TTL`, flag `--heartbeat-ttl`.
     * @defaultValue `60`
     */
    readonly ttl: number;
    /**
     * Seconds between heartbeats (fractions allowed); must be below ttl / 2.
     *
     * Setting `heartbeat.interval`: environment `AGENTD_HEARTBEAT_INTERVAL`, flag `--heartbeat-interval`.
     * @defaultValue `20`
     */
    readonly interval: number;
  };
  readonly watch: {
    /**
     * Watch peers: report agents whose heartbeat expired as agent_down (exactly once across all watchers) and
     * remove them from their den.
     *
     * Setting `watch.enabled`: environment `AGENTD_WATCH`, flag `--watch`.
     * @defaultValue `true`
     */
    readonly enabled: boolean;
    /**
     * Seconds between sweeps of the watched dens for members whose heartbeat key is gone (fractions allowed).
     *
     * Setting `watch.sweepInterval`: environment `AGENTD_SWEEP_INTERVAL`, flag `--sweep-interval`.
     * @defaultValue `5`
     */
    readonly sweepInterval: number;
    /**
     * Dens to watch (comma-separated in the environment); empty: this agent's own den; "*": every den named in
     * the registry.
     *
     * Setting `watch.dens`: environment `AGENTD_WATCH_DENS`, flag `--watch-dens`.
     * @defaultValue `[]`
     */
    readonly dens: readonly string[];
    /**
     * Keyspace expiry notifications, which make detection faster than the sweep: listen (use them if the server
     * sends them), enable (also try CONFIG SET notify-keyspace-events), off (sweep only).
     *
     * Setting `watch.notifications`: environment `AGENTD_WATCH_NOTIFICATIONS`, flag `--watch-notifications`.
     * @defaultValue `'listen'`
     */
    readonly notifications: 'listen' | 'enable' | 'off';
    /**
     * Mass-death brake: when a sweep finds at least this share of a den's members dead at once (and at least
     * watch.massDeathMin of them), it holds: logs, counts, reaps none of them. The default still reports a third
     * of a den dying at once.
     *
     * Setting `watch.massDeathShare`: environment `AGENTD_WATCH_MASS_DEATH_SHARE`, flag `--watch-mass-death-share`.
     * @defaultValue `0.55`
     */
    readonly massDeathShare: number;
    /**
     * Mass-death brake: fewest dead members at once that can trip it (0: brake off). Below it deaths are always
     * reported, so in a den of 3 or fewer no death is ever held.
     *
     * Setting `watch.massDeathMin`: environment `AGENTD_WATCH_MASS_DEATH_MIN`, flag `--watch-mass-death-min`.
     * @defaultValue `3`
     */
    readonly massDeathMin: number;
    /**
     * Seconds a mass-death hold may last; then the dead are reaped after all (0: hold until the share drops
     * below the brake).
     *
     * Setting `watch.massDeathHold`: environment `AGENTD_WATCH_MASS_DEATH_HOLD`, flag `--watch-mass-death-hold`.
     * @defaultValue `300`
     */
    readonly massDeathHold: number;
    /**
     * Who sweeps a den: lease (one member at a time, chosen by the den:<den>:sweeper lease, so watching costs
     * Redis linear work in the den size) or every (every watcher sweeps every interval, quadratic; what agentd
     * did before the lease).
     *
     * Setting `watch.sweeper`: environment `AGENTD_WATCH_SWEEPER`, flag `--watch-sweeper`.
     * @defaultValue `'lease'`
     */
    readonly sweeper: 'lease' | 'every';
  };
  readonly events: {
    /**
     * Channel patterns to PSUBSCRIBE to (comma-separated in the environment).
     *
     * Setting `events.patterns`: environment `AGENTD_EVENT_PATTERNS`, flag `--event-patterns`.
     * @defaultValue `['agent:events:*']`
     */
    readonly patterns: readonly string[];
    /**
     * How to subscribe to events: auto (SUBSCRIBE to exactly the channels of the handled event types, plus
     * agent_online/offline/down, when no plugin has a '*' handler and events.patterns is the default; otherwise
     * PSUBSCRIBE to events.patterns) or pattern (always PSUBSCRIBE to events.patterns, receiving every event).
     *
     * Setting `events.subscribe`: environment `AGENTD_EVENT_SUBSCRIBE`, flag `--event-subscribe`.
     * @defaultValue `'auto'`
     */
    readonly subscribe: 'auto' | 'pattern';
    /**
     * Largest message accepted on an event channel, in bytes; larger ones are dropped unread.
     *
     * Setting `events.maxBytes`: environment `AGENTD_EVENT_MAX_BYTES`, flag `--event-max-bytes`.
     * @defaultValue `1048576`
     */
    readonly maxBytes: number;
    /**
     * Deepest nesting of arrays and objects accepted in a message (the envelope object is level 1); deeper ones
     * are dropped as too_deep.
     *
     * Setting `events.maxDepth`: environment `AGENTD_EVENT_MAX_DEPTH`, flag `--event-max-depth`.
     * @defaultValue `64`
     */
    readonly maxDepth: number;
    /**
     * Seconds between probes of the event subscription (a message the daemon publishes to itself and must
     * receive); a subscriber connection that stays open but delivers nothing is found within probeInterval +
     * probeTimeoutMs and recycled (fractions allowed).
     *
     * Setting `events.probeInterval`: environment `AGENTD_EVENT_PROBE_INTERVAL`, flag `--event-probe-interval`.
     * @defaultValue `5`
     */
    readonly probeInterval: number;
    /**
     * Time a subscription probe may take to come back, in ms (after PUBLISH is answered); past it the
     * subscription counts as lost.
     *
     * Setting `events.probeTimeoutMs`: environment `AGENTD_EVENT_PROBE_TIMEOUT_MS`, flag `--event-probe-timeout-ms`.
     * @defaultValue `2000`
     */
    readonly probeTimeoutMs: number;
  };
  readonly queue: {
    /**
     * Handler calls running at once.
     *
     * Setting `queue.concurrency`: environment `AGENTD_QUEUE_CONCURRENCY`, flag `--queue-concurrency`.
     * @defaultValue `16`
     */
    readonly concurrency: number;
    /**
     * Handler calls waiting for a slot before the overflow policy applies (an event handled by two plugins takes
     * two).
     *
     * Setting `queue.max`: environment `AGENTD_QUEUE_MAX`, flag `--queue-max`.
     * @defaultValue `10000`
     */
    readonly max: number;
    /**
     * Message bytes of the waiting events (each event counted once) before the overflow policy applies: bounds
     * the memory a flood of large events can hold.
     *
     * Setting `queue.maxBytes`: environment `AGENTD_QUEUE_MAX_BYTES`, flag `--queue-max-bytes`.
     * @defaultValue `67108864`
     */
    readonly maxBytes: number;
    /**
     * What a full queue does with a new event: drop-newest (drop the new event) or drop-oldest (drop the
     * longest-waiting calls).
     *
     * Setting `queue.overflow`: environment `AGENTD_QUEUE_OVERFLOW`, flag `--queue-overflow`.
     * @defaultValue `'drop-newest'`
     */
    readonly overflow: OverflowPolicy;
    /**
     * Time limit of one handler call, in ms; at the limit its signal aborts and its slot is freed.
     *
     * Setting `queue.handlerTimeoutMs`: environment `AGENTD_HANDLER_TIMEOUT_MS`, flag `--handler-timeout-ms`.
     * @defaultValue `30000`
     */
    readonly handlerTimeoutMs: number;
  };
  readonly memory: {
    /**
     * Conversation messages kept per session (agent:<id>:session:<sid>:messages).
     *
     * Setting `memory.maxMessages`: environment `AGENTD_MEMORY_MAX_MESSAGES`, flag `--memory-max-messages`.
     * @defaultValue `20`
     */
    readonly maxMessages: number;
    /**
     * Seconds a conversation window lives after its last message (the article recommends 1-4 h).
     *
     * Setting `memory.sessionTtl`: environment `AGENTD_MEMORY_SESSION_TTL`, flag `--memory-session-ttl`.
     * @defaultValue `3600`
     */
    readonly sessionTtl: number;
    /**
     * Seconds an LLM response stays cached (agent:<id>:llm_cache:<sha256>; the article recommends 30-60 min).
     *
     * Setting `memory.cacheTtl`: environment `AGENTD_MEMORY_CACHE_TTL`, flag `--memory-cache-ttl`.
     * @defaultValue `3600`
     */
    readonly cacheTtl: number;
    /**
     * Seconds a task status lives (agent:<id>:task:<task_id>:status).
     *
     * Setting `memory.taskTtl`: environment `AGENTD_MEMORY_TASK_TTL`, flag `--memory-task-ttl`.
     * @defaultValue `86400`
     */
    readonly taskTtl: number;
    /**
     * Seconds topic memory lives (agent:<id>:memory:<topic> HASH).
     *
     * Setting `memory.topicTtl`: environment `AGENTD_MEMORY_TOPIC_TTL`, flag `--memory-topic-ttl`.
     * @defaultValue `86400`
     */
    readonly topicTtl: number;
    /**
     * Seconds user preferences live (agent:<id>:prefs:<user_id> HASH).
     *
     * Setting `memory.prefsTtl`: environment `AGENTD_MEMORY_PREFS_TTL`, flag `--memory-prefs-ttl`.
     * @defaultValue `604800`
     */
    readonly prefsTtl: number;
    /**
     * Default rate-limit window in seconds (agent:<id>:ratelimit:<window> counters expire with it).
     *
     * Setting `memory.rateLimitWindow`: environment `AGENTD_MEMORY_RATE_LIMIT_WINDOW`, flag `--memory-rate-limit-window`.
     * @defaultValue `60`
     */
    readonly rateLimitWindow: number;
    /**
     * Seconds between checks of Redis memory use (INFO memory); 0 turns the check off.
     *
     * Setting `memory.checkInterval`: environment `AGENTD_MEMORY_CHECK_INTERVAL`, flag `--memory-check-interval`.
     * @defaultValue `60`
     */
    readonly checkInterval: number;
    /**
     * Warn when Redis used memory passes this fraction of maxmemory (evictions start at the limit).
     *
     * Setting `memory.warnRatio`: environment `AGENTD_MEMORY_WARN_RATIO`, flag `--memory-warn-ratio`.
     * @defaultValue `0.8`
     */
    readonly warnRatio: number;
  };
  readonly durable: {
    /**
     * Durable messages on Redis Streams: read this agent's inbox (inbox:<id>) and its den's shared tasks
     * (den:<den>:tasks) and hand them to the handlers, at least once (docs/durable.md).
     *
     * Setting `durable.enabled`: environment `AGENTD_DURABLE_ENABLED`, flag `--durable-enabled`.
     * @defaultValue `true`
     */
    readonly enabled: boolean;
    /**
     * Deliveries of one durable entry before it is moved to the dead-letter stream (inbox:<id>:dead,
     * den:<den>:dead).
     *
     * Setting `durable.attempts`: environment `AGENTD_DURABLE_ATTEMPTS`, flag `--durable-attempts`.
     * @defaultValue `5`
     */
    readonly attempts: number;
    /**
     * Wait before the first retry of a failed durable entry, in ms; doubles with each attempt up to
     * durable.backoffMaxMs.
     *
     * Setting `durable.backoffMs`: environment `AGENTD_DURABLE_BACKOFF_MS`, flag `--durable-backoff-ms`.
     * @defaultValue `1000`
     */
    readonly backoffMs: number;
    /**
     * Longest wait between two attempts of a durable entry, in ms.
     *
     * Setting `durable.backoffMaxMs`: environment `AGENTD_DURABLE_BACKOFF_MAX_MS`, flag `--durable-backoff-max-ms`.
     * @defaultValue `60000`
     */
    readonly backoffMaxMs: number;
    /**
     * Durable entries handled at once; at most as many more are read ahead, the rest wait in Redis
     * (backpressure, never dropped).
     *
     * Setting `durable.concurrency`: environment `AGENTD_DURABLE_CONCURRENCY`, flag `--durable-concurrency`.
     * @defaultValue `16`
     */
    readonly concurrency: number;
    /**
     * Approximate cap (XADD MAXLEN ~) of every inbox, task and dead-letter stream agentd writes; an entry
     * trimmed before it was acknowledged is counted and logged.
     *
     * Setting `durable.maxLen`: environment `AGENTD_DURABLE_MAX_LEN`, flag `--durable-max-len`.
     * @defaultValue `10000`
     */
    readonly maxLen: number;
    /**
     * Seconds between reads of the streams when no doorbell rang (fractions allowed): the longest a sender that
     * does not PUBLISH waits.
     *
     * Setting `durable.pollInterval`: environment `AGENTD_DURABLE_POLL_INTERVAL`, flag `--durable-poll-interval`.
     * @defaultValue `1`
     */
    readonly pollInterval: number;
    /**
     * Seconds a den task may stay pending without its claim being refreshed before a live member takes it (the
     * safety net behind the hand-over at agent_down; a running handler's claim is refreshed every orphanAfter /
     * 4, so pollInterval must be at most that).
     *
     * Setting `durable.orphanAfter`: environment `AGENTD_DURABLE_ORPHAN_AFTER`, flag `--durable-orphan-after`.
     * @defaultValue `120`
     */
    readonly orphanAfter: number;
    /**
     * Seconds the inbox of an agent that is down or offline is kept for its return; then its unacknowledged
     * entries are moved to inbox:<id>:dead.
     *
     * Setting `durable.retention`: environment `AGENTD_DURABLE_RETENTION`, flag `--durable-retention`.
     * @defaultValue `86400`
     */
    readonly retention: number;
  };
  /**
   * Plugin modules: paths (relative to the config file, or to the working directory when given by environment or
   * flag) or package names; in a config file also {"module": "...", "options": {...}}. Comma-separated in the
   * environment.
   *
   * Setting `plugins`: environment `AGENTD_PLUGINS`, flag `--plugins`.
   * @defaultValue `[]`
   */
  readonly plugins: readonly PluginSpec[];
  readonly lifecycle: {
    /**
     * Time limit for each plugin's setup() and close(), in ms.
     *
     * Setting `lifecycle.setupTimeoutMs`: environment `AGENTD_SETUP_TIMEOUT_MS`, flag `--setup-timeout-ms`.
     * @defaultValue `10000`
     */
    readonly setupTimeoutMs: number;
    /**
     * On SIGTERM/SIGINT, how long queued and running handlers may take to finish, in ms (keep it below the
     * supervisor's stop timeout: Docker gives 10 s).
     *
     * Setting `lifecycle.drainTimeoutMs`: environment `AGENTD_DRAIN_TIMEOUT_MS`, flag `--drain-timeout-ms`.
     * @defaultValue `8000`
     */
    readonly drainTimeoutMs: number;
  };
  readonly http: {
    /**
     * Address the health and metrics endpoint listens on (0.0.0.0 in a container).
     *
     * Setting `http.host`: environment `AGENTD_HTTP_HOST`, flag `--http-host`.
     * @defaultValue `'127.0.0.1'`
     */
    readonly host: string;
    /**
     * Port of the health and metrics endpoint (/healthz, /readyz, /metrics); 0 turns it off.
     *
     * Setting `http.port`: environment `AGENTD_HTTP_PORT`, flag `--http-port`.
     * @defaultValue `9464`
     */
    readonly port: number;
    /**
     * Serve the read-only den status page on the same endpoint: /status (HTML) and /status.json. Off by default;
     * no authentication, so keep the endpoint on loopback or a private network.
     *
     * Setting `http.statusPage`: environment `AGENTD_HTTP_STATUS_PAGE`, flag `--http-status-page`.
     * @defaultValue `false`
     */
    readonly statusPage: boolean;
  };
  readonly security: {
    /**
     * Signed envelopes (docs/security.md): off (publish unsigned, check nothing), warn (sign; count and log
     * unsigned or bad messages but dispatch them) or require (sign; drop them, counted by reason).
     *
     * Setting `security.signing`: environment `AGENTD_SECURITY_SIGNING`, flag `--security-signing`.
     * @defaultValue `'off'`
     */
    readonly signing: SigningMode;
    /**
     * File of signing keys, one "<kid> <secret>" a line; the first signs, all verify (needed unless signing is
     * off; must not be readable by others). Never logged.
     *
     * Setting `security.keysFile`: environment `AGENTD_SECURITY_KEYS_FILE`, flag `--security-keys-file`.
     * @defaultValue `''`
     */
    readonly keysFile: string;
    /**
     * Seconds a signed message's ts may differ from this host's clock before it is refused as stale.
     *
     * Setting `security.tolerance`: environment `AGENTD_SECURITY_TOLERANCE`, flag `--security-tolerance`.
     * @defaultValue `300`
     */
    readonly tolerance: number;
    /**
     * Refuse (count as channel_mismatch) an event whose type is not the one its channel agent:events:<type>
     * names.
     *
     * Setting `security.channelCheck`: environment `AGENTD_SECURITY_CHANNEL_CHECK`, flag `--security-channel-check`.
     * @defaultValue `true`
     */
    readonly channelCheck: boolean;
  };
  readonly log: {
    /**
     * Log level: fatal, error, warn, info, debug, trace or silent.
     *
     * Setting `log.level`: environment `AGENTD_LOG_LEVEL`, flag `--log-level`.
     * @defaultValue `'info'`
     */
    readonly level: LogLevel;
  };
}

/** Settings given as objects to embedding code; everything optional, filled from the schema defaults. */
export type DeepPartial<T> = T extends readonly (infer U)[]
  ? readonly U[]
  : T extends object
    ? { -readonly [K in keyof T]?: DeepPartial<T[K]> }
    : T;
