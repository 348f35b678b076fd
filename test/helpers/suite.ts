/**
 * The per-file Redis every suite is built on: `redisSuite` (test/helpers/inproc.ts)
 * adds in-process daemons, `processSuite` (test/helpers/process.ts) child processes.
 */
import type { Redis } from 'ioredis';
import { afterAll, beforeAll } from 'vitest';
import { startRedis, type StartRedisOptions, type TestRedis } from './redis.ts';

export interface RedisFixture {
  /** The file's throwaway Redis (set in beforeAll). */
  readonly redis: TestRedis;
  /** A command client to it, named `test-cmd`, that reconnects quickly after a restart. */
  readonly cmd: Redis;
}

/** Starts a Redis before the file's tests (or the describe block's) and stops it after them. */
export function redisFixture(options: StartRedisOptions = {}): RedisFixture {
  let redis: TestRedis | undefined;
  let cmd: Redis | undefined;
  beforeAll(async () => {
    redis = await startRedis(options);
    cmd = redis.client({ connectionName: 'test-cmd', retryStrategy: () => 20 });
  });
  afterAll(async () => {
    await redis?.stop();
  });
  return {
    get redis() {
      return must(redis);
    },
    get cmd() {
      return must(cmd);
    },
  };
}

function must<T>(value: T | undefined): T {
  if (value === undefined) throw new Error('the suite Redis is only there inside tests and hooks');
  return value;
}
