/**
 * The fixture for process and fault tests (test/process, test/fault, test/durable,
 * test/interop): `agentd run` as a real child process against a throwaway Redis,
 * as `redisSuite` (test/helpers/inproc.ts) is for in-process daemons.
 *
 *   const suite = processSuite({ redis: { requireControl: true }, env: { AGENTD_HEARTBEAT_TTL: '2' } });
 *   const a = await suite.start({ plugins: ['recorder.js'], http: true });
 *   await suite.cmd.publish(keys.channel('job'), seedMessage('job', { uid: 'x' }));
 *   await waitFor('job recorded', () => a.records().length === 1);
 *
 * Every daemon a test spawns is SIGKILLed after that test (one spawned in a beforeAll
 * after the file); the Redis and the temp folder go after the file. Called inside a
 * describe block, "the file" is that block. `run` runs a CLI command to its end with the
 * same settings; `freshRedis`, `sentinels`, `certs` and `aclUser` give the servers,
 * certificates and Redis users a test needs beyond the file's Redis. The checks fault
 * tests end with (no event handled twice, no fatal line, alive) are here too.
 */
import type { ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { isAbsolute, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, beforeAll, beforeEach, expect } from 'vitest';
import { runAgentd, spawnAgentd, type DaemonProcess, type RunAgentdResult } from './daemon.ts';
import { freePort } from './ports.ts';
import { startProxy, type TcpProxy } from './proxy.ts';
import { redisUrl, startRedis, type StartRedisOptions, type TestRedis } from './redis.ts';
import { trackChild } from './reaper.ts';
import { startSentinelTopology, type SentinelTopology } from './sentinel.ts';
import { makeTestCerts, type TestCerts } from './tls.ts';
import { redisFixture, type RedisFixture } from './suite.ts';
import { hasMsg, uniqueId, type LogLine } from './util.ts';

/** test/fixtures/plugins/, with a trailing slash. */
export const FIXTURES = fileURLToPath(new URL('../fixtures/plugins/', import.meta.url));
/** A plugin fixture by file name. */
export const fixture = (name: string): string => `${FIXTURES}${name}`;
/** Records every event it gets to $RECORD_FILE (one JSON line each); see readRecords. */
export const RECORDER = fixture('recorder.js');

const READY_TIMEOUT_MS = 20_000;

export interface AgentOptions {
  /** Default: a fresh unique id. */
  id?: string;
  /** Default: a fresh unique den. */
  den?: string;
  /** The recorder's file; default <tmp>/<id>.jsonl. */
  file?: string;
  /** Plugin files: names in test/fixtures/plugins/ or absolute paths (AGENTD_PLUGINS). */
  plugins?: readonly string[];
  /** Environment on top of the suite's (a value '' leaves the variable out). */
  env?: Record<string, string>;
  /** Give the daemon a free port for /healthz, /readyz and /metrics (AGENTD_HTTP_PORT). */
  http?: boolean;
  /** Default: the suite Redis's URL (a proxy's, for instance). */
  redisUrl?: string;
  /** Default ['run']. */
  args?: readonly string[];
}

/** A spawned daemon with the names it was given. */
export interface Agent extends DaemonProcess {
  readonly id: string;
  readonly den: string;
  /** The recorder's file ($RECORD_FILE), in the suite's temp folder. */
  readonly file: string;
  /** Its health/metrics port; 0 without `http`. */
  readonly httpPort: number;
  /** Resolves on its 'agentd ready' line. */
  ready(timeoutMs?: number): Promise<LogLine>;
  /** What the recorder fixture wrote so far. */
  records(): Recorded[];
  /** One GET of /metrics (needs `http`). */
  scrape(): Promise<string>;
}

/** A CLI command run to its end (`agentd config`, `members`, a `run` that must fail). */
export interface RunOptions {
  /** Environment on top of the suite's (a value '' leaves the variable out). */
  env?: Record<string, string>;
  /** Default: the suite Redis's URL, if the suite has one. */
  redisUrl?: string;
  cwd?: string;
  /** Written to stdin. */
  input?: string;
  /** Default 30 s. */
  timeoutMs?: number;
}

export interface ProcessSuite extends RedisFixture {
  /** A temp folder for the file, removed after it. */
  readonly tmp: string;
  /** Spawns a daemon, not waiting for it to be ready. */
  spawn(opts?: AgentOptions): Promise<Agent>;
  /** Spawns a daemon and waits for its ready line. */
  start(opts?: AgentOptions): Promise<Agent>;
  /** Runs `agentd <args>` to its end with the suite's environment (and its Redis URL). */
  run(args: readonly string[], opts?: RunOptions): Promise<RunAgentdResult>;
  /** Starts `n` daemons in one den (opts.den or a fresh one) and waits for all to be ready. */
  group(n: number, opts?: AgentOptions, optsOf?: (i: number) => AgentOptions): Promise<{ den: string; agents: Agent[] }>;
  /**
   * Another Redis (AOF, OOM, TLS, a replica, Cluster mode...): started in a test, it is
   * stopped after the test; started in a beforeAll, after the file.
   */
  freshRedis(options?: StartRedisOptions): Promise<TestRedis>;
  /** One primary, one replica and three Sentinels (test/helpers/sentinel.ts); stopped like freshRedis. */
  sentinels(options?: Parameters<typeof startSentinelTopology>[0]): Promise<SentinelTopology>;
  /** A CA, a server certificate for localhost and an unrelated CA (test/helpers/tls.ts), made once per file in tmp. */
  certs(): Promise<TestCerts>;
  /**
   * (Re)creates the ACL user `user` on the suite Redis with `rule` (the words after the
   * user name; `>PASSWORD`, as `agentd acl` and docs/operations.md print it, becomes
   * `>password`) and returns the suite Redis's URL logged in as that user.
   */
  aclUser(user: string, rule: readonly string[], password: string): Promise<string>;
  /** A TCP proxy in front of the suite Redis (test/helpers/proxy.ts), closed after the test. */
  proxy(): Promise<TcpProxy>;
  /** Stops `d` with the test's daemons, or the file's (for processes and servers a test starts itself). */
  track<T extends { stop(): Promise<void> }>(d: T): T;
  /**
   * Stops a child process of the test's own (a receiver, Prometheus, the demo) like
   * `track`: SIGKILL, or SIGTERM and SIGKILL after `graceMs` when it is given.
   */
  trackProcess(child: ChildProcess, graceMs?: number): ChildProcess;
}

export interface ProcessSuiteOptions {
  /** The file's Redis; false: none (each test gets its own with freshRedis, and passes redisUrl). */
  redis?: StartRedisOptions | false;
  /** Environment every daemon of the file gets. */
  env?: Record<string, string>;
}

export function processSuite(options: ProcessSuiteOptions = {}): ProcessSuite {
  const base = options.redis === false ? undefined : redisFixture(options.redis);
  const must = (): RedisFixture => {
    if (base === undefined) throw new Error('processSuite({ redis: false }) has no Redis of its own: use freshRedis() and redisUrl');
    return base;
  };
  let tmp: string | undefined;
  let certs: Promise<TestCerts> | undefined;
  let inTest = false;
  const ofTest: Array<{ stop(): Promise<void> }> = [];
  const ofFile: Array<{ stop(): Promise<void> }> = [];
  beforeAll(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'agentd-test-'));
  });
  beforeEach(() => {
    inTest = true;
  });
  afterEach(async () => {
    inTest = false;
    await Promise.all(ofTest.splice(0).map((d) => d.stop()));
  });
  afterAll(async () => {
    await Promise.all([...ofTest.splice(0), ...ofFile.splice(0)].map((d) => d.stop()));
    if (tmp) await rm(tmp, { recursive: true, force: true });
    tmp = undefined;
    certs = undefined;
  });

  const track = <T extends { stop(): Promise<void> }>(d: T): T => {
    (inTest ? ofTest : ofFile).push(d);
    return d;
  };

  const tmpDir = (): string => {
    if (tmp === undefined) throw new Error('processSuite: tmp, spawn() and certs() only inside tests and hooks');
    return tmp;
  };
  /** The suite's environment, then `env`; a value '' leaves the variable out. */
  const envOf = (first: Record<string, string>, env: Record<string, string> | undefined): Record<string, string> => {
    const all: Record<string, string> = { ...first, ...options.env, ...env };
    for (const [k, v] of Object.entries(all)) if (v === '') delete all[k];
    return all;
  };

  const spawn = async (opts: AgentOptions = {}): Promise<Agent> => {
    const tmp = tmpDir();
    const id = opts.id ?? uniqueId('agent');
    const den = opts.den ?? uniqueId('den');
    const file = opts.file ?? join(tmp, `${id}.jsonl`);
    const httpPort = opts.http ? await freePort() : 0;
    const env = envOf(
      {
        AGENTD_REDIS_URL: opts.redisUrl ?? must().redis.url,
        AGENTD_AGENT_ID: id,
        AGENTD_DEN: den,
        RECORD_FILE: file,
        ...(opts.plugins ? { AGENTD_PLUGINS: opts.plugins.map((p) => (isAbsolute(p) ? p : fixture(p))).join(',') } : {}),
        ...(opts.http ? { AGENTD_HTTP_PORT: String(httpPort) } : {}),
      },
      opts.env,
    );
    const d = track(spawnAgentd([...(opts.args ?? ['run'])], { env }));
    return {
      ...d,
      id,
      den,
      file,
      httpPort,
      ready: (timeoutMs = READY_TIMEOUT_MS) => d.waitForLog(hasMsg('agentd ready'), timeoutMs),
      records: () => readRecords(file),
      scrape: () => scrape(httpPort),
    };
  };

  const start = async (opts: AgentOptions = {}): Promise<Agent> => {
    const a = await spawn(opts);
    await a.ready();
    return a;
  };

  return {
    get redis() {
      return must().redis;
    },
    get cmd() {
      return must().cmd;
    },
    get tmp() {
      return tmpDir();
    },
    spawn,
    start,
    run(args, opts = {}) {
      const url = opts.redisUrl ?? base?.redis.url;
      const env = envOf(url === undefined ? {} : { AGENTD_REDIS_URL: url }, opts.env);
      return runAgentd([...args], {
        env,
        ...(opts.cwd === undefined ? {} : { cwd: opts.cwd }),
        ...(opts.input === undefined ? {} : { input: opts.input }),
        ...(opts.timeoutMs === undefined ? {} : { timeoutMs: opts.timeoutMs }),
      });
    },
    async group(n, opts = {}, optsOf) {
      const den = opts.den ?? uniqueId('den');
      const agents = await Promise.all(
        Array.from({ length: n }, (_, i) => {
          const more = optsOf?.(i) ?? {};
          return spawn({ ...opts, ...more, den, env: { ...opts.env, ...more.env } });
        }),
      );
      await Promise.all(agents.map((a) => a.ready()));
      return { den, agents };
    },
    async freshRedis(redisOptions) {
      return track(await startRedis(redisOptions));
    },
    async sentinels(topologyOptions) {
      return track(await startSentinelTopology(topologyOptions));
    },
    certs() {
      certs ??= makeTestCerts(join(tmpDir(), 'certs'));
      return certs;
    },
    async aclUser(user, rule, password) {
      const { redis, cmd } = must();
      await cmd.call('ACL', 'DELUSER', user);
      await cmd.call('ACL', 'SETUSER', user, ...rule.map((w) => (w === '>PASSWORD' ? `>${password}` : w)));
      return redisUrl(redis, { user, password });
    },
    async proxy() {
      const p = await startProxy({ host: must().redis.host, port: must().redis.port });
      track({ stop: () => p.close() });
      return p;
    },
    track,
    trackProcess(child, graceMs) {
      trackChild(child);
      const gone = (): boolean => child.exitCode !== null || child.signalCode !== null;
      const exited = new Promise<void>((resolve) => (gone() ? resolve() : child.once('exit', () => resolve())));
      track({
        async stop() {
          if (gone()) return;
          if (graceMs !== undefined) {
            child.kill('SIGTERM');
            await Promise.race([exited, new Promise((r) => setTimeout(r, graceMs))]);
          }
          if (!gone()) child.kill('SIGKILL');
          await exited;
        },
      });
      return child;
    },
  };
}

/**
 * The settings of a peer-health test: short heartbeats and sweeps, info logs (the
 * 'agent down' lines are read from them), and keyspace notifications as asked.
 */
export function peerHealthEnv(o: { ttl: number; interval: number; sweep: number; notifications?: 'enable' | 'off' }): Record<string, string> {
  return {
    AGENTD_LOG_LEVEL: 'info',
    AGENTD_HEARTBEAT_TTL: String(o.ttl),
    AGENTD_HEARTBEAT_INTERVAL: String(o.interval),
    AGENTD_SWEEP_INTERVAL: String(o.sweep),
    ...(o.notifications ? { AGENTD_WATCH_NOTIFICATIONS: o.notifications } : {}),
  };
}

/** The settings of the half-open tests (through a proxy, or iptables in a network namespace): every deadline short. */
export const HALF_OPEN = {
  ttlS: 6,
  intervalS: 1,
  probeIntervalS: 1,
  probeTimeoutMs: 500,
  connectTimeoutMs: 1_000,
  commandTimeoutMs: 1_000,
  reconnectMaxMs: 500,
} as const;

export const halfOpenEnv = (): Record<string, string> => ({
  AGENTD_HEARTBEAT_TTL: String(HALF_OPEN.ttlS),
  AGENTD_HEARTBEAT_INTERVAL: String(HALF_OPEN.intervalS),
  AGENTD_EVENT_PROBE_INTERVAL: String(HALF_OPEN.probeIntervalS),
  AGENTD_EVENT_PROBE_TIMEOUT_MS: String(HALF_OPEN.probeTimeoutMs),
  AGENTD_REDIS_CONNECT_TIMEOUT_MS: String(HALF_OPEN.connectTimeoutMs),
  AGENTD_REDIS_COMMAND_TIMEOUT_MS: String(HALF_OPEN.commandTimeoutMs),
  AGENTD_REDIS_RECONNECT_MAX_DELAY_MS: String(HALF_OPEN.reconnectMaxMs),
});

// --- what the recorder fixture wrote -------------------------------------------

export interface Recorded {
  event: string;
  data: unknown;
  channel: string;
  at: number;
}

/** What the recorder fixture (or another that writes one JSON object per line) wrote so far. */
export function readRecords<T = Recorded>(file: string): T[] {
  if (!existsSync(file)) return [];
  return readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => JSON.parse(l) as T);
}

/** The `uid`s of recorded events (records without one, e.g. agent_online, are skipped). */
export function recordedUids(file: string, pred: (r: { event: string; data: unknown }) => boolean = () => true): string[] {
  return readRecords(file)
    .filter(pred)
    .map((r) => (r.data as { uid?: unknown } | null)?.uid)
    .filter((u): u is string => typeof u === 'string');
}

/** No event handled twice: every uid in the recorder file appears once. */
export function expectNoDuplicates(file: string): number {
  const uids = recordedUids(file);
  const seen = new Set<string>();
  const dups = new Set<string>();
  for (const u of uids) (seen.has(u) ? dups : seen).add(u);
  expect([...dups], `events handled more than once (of ${uids.length} recorded)`).toEqual([]);
  return uids.length;
}

// --- the process's health -------------------------------------------------------

export function isAlive(d: DaemonProcess): boolean {
  return d.child.exitCode === null && d.child.signalCode === null;
}

/** No unhandled rejection or uncaught exception: no 'fatal' log line, nothing on stderr, nothing but JSON on stdout. */
export function expectNoFatal(d: DaemonProcess): void {
  const fatal = d.logs.filter((l) => l['level'] === 'fatal');
  expect(fatal, `fatal log lines: ${JSON.stringify(fatal)}`).toEqual([]);
  expect(d.stderr, 'daemon stderr').toEqual([]);
  expect(d.logs.filter((l) => 'raw' in l), 'non-JSON stdout lines').toEqual([]);
}

/**
 * The checks every fault test ends with: no event handled twice (every published event
 * carries a unique `uid`), no fatal line, nothing on stderr, no unhandled-rejection line,
 * and the process alive (unless the test stopped it).
 */
export function expectSound(d: DaemonProcess, file: string | undefined, { alive = true } = {}): void {
  if (file !== undefined) expectNoDuplicates(file);
  expectNoFatal(d);
  expect(d.logs.some((l) => /unhandled|uncaught/i.test(String(l['msg']))), 'no unhandled rejection / uncaught exception line').toBe(false);
  if (alive) expect(isAlive(d), 'daemon process alive').toBe(true);
}

/** Resident set size of a process in KiB, from /proc/<pid>/status (VmRSS). */
export function rssKb(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(status);
  if (!m) throw new Error(`no VmRSS in /proc/${pid}/status`);
  return Number(m[1]);
}

export const mb = (kb: number): number => Math.round((kb / 1024) * 10) / 10;

// --- its HTTP endpoint ------------------------------------------------------------

export interface HttpReply {
  status: number;
  body: string;
}

/** One GET to the daemon's health/metrics endpoint; short time limit, never throws for HTTP statuses. */
export async function httpGet(port: number, path: string, timeoutMs = 2_000): Promise<HttpReply> {
  const res = await fetch(`http://127.0.0.1:${port}${path}`, { signal: AbortSignal.timeout(timeoutMs) });
  return { status: res.status, body: await res.text() };
}

export async function scrape(port: number): Promise<string> {
  const r = await httpGet(port, '/metrics', 5_000);
  expect(r.status, '/metrics status').toBe(200);
  return r.body;
}
