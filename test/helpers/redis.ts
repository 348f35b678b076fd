import { spawn, type ChildProcess } from 'node:child_process';
import { openSync, closeSync, readFileSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { connect as netConnect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { connect as tlsConnect } from 'node:tls';
import { Redis, type RedisOptions } from 'ioredis';
import { freePort } from './ports.ts';
import { trackChild, trackTempDir, untrackTempDir } from './reaper.ts';

export type RedisKind = 'external' | 'container' | 'local';

export interface TlsServerFiles {
  caCert: string;
  serverCert: string;
  serverKey: string;
}

export interface StartRedisOptions {
  /** Extra redis-server arguments, e.g. ['--maxmemory', '10mb']. */
  args?: string[];
  /** Serve TLS only (plain port disabled). */
  tls?: TlsServerFiles;
  /** With tls: require client certificates (--tls-auth-clients yes); the helper's own clients present the server's certificate, which is also valid for client auth. */
  tlsAuthClients?: boolean;
  /** The test needs kill/start/pause/resume: never use an external server. */
  requireControl?: boolean;
  /** --requirepass: `url` and `client()` carry it (never an external server). */
  password?: string;
}

/**
 * ioredis 6 makes Redis generic over `replyMapping`; its RedisOptions declares
 * `replyMapping?: ... | undefined`, which exactOptionalPropertyTypes refuses to
 * pass to the constructor. Leaving that key out lets Redis<'legacy'> be inferred.
 */
export type TestClientOptions = Omit<RedisOptions, 'replyMapping'>;

export interface TestRedis {
  readonly kind: RedisKind;
  readonly host: string;
  readonly port: number;
  /** redis://127.0.0.1:PORT, or rediss://localhost:PORT for TLS servers; with the password, if any. */
  readonly url: string;
  /** Whether kill/start/pause/resume are available. */
  readonly controllable: boolean;
  /** New ioredis client to this server; tracked and closed by stop(). TLS servers get the CA, password servers the password, automatically. */
  client(options?: TestClientOptions): Redis;
  /** Send a signal (default SIGKILL) and resolve once the server has exited. */
  kill(signal?: NodeJS.Signals): Promise<void>;
  /** (Re)start on the same port with the same args; resolves once it answers PING. No-op if running. */
  start(): Promise<void>;
  /** Freeze the server (SIGSTOP / docker pause): connections stay open but nothing is answered. */
  pause(): Promise<void>;
  resume(): Promise<void>;
  /** Kill the server, close clients, remove temp files. Idempotent. */
  stop(): Promise<void>;
}

const READY_TIMEOUT_MS = 15_000;
const DOCKER_PROBE_TIMEOUT_MS = 3_000;
const CONTAINER_IMAGE = process.env['AGENTD_TEST_REDIS_IMAGE'] ?? 'redis:7.2-alpine';

/**
 * A throwaway Redis for one test suite. Selection:
 *   1. AGENTD_TEST_REDIS_URL (unless tls/requireControl is asked for),
 *   2. a testcontainers Redis when a Docker engine answers,
 *   3. a local `redis-server` child process.
 * AGENTD_TEST_REDIS=docker|local forces 2 or 3 (and overrides the URL).
 */
export async function startRedis(opts: StartRedisOptions = {}): Promise<TestRedis> {
  const forced = process.env['AGENTD_TEST_REDIS'];
  if (forced !== undefined && forced !== '' && forced !== 'local' && forced !== 'docker') {
    throw new Error(`AGENTD_TEST_REDIS must be "local" or "docker", got ${JSON.stringify(forced)}`);
  }
  const externalUrl = process.env['AGENTD_TEST_REDIS_URL'];
  if (!forced && externalUrl && !opts.tls && !opts.requireControl && opts.password === undefined) {
    return new ExternalRedis(externalUrl);
  }

  if (forced === 'docker') return ContainerRedis.launch(opts);
  if (forced !== 'local' && (await dockerAvailable())) {
    try {
      return await ContainerRedis.launch(opts);
    } catch (err) {
      // A reachable engine can still fail (no network to pull, no port binding);
      // a local server keeps the suite running.
      process.stderr.write(`[test redis] container failed, falling back to local redis-server: ${String(err)}\n`);
    }
  }
  return LocalRedis.launch(opts);
}

// ---------------------------------------------------------------------------

let dockerProbe: Promise<boolean> | undefined;

/** Memoized per process: probing costs a few hundred ms even when nothing answers. */
function dockerAvailable(): Promise<boolean> {
  dockerProbe ??= (async () => {
    try {
      const { getContainerRuntimeClient } = await import('testcontainers');
      await withTimeout(getContainerRuntimeClient(), DOCKER_PROBE_TIMEOUT_MS, 'docker probe');
      return true;
    } catch {
      return false;
    }
  })();
  return dockerProbe;
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms}ms`)), ms);
    timer.unref();
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

interface TlsClientConfig {
  ca: Buffer;
  servername: string;
  cert?: Buffer;
  key?: Buffer;
}

/**
 * One raw PING over a fresh socket. Raw sockets instead of ioredis so probing
 * does not depend on the client's reconnect/RESP3 behaviour.
 */
function pingOnce(host: string, port: number, tls: TlsClientConfig | undefined, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    let settled = false;
    let buf = '';
    const sock: Socket = tls
      ? tlsConnect({ host, port, ...tls })
      : netConnect({ host, port });
    const done = (ok: boolean): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      sock.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), timeoutMs);
    sock.once(tls ? 'secureConnect' : 'connect', () => sock.write('PING\r\n'));
    sock.on('data', (chunk: Buffer) => {
      buf += chunk.toString('latin1');
      if (buf.includes('\r\n')) done(buf.startsWith('+PONG') || buf.startsWith('-NOAUTH')); // -NOAUTH: up, with --requirepass
    });
    sock.once('error', () => done(false));
    sock.once('close', () => done(false));
  });
}

async function waitForPing(
  host: string,
  port: number,
  tls: TlsClientConfig | undefined,
  aborted: () => string | undefined,
): Promise<void> {
  const deadline = Date.now() + READY_TIMEOUT_MS;
  for (;;) {
    const why = aborted();
    if (why !== undefined) throw new Error(why);
    if (await pingOnce(host, port, tls, 1_000)) return;
    if (Date.now() > deadline) throw new Error(`redis on ${host}:${port} did not answer PING within ${READY_TIMEOUT_MS}ms`);
    await sleep(50);
  }
}

function requirePass(opts: StartRedisOptions): string[] {
  return opts.password === undefined ? [] : ['--requirepass', opts.password];
}

/** The URL a daemon is given for a server: rediss:// for TLS, with the password when there is one. */
function serverUrl(opts: StartRedisOptions, host: string, port: number): string {
  const auth = opts.password === undefined ? '' : `:${encodeURIComponent(opts.password)}@`;
  return `${opts.tls ? 'rediss' : 'redis'}://${auth}${host}:${port}`;
}

/** `redis.url` logged in as another user (an ACL user) or with another password. */
export function redisUrl(redis: Pick<TestRedis, 'url'>, auth: { user?: string; password?: string }): string {
  const u = new URL(redis.url);
  u.username = auth.user === undefined ? '' : encodeURIComponent(auth.user);
  u.password = auth.password === undefined ? '' : encodeURIComponent(auth.password);
  return u.toString();
}

function tlsClientConfig(files: TlsServerFiles | undefined): TlsClientConfig | undefined {
  return files && { ca: readFileSync(files.caCert), servername: 'localhost' };
}

/** Shared client bookkeeping. */
abstract class BaseRedis implements TestRedis {
  abstract readonly kind: RedisKind;
  abstract readonly host: string;
  abstract readonly port: number;
  abstract readonly url: string;
  abstract readonly controllable: boolean;
  protected readonly clients = new Set<Redis>();
  protected tlsClient: TlsClientConfig | undefined;
  protected password: string | undefined;
  private stopping: Promise<void> | undefined;

  client(options: TestClientOptions = {}): Redis {
    const base: TestClientOptions = { host: this.host, port: this.port };
    if (this.tlsClient) base.tls = { ...this.tlsClient };
    if (this.password !== undefined) base.password = this.password;
    const c = new Redis({ ...base, ...options });
    this.track(c);
    return c;
  }

  protected track(c: Redis): void {
    this.clients.add(c);
    // Tests that kill the server would otherwise get unhandled 'error' events.
    c.on('error', () => {});
    c.once('end', () => this.clients.delete(c));
  }

  abstract kill(signal?: NodeJS.Signals): Promise<void>;
  abstract start(): Promise<void>;
  abstract pause(): Promise<void>;
  abstract resume(): Promise<void>;
  protected abstract teardown(): Promise<void>;

  stop(): Promise<void> {
    this.stopping ??= (async () => {
      // disconnect() (not quit()) so a dead or paused server cannot block teardown.
      for (const c of this.clients) c.disconnect();
      this.clients.clear();
      await this.teardown();
    })();
    return this.stopping;
  }
}

// ---------------------------------------------------------------------------

class ExternalRedis extends BaseRedis {
  readonly kind = 'external';
  readonly controllable = false;
  readonly host: string;
  readonly port: number;
  readonly url: string;

  constructor(url: string) {
    super();
    const u = new URL(url);
    this.url = url;
    this.host = u.hostname;
    this.port = u.port ? Number(u.port) : 6379;
  }

  // The URL may carry credentials, a db number or rediss://, so let ioredis parse it.
  override client(options: TestClientOptions = {}): Redis {
    const c = new Redis(this.url, options);
    this.track(c);
    return c;
  }

  private notControllable(): Promise<never> {
    return Promise.reject(
      new Error('external Redis (AGENTD_TEST_REDIS_URL) is not controllable; pass requireControl: true to startRedis()'),
    );
  }
  kill(): Promise<void> { return this.notControllable(); }
  start(): Promise<void> { return this.notControllable(); }
  pause(): Promise<void> { return this.notControllable(); }
  resume(): Promise<void> { return this.notControllable(); }
  protected async teardown(): Promise<void> {}
}

// ---------------------------------------------------------------------------

class LocalRedis extends BaseRedis {
  readonly kind = 'local';
  readonly controllable = true;
  readonly host = '127.0.0.1';
  port = 0;
  url = '';
  private readonly dir: string;
  private readonly logFile: string;
  private readonly opts: StartRedisOptions;
  private proc: ChildProcess | undefined;
  private paused = false;
  private spawnFailed = false;

  private constructor(dir: string, opts: StartRedisOptions) {
    super();
    this.dir = dir;
    this.logFile = join(dir, 'redis.log');
    this.opts = opts;
    this.password = opts.password;
    this.tlsClient = tlsClientConfig(opts.tls);
    if (this.tlsClient && opts.tls && opts.tlsAuthClients) {
      this.tlsClient.cert = readFileSync(opts.tls.serverCert);
      this.tlsClient.key = readFileSync(opts.tls.serverKey);
    }
  }

  static async launch(opts: StartRedisOptions): Promise<LocalRedis> {
    const dir = await mkdtemp(join(tmpdir(), 'agentd-redis-'));
    trackTempDir(dir);
    const r = new LocalRedis(dir, opts);
    // freePort() is racy, so a bind failure gets a few fresh ports.
    let lastErr: unknown;
    for (let attempt = 0; attempt < 4; attempt++) {
      r.setPort(await freePort());
      try {
        await r.start();
        return r;
      } catch (err) {
        lastErr = err;
        await r.kill();
        if (r.spawnFailed) break; // e.g. redis-server not installed: a new port won't help
      }
    }
    await r.stop();
    throw lastErr;
  }

  private setPort(port: number): void {
    this.port = port;
    this.url = serverUrl(this.opts, this.opts.tls ? 'localhost' : '127.0.0.1', port);
  }

  private args(): string[] {
    const p = String(this.port);
    const common = ['--save', '', '--appendonly', 'no', '--dir', this.dir, '--protected-mode', 'no', '--daemonize', 'no'];
    const tls = this.opts.tls;
    const listen = tls
      ? [
          // The URL says "localhost", which may resolve to ::1 first; "-" makes
          // the IPv6 address optional on hosts without it.
          '--bind', '127.0.0.1', '-::1',
          '--port', '0', '--tls-port', p,
          '--tls-cert-file', tls.serverCert, '--tls-key-file', tls.serverKey,
          '--tls-ca-cert-file', tls.caCert, '--tls-auth-clients', this.opts.tlsAuthClients ? 'yes' : 'no',
        ]
      : ['--bind', '127.0.0.1', '--port', p];
    return [...listen, ...common, ...requirePass(this.opts), ...(this.opts.args ?? [])];
  }

  private running(): boolean {
    const p = this.proc;
    // pid is undefined when spawning failed; such a child never emits 'exit'.
    return p !== undefined && p.pid !== undefined && p.exitCode === null && p.signalCode === null;
  }

  async start(): Promise<void> {
    if (this.running()) return;
    const fd = openSync(this.logFile, 'a');
    let proc: ChildProcess;
    try {
      proc = spawn('redis-server', this.args(), { stdio: ['ignore', fd, fd] });
    } finally {
      closeSync(fd); // the child has its own copy
    }
    this.proc = proc;
    this.paused = false;
    trackChild(proc);
    let spawnError: Error | undefined;
    proc.once('error', (err) => {
      spawnError = err;
      this.spawnFailed = true;
    });

    const aborted = (): string | undefined => {
      if (spawnError) return `could not run redis-server: ${spawnError.message}`;
      if (proc.exitCode !== null || proc.signalCode !== null) {
        return `redis-server exited (${proc.exitCode ?? proc.signalCode}) before answering PING:\n${this.logTail()}`;
      }
      return undefined;
    };
    try {
      await waitForPing(this.host, this.port, this.tlsClient, aborted);
    } catch (err) {
      throw new Error(`${(err as Error).message}\nlog: ${this.logFile}\n${this.logTail()}`, { cause: err });
    }
  }

  private logTail(lines = 20): string {
    try {
      return readFileSync(this.logFile, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
    } catch {
      return '(no log)';
    }
  }

  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    const proc = this.proc;
    if (!proc || !this.running()) return;
    const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
    proc.kill(signal);
    // A stopped process only acts on catchable signals once continued.
    if (this.paused && signal !== 'SIGKILL') proc.kill('SIGCONT');
    await exited;
    this.paused = false;
  }

  async pause(): Promise<void> {
    if (!this.running()) throw new Error('pause(): redis-server is not running');
    this.proc?.kill('SIGSTOP');
    this.paused = true;
  }

  async resume(): Promise<void> {
    if (!this.running()) throw new Error('resume(): redis-server is not running');
    this.proc?.kill('SIGCONT');
    this.paused = false;
  }

  protected async teardown(): Promise<void> {
    await this.kill('SIGKILL');
    await rm(this.dir, { recursive: true, force: true });
    untrackTempDir(this.dir);
  }

  /** Server log so far; handy in failure messages. */
  async log(): Promise<string> {
    return readFile(this.logFile, 'utf8').catch(() => '');
  }
}

// ---------------------------------------------------------------------------

type StartedRedisContainer = Awaited<ReturnType<import('@testcontainers/redis').RedisContainer['start']>>;
type DockerodeContainer = ReturnType<import('testcontainers').ContainerRuntimeClient['container']['getById']>;

class ContainerRedis extends BaseRedis {
  readonly kind = 'container';
  readonly controllable = true;
  readonly host: string;
  readonly port: number;
  readonly url: string;
  private readonly started: StartedRedisContainer;
  private readonly docker: DockerodeContainer;
  private paused = false;

  private constructor(started: StartedRedisContainer, docker: DockerodeContainer, port: number, opts: StartRedisOptions) {
    super();
    this.started = started;
    this.docker = docker;
    this.port = port;
    this.password = opts.password;
    this.tlsClient = tlsClientConfig(opts.tls);
    // The test certificate is issued for localhost, so TLS must use that name.
    this.host = opts.tls ? 'localhost' : started.getHost();
    this.url = serverUrl(opts, this.host, port);
  }

  static async launch(opts: StartRedisOptions): Promise<ContainerRedis> {
    const [{ RedisContainer }, { getContainerRuntimeClient }] = await Promise.all([
      import('@testcontainers/redis'),
      import('testcontainers'),
    ]);
    // A fixed host port keeps the address stable across kill()/start().
    const port = await freePort();
    const tls = opts.tls;
    const listen = tls
      ? [
          '--port', '0', '--tls-port', '6379',
          '--tls-cert-file', '/tls/server.crt', '--tls-key-file', '/tls/server.key',
          '--tls-ca-cert-file', '/tls/ca.crt', '--tls-auth-clients', 'no',
        ]
      : [];
    let container = new RedisContainer(CONTAINER_IMAGE)
      .withExposedPorts({ container: 6379, host: port })
      .withCommand(['redis-server', '--save', '', '--appendonly', 'no', '--protected-mode', 'no', ...listen, ...requirePass(opts), ...(opts.args ?? [])]);
    if (tls) {
      // 0o644: the image runs redis as a non-root user.
      container = container.withCopyFilesToContainer([
        { source: tls.caCert, target: '/tls/ca.crt', mode: 0o644 },
        { source: tls.serverCert, target: '/tls/server.crt', mode: 0o644 },
        { source: tls.serverKey, target: '/tls/server.key', mode: 0o644 },
      ]);
    }
    const started = await container.start();
    const client = await getContainerRuntimeClient();
    const r = new ContainerRedis(started, client.container.getById(started.getId()), port, opts);
    await waitForPing(r.host, r.port, r.tlsClient, () => undefined);
    return r;
  }

  private async isRunning(): Promise<boolean> {
    const info = await this.docker.inspect();
    return info.State.Running;
  }

  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    if (!(await this.isRunning())) return;
    if (this.paused) await this.resume();
    await this.docker.kill({ signal });
    await this.docker.wait();
  }

  async start(): Promise<void> {
    if (await this.isRunning()) return;
    await this.docker.start();
    this.paused = false;
    await waitForPing(this.host, this.port, this.tlsClient, () => undefined);
  }

  async pause(): Promise<void> {
    await this.docker.pause();
    this.paused = true;
  }

  async resume(): Promise<void> {
    await this.docker.unpause();
    this.paused = false;
  }

  protected async teardown(): Promise<void> {
    try {
      if (this.paused) await this.resume();
      await this.started.stop();
    } catch {
      // The reaper (ryuk) removes it at session end anyway.
      await this.docker.remove({ force: true }).catch(() => {});
    }
  }
}
