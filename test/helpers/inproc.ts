import { randomBytes } from 'node:crypto';
import { Writable } from 'node:stream';
import type { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll } from 'vitest';
import { AgentDaemon, type InlinePlugin } from '../../src/daemon.ts';
import { loadConfig } from '../../src/config/load.ts';
import type { AgentdConfig, DeepPartial } from '../../src/config/schema.ts';
import { createLogger } from '../../src/log.ts';
import { startRedis, type StartRedisOptions, type TestRedis } from './redis.ts';

export type LogLine = Record<string, unknown> & { msg?: string; level?: string };

/** A unique id per test, so suites can share one Redis (AGENTD_TEST_REDIS_URL) without collisions. */
export function uid(prefix = 't'): string {
  return `${prefix}-${randomBytes(4).toString('hex')}`;
}

/** A pino logger writing parsed lines into an array. */
export function captureLogger(level: AgentdConfig['log']['level'] = 'debug', base: Record<string, unknown> = {}) {
  const lines: LogLine[] = [];
  const destination = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const line of chunk.toString().split('\n')) if (line.trim() !== '') lines.push(JSON.parse(line) as LogLine);
      done();
    },
  });
  return { logger: createLogger({ level, destination, base }), lines };
}

export interface TestDaemon {
  readonly daemon: AgentDaemon;
  readonly config: AgentdConfig;
  readonly lines: LogLine[];
}

/** Builds (but does not start) an in-process daemon against `url`, with a fresh agent id and den. */
export function makeDaemon(url: string, overrides: DeepPartial<AgentdConfig> = {}, plugins: InlinePlugin[] = []): TestDaemon {
  const { config } = loadConfig({
    env: {},
    overrides: {
      ...overrides,
      http: { port: 0, ...overrides.http },
      redis: { url, ...overrides.redis },
      agent: { id: uid('agent'), den: uid('den'), ...overrides.agent },
    },
  });
  const { logger, lines } = captureLogger('debug', { agent: config.agent.id });
  return { daemon: new AgentDaemon({ config, logger, plugins }), config, lines };
}

/** Resolves when `predicate` holds, polling; rejects with `what` after `timeoutMs`. */
export async function until(predicate: () => boolean | Promise<boolean>, what: string, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await predicate()) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Subscribes a plain client to a pattern and collects parsed messages. */
export async function collect(client: Redis, pattern: string): Promise<Array<{ channel: string; message: Record<string, unknown> }>> {
  const got: Array<{ channel: string; message: Record<string, unknown> }> = [];
  client.on('pmessage', (_p: string, channel: string, message: string) => {
    got.push({ channel, message: JSON.parse(message) as Record<string, unknown> });
  });
  await client.psubscribe(pattern);
  return got;
}

/** A promise with its resolve function outside, to hold handlers until a test releases them. */
export function gate(): { promise: Promise<void>; open: () => void } {
  let open!: () => void;
  const promise = new Promise<void>((r) => {
    open = r;
  });
  return { promise, open };
}

export interface RedisSuite {
  /** The suite's Redis (set in beforeAll). */
  readonly redis: TestRedis;
  /** A plain command client to it. */
  readonly cmd: Redis;
  /** Starts a daemon from makeDaemon(); it is closed after the test. */
  start(t: TestDaemon): Promise<TestDaemon>;
  /** Closes `daemon` after the test, for daemons a test starts itself. */
  track(daemon: AgentDaemon): void;
}

/** One throwaway Redis for the test file, and every daemon a test starts closed after it. */
export function redisSuite(options: StartRedisOptions = {}): RedisSuite {
  let redis: TestRedis | undefined;
  let cmd: Redis | undefined;
  const running: AgentDaemon[] = [];
  beforeAll(async () => {
    redis = await startRedis(options);
    cmd = redis.client();
  });
  afterEach(async () => {
    await Promise.all(running.splice(0).map((d) => d.close({ drainTimeoutMs: 100 })));
  });
  afterAll(async () => {
    await redis?.stop();
  });
  const must = <T>(value: T | undefined): T => {
    if (value === undefined) throw new Error('the suite Redis is only there inside tests');
    return value;
  };
  return {
    get redis() {
      return must(redis);
    },
    get cmd() {
      return must(cmd);
    },
    async start(t) {
      running.push(t.daemon);
      await t.daemon.start();
      return t;
    },
    track(daemon) {
      running.push(daemon);
    },
  };
}
