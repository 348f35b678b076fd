import { Writable } from 'node:stream';
import { afterEach } from 'vitest';
import { AgentDaemon, type InlinePlugin } from '../../src/daemon.ts';
import { loadConfig } from '../../src/config/load.ts';
import type { AgentdConfig, DeepPartial } from '../../src/config/schema.ts';
import { createLogger } from '../../src/log.ts';
import type { StartRedisOptions } from './redis.ts';
import { redisFixture, type RedisFixture } from './suite.ts';
import { uniqueId, type LogLine } from './util.ts';

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
      agent: { id: uniqueId('agent'), den: uniqueId('den'), ...overrides.agent },
    },
  });
  const { logger, lines } = captureLogger('debug', { agent: config.agent.id });
  return { daemon: new AgentDaemon({ config, logger, plugins }), config, lines };
}

export interface RedisSuite extends RedisFixture {
  /** Starts a daemon from makeDaemon(); it is closed after the test. */
  start(t: TestDaemon): Promise<TestDaemon>;
  /** Closes `daemon` after the test, for daemons a test starts itself. */
  track(daemon: AgentDaemon): void;
}

/** One throwaway Redis for the test file, and every daemon a test starts closed after it. */
export function redisSuite(options: StartRedisOptions = {}): RedisSuite {
  const fixture = redisFixture(options);
  const running: AgentDaemon[] = [];
  afterEach(async () => {
    await Promise.all(running.splice(0).map((d) => d.close({ drainTimeoutMs: 100 })));
  });
  return {
    get redis() {
      return fixture.redis;
    },
    get cmd() {
      return fixture.cmd;
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
