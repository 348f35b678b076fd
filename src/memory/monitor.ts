import type { Redis } from 'ioredis';
import { describeError } from '../errors.ts';
import type { Logger } from '../log.ts';
import { redisMemoryStats, type RedisMemoryStats } from './memory.ts';

/**
 * Checks Redis memory use on an interval and warns once each time usage
 * crosses `warnRatio` of maxmemory: past the limit Redis evicts keys (other
 * agents' memory included) or refuses writes, depending on its policy.
 */
export class MemoryMonitor {
  readonly #redis: Redis;
  readonly #log: Logger;
  readonly #intervalMs: number;
  readonly #warnRatio: number;
  #timer: NodeJS.Timeout | undefined;
  #over = false;
  last: RedisMemoryStats | undefined;

  constructor(redis: Redis, options: { intervalSeconds: number; warnRatio: number; log: Logger }) {
    this.#redis = redis;
    this.#log = options.log;
    this.#intervalMs = options.intervalSeconds * 1000;
    this.#warnRatio = options.warnRatio;
  }

  start(): void {
    if (this.#intervalMs <= 0) return;
    void this.check();
    this.#timer = setInterval(() => void this.check(), this.#intervalMs);
    this.#timer.unref();
  }

  stop(): void {
    clearInterval(this.#timer);
  }

  async check(): Promise<RedisMemoryStats | undefined> {
    if (this.#redis.status !== 'ready') return undefined;
    try {
      const stats = await redisMemoryStats(this.#redis);
      this.last = stats;
      const over = stats.ratio !== null && stats.ratio > this.#warnRatio;
      if (over && !this.#over) {
        this.#log.warn(
          { usedBytes: stats.usedBytes, maxBytes: stats.maxBytes, ratio: Number(stats.ratio?.toFixed(3)), policy: stats.policy },
          `redis memory above ${Math.round(this.#warnRatio * 100)} % of maxmemory: at the limit it starts evicting (${stats.policy})`,
        );
      } else if (!over && this.#over) {
        this.#log.info({ ratio: stats.ratio === null ? null : Number(stats.ratio.toFixed(3)) }, 'redis memory back under the warning level');
      }
      this.#over = over;
      return stats;
    } catch (err) {
      this.#log.debug({ err: describeError(err) }, 'memory check failed');
      return undefined;
    }
  }
}
