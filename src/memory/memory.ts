import { createHash } from 'node:crypto';
import type { Redis } from 'ioredis';
import { schema, type AgentdConfig } from '../config/schema.ts';
import { AgentdError } from '../errors.ts';
import { heartbeatKey, memoryKeys } from '../redis/keys.ts';
import { appendMessage, rateLimitHit } from '../redis/scripts.ts';
import { pythonMessageJson } from './python-json.ts';

/**
 * TTLs and sizes: the `memory.*` settings the API uses (each documented on
 * AgentdConfig); the defaults are the reference article's recommendations.
 */
export type MemoryOptions = Pick<AgentdConfig['memory'], 'maxMessages' | 'sessionTtl' | 'cacheTtl' | 'taskTtl' | 'topicTtl' | 'prefsTtl' | 'rateLimitWindow'>;

/** The defaults come from the settings schema, so the config and the API cannot disagree. */
export const defaultMemoryOptions: MemoryOptions = Object.freeze({
  maxMessages: schema.memory.maxMessages.default,
  sessionTtl: schema.memory.sessionTtl.default,
  cacheTtl: schema.memory.cacheTtl.default,
  taskTtl: schema.memory.taskTtl.default,
  topicTtl: schema.memory.topicTtl.default,
  prefsTtl: schema.memory.prefsTtl.default,
  rateLimitWindow: schema.memory.rateLimitWindow.default,
});

export interface ChatMessage {
  readonly role: string;
  readonly content: string;
}

export interface RateLimitResult {
  readonly allowed: boolean;
  /** Hits left in this window (0 when refused). */
  readonly remaining: number;
  /** Hits counted in this window, this one included. */
  readonly count: number;
  /** Unix ms at which the window resets. */
  readonly resetAt: number;
}

function checkPart(what: string, value: string): void {
  if (typeof value !== 'string' || value.length === 0 || value.includes(':')) {
    throw new AgentdError('AGENTD_ERR_USAGE', `${what} must be a non-empty string without ':' (got ${JSON.stringify(value)})`);
  }
}

function checkTtl(what: string, seconds: number): void {
  if (!Number.isSafeInteger(seconds) || seconds < 1) {
    throw new AgentdError('AGENTD_ERR_USAGE', `${what} must be a whole number of seconds, at least 1 (got ${String(seconds)})`);
  }
}

/** The article's cache key digest: hex SHA-256 of "<model>:<prompt>" in UTF-8. */
export function llmCacheDigest(prompt: string, model: string): string {
  return createHash('sha256').update(`${model}:${prompt}`, 'utf8').digest('hex');
}

/**
 * One agent's short-term memory in Redis, with the reference article's key
 * names and TTLs, so an agent written in another language with the same
 * conventions shares it.
 */
export class AgentMemory {
  readonly agentId: string;
  readonly options: MemoryOptions;
  readonly #redis: Redis;
  /** Computations in flight per cache key: concurrent callers share one. */
  readonly #inflight = new Map<string, Promise<string>>();

  constructor(redis: Redis, agentId: string, options: Partial<MemoryOptions> = {}) {
    checkPart('agent id', agentId);
    this.#redis = redis;
    this.agentId = agentId;
    this.options = Object.freeze({ ...defaultMemoryOptions, ...options });
    for (const key of ['sessionTtl', 'cacheTtl', 'taskTtl', 'topicTtl', 'prefsTtl', 'rateLimitWindow', 'maxMessages'] as const) {
      checkTtl(`memory option ${key}`, this.options[key]);
    }
  }

  // ---- conversation window -------------------------------------------------

  /**
   * Appends a message, keeps the last `maxMessages`, refreshes the TTL — one
   * script call, so concurrent appenders never leave more than N.
   * Returns the session's length after trimming.
   */
  async addMessage(sessionId: string, message: ChatMessage, options: { maxMessages?: number; ttl?: number } = {}): Promise<number> {
    checkPart('session id', sessionId);
    if (typeof message?.role !== 'string' || typeof message.content !== 'string') {
      throw new AgentdError('AGENTD_ERR_USAGE', 'a message needs string "role" and "content"');
    }
    const max = options.maxMessages ?? this.options.maxMessages;
    const ttl = options.ttl ?? this.options.sessionTtl;
    checkTtl('maxMessages', max);
    checkTtl('session ttl', ttl);
    return appendMessage(this.#redis, memoryKeys.messages(this.agentId, sessionId), pythonMessageJson(message.role, message.content), max, ttl);
  }

  /** The session's messages, oldest first. Entries that are not a {role, content} object are skipped. */
  async getContext(sessionId: string): Promise<ChatMessage[]> {
    checkPart('session id', sessionId);
    const raw = await this.#redis.lrange(memoryKeys.messages(this.agentId, sessionId), 0, -1);
    const out: ChatMessage[] = [];
    for (const entry of raw) {
      try {
        const m = JSON.parse(entry) as Partial<ChatMessage>;
        if (typeof m?.role === 'string' && typeof m.content === 'string') out.push({ role: m.role, content: m.content });
      } catch {
        // Somebody else's entry; not a message.
      }
    }
    return out;
  }

  async clearSession(sessionId: string): Promise<boolean> {
    checkPart('session id', sessionId);
    return (await this.#redis.unlink(memoryKeys.messages(this.agentId, sessionId))) === 1;
  }

  // ---- LLM response cache ---------------------------------------------------

  cacheKey(prompt: string, model: string): string {
    return memoryKeys.llmCache(this.agentId, llmCacheDigest(prompt, model));
  }

  getCached(prompt: string, model: string): Promise<string | null> {
    return this.#redis.get(this.cacheKey(prompt, model));
  }

  async setCached(prompt: string, model: string, response: string, ttl: number = this.options.cacheTtl): Promise<void> {
    checkTtl('cache ttl', ttl);
    await this.#redis.set(this.cacheKey(prompt, model), response, 'EX', ttl);
  }

  /**
   * The cached response, or `compute()`'s result, stored for next time.
   * Concurrent callers for the same prompt and model in this process share one
   * computation; a failed computation is not cached and reaches every caller.
   */
  cached(prompt: string, model: string, compute: () => Promise<string>, ttl: number = this.options.cacheTtl): Promise<string> {
    const key = this.cacheKey(prompt, model);
    const running = this.#inflight.get(key);
    if (running) return running;
    const work = (async () => {
      const hit = await this.#redis.get(key);
      if (hit !== null) return hit;
      const value = await compute();
      if (typeof value !== 'string') throw new AgentdError('AGENTD_ERR_USAGE', `cached(): compute() must resolve to a string (got ${typeof value})`);
      await this.setCached(prompt, model, value, ttl);
      return value;
    })().finally(() => this.#inflight.delete(key));
    this.#inflight.set(key, work);
    return work;
  }

  // ---- rate limits ----------------------------------------------------------

  /**
   * Counts one hit against `limit` per window on `agent:<id>:ratelimit:<window>`.
   * The window opens at its first hit and lasts `windowSeconds`.
   */
  async rateLimit(window: string, limit: number, windowSeconds: number = this.options.rateLimitWindow): Promise<RateLimitResult> {
    checkPart('rate-limit window', window);
    checkTtl('windowSeconds', windowSeconds);
    if (!Number.isSafeInteger(limit) || limit < 1) throw new AgentdError('AGENTD_ERR_USAGE', `limit must be a whole number, at least 1 (got ${String(limit)})`);
    const { count, resetMs } = await rateLimitHit(this.#redis, memoryKeys.rateLimit(this.agentId, window), windowSeconds);
    return { allowed: count <= limit, remaining: Math.max(0, limit - count), count, resetAt: Date.now() + resetMs };
  }

  // ---- task status ----------------------------------------------------------

  async setTaskStatus(taskId: string, status: string, ttl: number = this.options.taskTtl): Promise<void> {
    checkPart('task id', taskId);
    checkTtl('task ttl', ttl);
    await this.#redis.set(memoryKeys.taskStatus(this.agentId, taskId), status, 'EX', ttl);
  }

  getTaskStatus(taskId: string): Promise<string | null> {
    checkPart('task id', taskId);
    return this.#redis.get(memoryKeys.taskStatus(this.agentId, taskId));
  }

  // ---- topic memory and user preferences (HASHes) -----------------------------

  /** Sets fields of `agent:<id>:memory:<topic>` and refreshes its TTL, in one round trip. */
  remember(topic: string, fields: Readonly<Record<string, string | number>>, ttl: number = this.options.topicTtl): Promise<void> {
    checkPart('topic', topic);
    return this.#setHash(memoryKeys.topic(this.agentId, topic), fields, ttl);
  }

  recall(topic: string): Promise<Record<string, string>> {
    checkPart('topic', topic);
    return this.#redis.hgetall(memoryKeys.topic(this.agentId, topic));
  }

  setPreferences(userId: string, prefs: Readonly<Record<string, string | number>>, ttl: number = this.options.prefsTtl): Promise<void> {
    checkPart('user id', userId);
    return this.#setHash(memoryKeys.prefs(this.agentId, userId), prefs, ttl);
  }

  getPreferences(userId: string): Promise<Record<string, string>> {
    checkPart('user id', userId);
    return this.#redis.hgetall(memoryKeys.prefs(this.agentId, userId));
  }

  async #setHash(key: string, fields: Readonly<Record<string, string | number>>, ttl: number): Promise<void> {
    checkTtl('ttl', ttl);
    const entries = Object.entries(fields);
    if (entries.length === 0) throw new AgentdError('AGENTD_ERR_USAGE', 'nothing to store: no fields given');
    await this.#redis.multi().hset(key, Object.fromEntries(entries)).expire(key, ttl).exec();
  }

  // ---- clearing -------------------------------------------------------------

  /**
   * Removes every `agent:<id>:*` key of this agent (SCAN + UNLINK in batches,
   * never KEYS) except its presence key `agent:<id>:heartbeat`, which is not
   * memory. Returns how many.
   */
  clear(): Promise<number> {
    return clearAgentMemory(this.#redis, this.agentId);
  }
}

/**
 * Removes every key under `agent:<id>:`, and no other: glob characters in the
 * id are escaped, and each key's prefix is checked again before it goes. The
 * presence key `agent:<id>:heartbeat` is spared: deleting it would make a live
 * agent look dead to its peers (they would not report it down — the registry
 * record still shows a recent beat — but it is not memory either).
 */
export async function clearAgentMemory(redis: Redis, agentId: string, batch = 500): Promise<number> {
  checkPart('agent id', agentId);
  const prefix = `agent:${agentId}:`;
  const presence = heartbeatKey(agentId);
  const match = memoryKeys.allOf(agentId);
  let cursor = '0';
  let removed = 0;
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', match, 'COUNT', batch);
    cursor = next;
    const mine = keys.filter((k) => k.startsWith(prefix) && k !== presence);
    if (mine.length > 0) removed += await redis.unlink(...mine);
  } while (cursor !== '0');
  return removed;
}

export interface RedisMemoryStats {
  readonly usedBytes: number;
  readonly peakBytes: number;
  /** 0 when Redis has no memory limit. */
  readonly maxBytes: number;
  readonly policy: string;
  /** used / max, or null without a limit. */
  readonly ratio: number | null;
}

/** Memory figures from INFO memory. */
export async function redisMemoryStats(redis: Redis): Promise<RedisMemoryStats> {
  const info = await redis.info('memory');
  const field = (name: string): string => new RegExp(`^${name}:(.*)$`, 'm').exec(info)?.[1]?.trim() ?? '';
  const usedBytes = Number(field('used_memory')) || 0;
  const maxBytes = Number(field('maxmemory')) || 0;
  return {
    usedBytes,
    peakBytes: Number(field('used_memory_peak')) || 0,
    maxBytes,
    policy: field('maxmemory_policy') || 'unknown',
    ratio: maxBytes > 0 ? usedBytes / maxBytes : null,
  };
}
