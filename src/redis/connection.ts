import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { EventEmitter } from 'eventemitter3';
import { Redis, type RedisOptions } from 'ioredis';
import type { AgentdConfig } from '../config/schema.ts';
import { redactUrl } from '../config/load.ts';
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

/** Exponential backoff with equal jitter: half fixed, half random, so a fleet does not reconnect in step. */
export function reconnectDelay(attempt: number, maxDelayMs: number, random: () => number = Math.random): number {
  const base = Math.min(maxDelayMs, 50 * 2 ** Math.min(attempt, 16));
  return Math.round(base / 2 + (random() * base) / 2);
}

/** The connection options both clients share, built from the config alone (secrets read from files here). */
export function redisOptions(config: AgentdConfig, role: ConnectionRole): RedisOptions {
  const url = new URL(config.redis.url);
  const tlsConf = config.redis.tls;
  let password = url.password === '' ? undefined : decodeURIComponent(url.password);
  if (config.redis.passwordFile !== '') {
    password = readFileSync(config.redis.passwordFile, 'utf8').split(/\r?\n/, 1)[0] ?? '';
  }
  const db = url.pathname.replace(/^\//, '');
  const options: RedisOptions = {
    host: url.hostname.replace(/^\[(.*)\]$/, '$1'),
    port: url.port === '' ? 6379 : Number(url.port),
    db: db === '' ? 0 : Number(db),
    connectionName: `agentd:${config.agent.id}:${role === 'command' ? 'cmd' : 'sub'}`,
    // RESP2: the protocol every Redis-compatible server and proxy speaks; nothing here needs RESP3.
    protocol: 2,
    lazyConnect: true,
    connectTimeout: config.redis.connectTimeoutMs,
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

interface ConnectionEvents {
  state: (change: ConnectionStateChange) => void;
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
  #closing = false;

  constructor(config: AgentdConfig, log: Logger) {
    super();
    this.#log = log.child({ component: 'redis' });
    const commandOptions = redisOptions(config, 'command');
    this.#secrets = [commandOptions.password, new URL(config.redis.url).password].filter(
      (s): s is string => typeof s === 'string' && s.length >= 3,
    );
    this.command = createClient(commandOptions);
    this.subscriber = createClient(redisOptions(config, 'subscriber'));
    this.#watch(this.command, 'command');
    this.#watch(this.subscriber, 'subscriber');
    this.#log.info({ target: redactUrl(config.redis.url), tls: commandOptions.tls !== undefined }, 'redis target');
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

  #watch(client: Redis, role: ConnectionRole): void {
    let lastError: string | undefined;
    let lastLoggedError: string | undefined;
    let downSince: number | undefined = Date.now();
    let wasReady = false;
    let lastReconnectLog = 0;
    const emit = (change: ConnectionStateChange): void => {
      this.emit('state', change);
    };
    client.on('error', (err: unknown) => {
      lastError = this.redact(describeError(err));
      // The same error on every retry is one line, not one per attempt.
      if (lastError !== lastLoggedError) {
        lastLoggedError = lastError;
        this.#log.warn({ conn: role, err: lastError }, 'redis connection error');
      }
    });
    client.on('ready', () => {
      const downMs = downSince === undefined ? 0 : Date.now() - downSince;
      downSince = undefined;
      lastLoggedError = undefined;
      this.#log.info({ conn: role, ...(wasReady ? { downMs } : {}) }, wasReady ? 'redis connection ready again' : 'redis connection ready');
      emit(wasReady ? { role, state: 'ready', downMs } : { role, state: 'ready' });
      wasReady = true;
    });
    client.on('close', () => {
      if (downSince === undefined) {
        downSince = Date.now();
        if (!this.#closing) this.#log.warn({ conn: role, ...(lastError ? { err: lastError } : {}) }, 'redis connection lost');
      }
    });
    client.on('reconnecting', (delayMs: number) => {
      if (this.#closing) return;
      const attempt = (client as unknown as { retryAttempts?: number }).retryAttempts;
      // One line when reconnecting starts, then one every 30 s: an outage must not flood the log.
      const now = Date.now();
      const level = attempt === 1 || now - lastReconnectLog >= 30_000 ? 'info' : 'debug';
      if (level === 'info') lastReconnectLog = now;
      this.#log[level]({ conn: role, delayMs, attempt, downMs: downSince === undefined ? 0 : now - downSince, ...(lastError ? { err: lastError } : {}) }, 'redis reconnecting');
      emit({ role, state: 'reconnecting', delayMs, ...(attempt !== undefined ? { attempt } : {}), ...(lastError ? { error: lastError } : {}) });
    });
    client.on('end', () => {
      emit({ role, state: 'closed' });
    });
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
            await Promise.race([client.quit(), new Promise((r) => setTimeout(r, 1_000).unref())]);
          } catch {
            // Already gone: nothing to flush.
          }
        }
        client.disconnect(false);
      }),
    );
  }
}
