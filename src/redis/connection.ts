import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { EventEmitter } from 'eventemitter3';
import { Redis, type RedisOptions } from 'ioredis';
import type { AgentdConfig } from '../config/schema.ts';
import { redactUrl } from '../config/load.ts';
import { orAfter } from '../deadline.ts';
import { describeError } from '../errors.ts';
import type { Logger } from '../log.ts';
import { sentinelOptions } from './sentinel.ts';

export type ConnectionRole = 'command' | 'subscriber';
export type ConnectionState = 'connecting' | 'ready' | 'reconnecting' | 'closed';

export interface ConnectionStateChange {
  readonly role: ConnectionRole;
  readonly state: ConnectionState;
  /** How long the connection had been down when it became ready again, in ms. */
  readonly downMs?: number;
  readonly attempt?: number;
  readonly delayMs?: number;
  readonly error?: string;
}

/** Initial delay before the first TCP keepalive probe, in ms (Linux then probes every 75 s by default). */
export const KEEPALIVE_MS = 10_000;

/** Exponential backoff with equal jitter: half fixed, half random, so a fleet does not reconnect in step. */
export function reconnectDelay(attempt: number, maxDelayMs: number, random: () => number = Math.random): number {
  const base = Math.min(maxDelayMs, 50 * 2 ** Math.min(attempt, 16));
  return Math.round(base / 2 + (random() * base) / 2);
}

/** The database number a redis:// URL selects: its path, 0 when it has none (config load checked that it is a number). */
export function redisDb(url: string): number {
  const db = new URL(url).pathname.replace(/^\//, '');
  return db === '' ? 0 : Number(db);
}

/** The connection options both clients share, built from the config alone (secrets read from files here). */
export function redisOptions(config: AgentdConfig, role: ConnectionRole): RedisOptions {
  const url = new URL(config.redis.url);
  const tlsConf = config.redis.tls;
  let password = url.password === '' ? undefined : decodeURIComponent(url.password);
  if (config.redis.passwordFile !== '') {
    password = readFileSync(config.redis.passwordFile, 'utf8').split(/\r?\n/, 1)[0] ?? '';
  }
  const options: RedisOptions = {
    host: url.hostname.replace(/^\[(.*)\]$/, '$1'),
    port: url.port === '' ? 6379 : Number(url.port),
    db: redisDb(config.redis.url),
    connectionName: `agentd:${config.agent.id}:${role === 'command' ? 'cmd' : 'sub'}`,
    // RESP2: the protocol every Redis-compatible server and proxy speaks; nothing here needs RESP3.
    protocol: 2,
    lazyConnect: true,
    // ioredis 6's connectTimeout covers the TCP connect and the TLS handshake only; Connections adds
    // the same deadline from 'connect' to 'ready' (AUTH, SELECT, CLIENT SETNAME unanswered).
    connectTimeout: config.redis.connectTimeoutMs,
    // ioredis's ready check (INFO) prints a raw line to stderr when INFO is refused (NOPERM); the
    // server check at start (src/redis/preflight.ts) asks INFO itself and reports what is missing.
    enableReadyCheck: false,
    // CLIENT SETINFO is Redis 7.2+; older servers and tight ACLs refuse it, to no purpose here.
    disableClientInfo: true,
    // TCP keepalive: a peer that vanished without a FIN is found by the kernel even while idle.
    keepAlive: KEEPALIVE_MS,
    // A command issued while disconnected fails at once instead of waiting to be replayed later:
    // a presence write replayed after an outage could undo a newer state.
    enableOfflineQueue: false,
    autoResendUnfulfilledCommands: false,
    maxRetriesPerRequest: 0,
    // The subscriber re-subscribes itself on every ready and confirms it with a probe.
    autoResubscribe: false,
    retryStrategy: (times: number) => reconnectDelay(times, config.redis.reconnectMaxDelayMs),
  };
  if (url.username !== '') options.username = decodeURIComponent(url.username);
  if (password !== undefined) options.password = password;
  if (role === 'command' && config.redis.commandTimeoutMs > 0) options.commandTimeout = config.redis.commandTimeoutMs;
  // A half-open connection (bytes lost, TCP still open): when a command has waited this long without a
  // single byte coming back, ioredis destroys the socket and the connection is recycled (reconnects).
  if (config.redis.commandTimeoutMs > 0) options.socketTimeout = config.redis.commandTimeoutMs;
  if (url.protocol === 'rediss:') {
    options.tls = {
      // SNI must be a host name (RFC 6066): for an IP, verification still checks the IP SAN.
      ...(tlsConf.serverName !== '' ? { servername: tlsConf.serverName } : isIP(options.host ?? '') ? {} : { servername: options.host ?? 'localhost' }),
      rejectUnauthorized: tlsConf.verify,
      ...(tlsConf.caFile !== '' ? { ca: readFileSync(tlsConf.caFile) } : {}),
      ...(tlsConf.certFile !== '' ? { cert: readFileSync(tlsConf.certFile), key: readFileSync(tlsConf.keyFile) } : {}),
    };
  }
  if (config.redis.sentinels.length > 0) Object.assign(options, sentinelOptions(config, options));
  return options;
}

/**
 * ioredis 6's constructor types `replyMapping` without `| undefined`, which a
 * RedisOptions value cannot satisfy under exactOptionalPropertyTypes.
 */
export function createClient(options: RedisOptions): Redis {
  return new Redis(options as RedisOptions & { replyMapping?: never });
}

/** Destroys a client's socket with an error: ioredis then emits error and close, and reconnects. */
function destroyStream(client: Redis, err: Error): void {
  const stream = (client as unknown as { stream?: { destroy(err?: Error): void; destroyed?: boolean } }).stream;
  if (stream && !stream.destroyed) stream.destroy(err);
  else client.disconnect(true);
}

/** A command the server refused for a reason no retry fixes by itself: permissions, or a replica. */
export interface Refusal {
  readonly role: ConnectionRole;
  readonly kind: 'NOPERM' | 'READONLY';
  /** The refused command, lower case (e.g. `evalsha`). */
  readonly command: string;
  /** The server's message (redacted). */
  readonly message: string;
}

/** Connection handshake commands whose refusal ioredis tolerates (CLIENT SETNAME is only a label). */
const IGNORED_REFUSALS = new Set(['client', 'quit']);

interface ConnectionEvents {
  state: (change: ConnectionStateChange) => void;
  /** A flapping connection stayed up for a whole redis.flapWindowMs. */
  steady: (role: ConnectionRole) => void;
  refused: (refusal: Refusal) => void;
}

/**
 * Owns the daemon's two Redis clients — one for commands and publishing, one
 * for subscriptions — and turns their many low-level events into one log
 * line and one `state` event per change.
 */
export class Connections extends EventEmitter<ConnectionEvents> {
  readonly command: Redis;
  readonly subscriber: Redis;
  readonly #log: Logger;
  readonly #secrets: string[];
  readonly #connectTimeoutMs: number;
  readonly #minRecycleGapMs: number;
  readonly #sentinelName: string;
  readonly #reconnectLogIntervalMs: number;
  readonly #flapThreshold: number;
  readonly #flapWindowMs: number;
  readonly #lastRecycle: Record<ConnectionRole, number> = { command: 0, subscriber: 0 };
  readonly #flapping: Record<ConnectionRole, boolean> = { command: false, subscriber: false };
  #closing = false;

  constructor(config: AgentdConfig, log: Logger) {
    super();
    this.#log = log.child({ component: 'redis' });
    this.#connectTimeoutMs = config.redis.connectTimeoutMs;
    this.#minRecycleGapMs = config.redis.reconnectMaxDelayMs;
    this.#sentinelName = config.redis.sentinelName;
    this.#reconnectLogIntervalMs = config.redis.reconnectLogIntervalMs;
    this.#flapThreshold = config.redis.flapLosses;
    this.#flapWindowMs = config.redis.flapWindowMs;
    const commandOptions = redisOptions(config, 'command');
    this.#secrets = [commandOptions.password, new URL(config.redis.url).password].filter(
      (s): s is string => typeof s === 'string' && s.length >= 3,
    );
    this.command = createClient(commandOptions);
    this.subscriber = createClient(redisOptions(config, 'subscriber'));
    // ioredis reads its options on every command and reconnect (keyPrefix, db, retryStrategy…):
    // frozen, so code that reaches them (a plugin, through ctx.redis.options) cannot redirect our writes.
    for (const client of [this.command, this.subscriber]) Object.freeze(client.options);
    this.#watch(this.command, 'command');
    this.#watch(this.subscriber, 'subscriber');
    this.#observeReplies(this.command, 'command');
    this.#observeReplies(this.subscriber, 'subscriber');
    const sentinels = config.redis.sentinels.length > 0 ? { sentinels: [...config.redis.sentinels], sentinelName: config.redis.sentinelName } : { target: redactUrl(config.redis.url) };
    this.#log.info({ ...sentinels, tls: commandOptions.tls !== undefined }, 'redis target');
    if (commandOptions.tls && config.redis.tls.verify === false) {
      this.#log.warn('TLS certificate verification is OFF (redis.tls.verify=false): the connection can be intercepted');
    }
  }

  /** A message made safe to log: never contains the password. */
  redact(message: string): string {
    let out = message;
    for (const s of this.#secrets) out = out.split(s).join('***');
    return out;
  }

  /**
   * Sees every command's error reply, whoever sent it (presence, the watcher's scripts, plugins
   * through ctx.redis): NOPERM and READONLY are surfaced as a `refused` event, logged once per
   * command and kind; READONLY (our primary was demoted) also recycles the connection, so a
   * failover behind a DNS name or proxy is followed.
   */
  #observeReplies(client: Redis, role: ConnectionRole): void {
    const logged = new Set<string>();
    const original = client.sendCommand.bind(client);
    const onError = (name: string, err: unknown): void => {
      const message = err instanceof Error ? err.message : '';
      const kind = /\bNOPERM\b/.test(message) ? 'NOPERM' : /\bREADONLY\b/.test(message) ? 'READONLY' : undefined;
      if (kind === undefined || IGNORED_REFUSALS.has(name) || this.#closing) return;
      const refusal: Refusal = { role, kind, command: name, message: this.redact(describeError(err)) };
      const key = `${kind}:${name}`;
      if (!logged.has(key)) {
        logged.add(key);
        this.#log.error(
          { conn: role, command: name, err: refusal.message },
          kind === 'NOPERM' ? `redis refused ${name.toUpperCase()} (NOPERM): the ACL user lacks a permission agentd needs` : 'redis answered READONLY: the server is a replica now (failover?); recycling the connection',
        );
      }
      if (kind === 'READONLY') this.recycle(role, 'server answered READONLY');
      this.emit('refused', refusal);
    };
    (client as unknown as { sendCommand: typeof client.sendCommand }).sendCommand = ((command: Parameters<typeof client.sendCommand>[0], stream?: unknown) => {
      const cmd = command as unknown as { name?: string; promise?: Promise<unknown> };
      cmd.promise?.catch((err: unknown) => onError(String(cmd.name ?? '').toLowerCase(), err));
      return (original as (c: unknown, s?: unknown) => unknown)(command, stream);
    }) as typeof client.sendCommand;
  }

  #watch(client: Redis, role: ConnectionRole): void {
    let lastError: string | undefined;
    /** Errors logged since the connection was last ready: a hang alternating two errors is two lines, not one per attempt. */
    const loggedErrors = new Set<string>();
    let downSince: number | undefined = Date.now();
    let wasReady = false;
    let lastReconnectLog = 0;
    let reconnectLogged = false;
    // Flap damping (redis.flapLosses within redis.flapWindowMs): a connection lost that many times
    // within the window is flapping: its per-loss lines (error, lost, reconnecting, ready again) go
    // to debug, one warn line says so (again every window while it goes on), and one info line says
    // when it has stayed up for a whole window. A path that drops every few hundred ms must not
    // write four lines per drop.
    const losses: number[] = [];
    let flapping = false;
    let flapLosses = 0;
    let lastFlapLog = 0;
    let steadyTimer: NodeJS.Timeout | undefined;
    const flapErrors = new Set<string>();
    const emit = (change: ConnectionStateChange): void => {
      this.emit('state', change);
    };
    client.on('error', (err: unknown) => {
      lastError = this.redact(sentinelError(describeError(err), this.#sentinelName));
      // A recycle was asked for and logged by whoever asked (the probe, a READONLY reply).
      if (err instanceof Error && err.message.startsWith('recycled: ')) return;
      // The same error on every retry is one line, not one per attempt.
      if (!loggedErrors.has(lastError) && loggedErrors.size < 20) {
        loggedErrors.add(lastError);
        // While flapping, an error not seen in this flapping episode is still a warn line.
        const fresh = !flapErrors.has(lastError) && flapErrors.size < 20;
        if (flapping && fresh) flapErrors.add(lastError);
        this.#log[flapping && !fresh ? 'debug' : 'warn']({ conn: role, err: lastError }, 'redis connection error');
      }
    });
    // ioredis's connectTimeout ends at the TCP connect (TLS: the handshake); a server or proxy that
    // accepts and then never answers AUTH/SELECT would leave the client in 'connect' for ever.
    let readyDeadline: NodeJS.Timeout | undefined;
    client.on('connect', () => {
      clearTimeout(readyDeadline);
      readyDeadline = setTimeout(() => {
        if ((client.status !== 'connect' && client.status !== 'ready') || this.#closing) return;
        // Logged by the error handler (once, as every repeated connection error).
        const message = `no answer within ${this.#connectTimeoutMs} ms of connecting (redis.connectTimeoutMs): handshake, AUTH, SELECT or PING unanswered`;
        destroyStream(client, new Error(`connect deadline: ${message}`));
      }, this.#connectTimeoutMs);
      readyDeadline.unref();
    });
    client.on('close', () => clearTimeout(readyDeadline));
    // ioredis says 'ready' once the handshake is sent and settled, which on a path that swallows
    // bytes can be a timeout, not an answer: the connection counts as ready once a PING is answered.
    client.on('ready', () => {
      const stream = (client as unknown as { stream?: unknown }).stream;
      client.ping().then(
        () => {
          if ((client as unknown as { stream?: unknown }).stream === stream && client.status === 'ready') onAnswered();
        },
        (err: unknown) => {
          // Refused (NOPERM) is still an answer; a timeout or a closed connection is not.
          if (/\bNOPERM\b/.test(describeError(err)) && client.status === 'ready') onAnswered();
        },
      );
    });
    const onAnswered = (): void => {
      clearTimeout(readyDeadline);
      const downMs = downSince === undefined ? 0 : Date.now() - downSince;
      downSince = undefined;
      loggedErrors.clear();
      reconnectLogged = false;
      this.#log[flapping ? 'debug' : 'info']({ conn: role, ...(wasReady ? { downMs } : {}) }, wasReady ? 'redis connection ready again' : 'redis connection ready');
      clearTimeout(steadyTimer);
      if (flapping) {
        steadyTimer = setTimeout(() => {
          if (!flapping || downSince !== undefined || this.#closing) return;
          flapping = false;
          this.#flapping[role] = false;
          losses.length = 0;
          this.#log.info({ conn: role, losses: flapLosses, steadyMs: this.#flapWindowMs }, 'redis connection steady again: up for a whole flap window');
          this.emit('steady', role);
        }, this.#flapWindowMs);
        steadyTimer.unref();
      }
      emit(wasReady ? { role, state: 'ready', downMs } : { role, state: 'ready' });
      wasReady = true;
    };
    client.on('close', () => {
      clearTimeout(steadyTimer);
      if (downSince === undefined) {
        const now = Date.now();
        downSince = now;
        if (this.#closing) return;
        losses.push(now);
        while ((losses[0] ?? now) <= now - this.#flapWindowMs) losses.shift();
        if (flapping) flapLosses++;
        if (!flapping && losses.length >= this.#flapThreshold) {
          flapping = true;
          this.#flapping[role] = true;
          flapErrors.clear();
          if (lastError !== undefined) flapErrors.add(lastError);
          flapLosses = losses.length;
          lastFlapLog = now;
          this.#log.warn(
            { conn: role, losses: losses.length, windowMs: this.#flapWindowMs, ...(lastError ? { err: lastError } : {}) },
            'redis connection flapping: lost again and again; its lost, reconnecting and ready lines are logged at debug until it stays up for a whole window',
          );
        } else if (flapping && now - lastFlapLog >= this.#flapWindowMs) {
          lastFlapLog = now;
          this.#log.warn({ conn: role, losses: flapLosses, windowMs: this.#flapWindowMs, ...(lastError ? { err: lastError } : {}) }, 'redis connection still flapping');
        }
        this.#log[flapping ? 'debug' : 'warn']({ conn: role, ...(lastError ? { err: lastError } : {}) }, 'redis connection lost');
      }
    });
    client.on('reconnecting', (delayMs: number) => {
      if (this.#closing) return;
      const attempt = (client as unknown as { retryAttempts?: number }).retryAttempts;
      // One line when reconnecting starts, then one every redis.reconnectLogIntervalMs (30 s): an
      // outage must not flood the log.
      // (ioredis counts attempts from 1 again after every cut attempt, so "first" is "first since ready".)
      const now = Date.now();
      const level = (!reconnectLogged && !flapping) || now - lastReconnectLog >= this.#reconnectLogIntervalMs ? 'info' : 'debug';
      if (level === 'info') {
        lastReconnectLog = now;
        reconnectLogged = true;
      }
      this.#log[level]({ conn: role, delayMs, attempt, downMs: downSince === undefined ? 0 : now - downSince, ...(lastError ? { err: lastError } : {}) }, 'redis reconnecting');
      emit({ role, state: 'reconnecting', delayMs, ...(attempt !== undefined ? { attempt } : {}), ...(lastError ? { error: lastError } : {}) });
      // disconnect() called on the client in this very event (a plugin's listener gets the real
      // client as `this`) clears the retry timer that is set just after it: the client then stays
      // 'reconnecting' for ever. If no attempt started by the time the retry was due, start one.
      const epoch = (client as unknown as { connectionEpoch?: number }).connectionEpoch;
      setTimeout(() => {
        if (this.#closing || client.status !== 'reconnecting' || (client as unknown as { connectionEpoch?: number }).connectionEpoch !== epoch) return;
        this.#log.error({ conn: role }, 'redis connection was closed by something other than agentd (a plugin?); connecting again');
        client.connect().catch(() => undefined);
      }, delayMs + 1_000).unref();
    });
    client.on('end', () => {
      emit({ role, state: 'closed' });
      if (this.#closing || client.status !== 'end') return;
      // Only close() ends our clients (the retry strategy never gives up): something else quit
      // this one, a plugin around the guarded ctx.redis, say. It stays the daemon's: connect again.
      this.#log.error({ conn: role }, 'redis connection was closed by something other than agentd (a plugin?); connecting again');
      setTimeout(() => {
        if (!this.#closing && client.status === 'end') client.connect().catch(() => undefined);
      }, reconnectDelay(1, 1_000)).unref();
    });
  }

  /**
   * Drops one connection's socket so ioredis reconnects at once: for a connection that is open but
   * no longer works (a probe that never came back, a primary demoted to a replica). At most once per
   * `minGapMs` (default redis.reconnectMaxDelayMs) per connection; returns whether it recycled. A
   * connection that is not open is already on its way back and is left alone.
   */
  recycle(role: ConnectionRole, reason: string, minGapMs = this.#minRecycleGapMs): boolean {
    const client = role === 'command' ? this.command : this.subscriber;
    const now = Date.now();
    if (this.#closing || now - this.#lastRecycle[role] < minGapMs) return false;
    if (client.status !== 'ready' && client.status !== 'connect') return false;
    this.#lastRecycle[role] = now;
    this.#log.debug({ conn: role, reason }, 'recycling redis connection');
    destroyStream(client, new Error(`recycled: ${reason}`));
    return true;
  }

  /** Starts connecting both clients; retries forever in the background. */
  connect(): void {
    for (const [client, role] of [
      [this.command, 'command'],
      [this.subscriber, 'subscriber'],
    ] as const) {
      this.emit('state', { role, state: 'connecting' });
      // Failures surface as 'error' events and retries; the promise itself carries nothing new.
      client.connect().catch(() => undefined);
    }
  }

  /** Resolves once the client is ready, or rejects when the signal aborts. */
  static whenReady(client: Redis, signal?: AbortSignal): Promise<void> {
    if (client.status === 'ready') return Promise.resolve();
    return new Promise((resolve, reject) => {
      const onReady = (): void => {
        cleanup();
        resolve();
      };
      const onAbort = (): void => {
        cleanup();
        reject(signal?.reason ?? new Error('aborted'));
      };
      const cleanup = (): void => {
        client.off('ready', onReady);
        signal?.removeEventListener('abort', onAbort);
      };
      client.on('ready', onReady);
      if (signal?.aborted) onAbort();
      else signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  /** Whether either connection is flapping (see redis.flapLosses): its owner may damp its own per-loss lines too. */
  get flapping(): boolean {
    return this.#flapping.command || this.#flapping.subscriber;
  }

  get ready(): boolean {
    return this.command.status === 'ready' && this.subscriber.status === 'ready';
  }

  /** Closes both clients: QUIT when connected, a plain disconnect otherwise. */
  async close(): Promise<void> {
    this.#closing = true;
    await Promise.all(
      [this.command, this.subscriber].map(async (client) => {
        if (client.status === 'ready') {
          try {
            await orAfter(client.quit(), 1_000, undefined);
          } catch {
            // Already gone: nothing to flush.
          }
        }
        client.disconnect(false);
      }),
    );
  }
}

/**
 * ioredis's Sentinel errors made fit for the one-line-per-distinct-error rule: without the retry
 * delay that changes at every attempt, and naming the master name no Sentinel knows.
 */
function sentinelError(message: string, name: string): string {
  const out = message.replace(/ Retrying from scratch after \d+ms\./g, ' Retrying.');
  return /No such master with that name/.test(out) ? `${out} (redis.sentinelName "${name}": no Sentinel monitors a master by that name)` : out;
}
