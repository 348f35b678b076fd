import { createHash } from 'node:crypto';
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentMemory, clearAgentMemory, llmCacheDigest, redisMemoryStats } from '../../src/memory/memory.ts';
import { MemoryMonitor } from '../../src/memory/monitor.ts';
import { pythonMessageJson } from '../../src/memory/python-json.ts';
import { AgentdError } from '../../src/errors.ts';
import { captureLogger } from '../helpers/inproc.ts';
import { uniqueId, waitFor } from '../helpers/util.ts';
import { startRedis, type TestRedis } from '../helpers/redis.ts';

let redis: TestRedis;
let cmd: Redis;

beforeAll(async () => {
  redis = await startRedis({ requireControl: true });
  cmd = redis.client();
});
afterAll(async () => {
  await redis.stop();
});

describe('conversation window', () => {
  it('appends, keeps the last N, refreshes the TTL, and reads back objects', async () => {
    const id = uniqueId('agent');
    const mem = new AgentMemory(cmd, id, { maxMessages: 3, sessionTtl: 100 });
    for (let i = 1; i <= 5; i++) await mem.addMessage('s1', { role: i % 2 ? 'user' : 'assistant', content: `m${i}` });
    expect(await mem.getContext('s1')).toEqual([
      { role: 'user', content: 'm3' },
      { role: 'assistant', content: 'm4' },
      { role: 'user', content: 'm5' },
    ]);
    const key = `agent:${id}:session:s1:messages`;
    expect(await cmd.llen(key)).toBe(3);
    const ttl = await cmd.ttl(key);
    expect(ttl).toBeGreaterThan(95);
    expect(ttl).toBeLessThanOrEqual(100);
    await cmd.expire(key, 5);
    await mem.addMessage('s1', { role: 'user', content: 'm6' });
    expect(await cmd.ttl(key)).toBeGreaterThan(95);
  });

  it('uses the article defaults: 20 messages, 1 hour', async () => {
    const mem = new AgentMemory(cmd, uniqueId('agent'));
    for (let i = 0; i < 25; i++) await mem.addMessage('s', { role: 'user', content: String(i) });
    const ctx = await mem.getContext('s');
    expect(ctx).toHaveLength(20);
    expect(ctx[0]!.content).toBe('5');
    expect(await cmd.ttl(`agent:${mem.agentId}:session:s:messages`)).toBeGreaterThan(3_590);
  });

  it('never holds more than N under 50 concurrent appenders on separate connections', async () => {
    const id = uniqueId('agent');
    const clients = Array.from({ length: 50 }, () => redis.client());
    const key = `agent:${id}:session:busy:messages`;
    let maxSeen = 0;
    let watching = true;
    const watcher = (async () => {
      while (watching) {
        maxSeen = Math.max(maxSeen, await cmd.llen(key));
      }
    })();
    await Promise.all(
      clients.map(async (c, i) => {
        const mem = new AgentMemory(c, id, { maxMessages: 10 });
        for (let j = 0; j < 20; j++) await mem.addMessage('busy', { role: 'user', content: `${i}-${j}` });
      }),
    );
    watching = false;
    await watcher;
    expect(await cmd.llen(key)).toBe(10);
    expect(maxSeen).toBeLessThanOrEqual(10);
    expect(await cmd.ttl(key)).toBeGreaterThan(0);
  });

  it('stores each message exactly as Python json.dumps writes it', async () => {
    const mem = new AgentMemory(cmd, uniqueId('agent'));
    await mem.addMessage('s', { role: 'user', content: 'Héllo "there"\n\t\\ 🙂 </tag>' });
    const [raw] = await cmd.lrange(`agent:${mem.agentId}:session:s:messages`, 0, -1);
    expect(raw).toBe('{"role": "user", "content": "H\\u00e9llo \\"there\\"\\n\\t\\\\ \\ud83d\\ude42 </tag>"}');
    expect(JSON.parse(raw!)).toEqual({ role: 'user', content: 'Héllo "there"\n\t\\ 🙂 </tag>' });
    expect(pythonMessageJson('a', '\u0001\u007f')).toBe('{"role": "a", "content": "\\u0001\\u007f"}');
  });

  it('skips list entries that are not messages instead of failing', async () => {
    const mem = new AgentMemory(cmd, uniqueId('agent'));
    const key = `agent:${mem.agentId}:session:s:messages`;
    await cmd.rpush(key, 'not json', '{"role": "user"}', '{"role": "user", "content": "ok"}');
    expect(await mem.getContext('s')).toEqual([{ role: 'user', content: 'ok' }]);
  });
});

describe('LLM response cache', () => {
  it('uses the article key: sha256 hex of "<model>:<prompt>", with a TTL', async () => {
    const mem = new AgentMemory(cmd, uniqueId('agent'), { cacheTtl: 1800 });
    // sha256("claude-3-5-sonnet:Grüße") as Python's hashlib computes it on the UTF-8 bytes.
    const expected = createHash('sha256').update(Buffer.from('claude-3-5-sonnet:Grüße', 'utf8')).digest('hex');
    expect(llmCacheDigest('Grüße', 'claude-3-5-sonnet')).toBe(expected);
    expect(mem.cacheKey('Grüße', 'claude-3-5-sonnet')).toBe(`agent:${mem.agentId}:llm_cache:${expected}`);
    expect(await mem.getCached('Grüße', 'claude-3-5-sonnet')).toBeNull();
    await mem.setCached('Grüße', 'claude-3-5-sonnet', 'Hallo');
    expect(await mem.getCached('Grüße', 'claude-3-5-sonnet')).toBe('Hallo');
    expect(await mem.getCached('Grüße', 'other-model')).toBeNull();
    const ttl = await cmd.ttl(mem.cacheKey('Grüße', 'claude-3-5-sonnet'));
    expect(ttl).toBeGreaterThan(1790);
    expect(ttl).toBeLessThanOrEqual(1800);
  });

  it('cached(): concurrent callers share one computation; the result is stored', async () => {
    const mem = new AgentMemory(cmd, uniqueId('agent'));
    let calls = 0;
    const compute = async () => {
      calls++;
      await new Promise((r) => setTimeout(r, 50));
      return 'answer';
    };
    const results = await Promise.all(Array.from({ length: 20 }, () => mem.cached('p', 'm', compute)));
    expect(results).toEqual(Array(20).fill('answer'));
    expect(calls).toBe(1);
    expect(await mem.cached('p', 'm', compute)).toBe('answer');
    expect(calls).toBe(1); // served from Redis
    expect(await mem.getCached('p', 'm')).toBe('answer');
  });

  it('cached(): a failure reaches every waiting caller and is not cached', async () => {
    const mem = new AgentMemory(cmd, uniqueId('agent'));
    let calls = 0;
    const failing = async () => {
      calls++;
      await new Promise((r) => setTimeout(r, 20));
      throw new Error('llm down');
    };
    const results = await Promise.allSettled([mem.cached('p', 'm', failing), mem.cached('p', 'm', failing)]);
    expect(results.map((r) => r.status)).toEqual(['rejected', 'rejected']);
    expect(calls).toBe(1);
    expect(await mem.getCached('p', 'm')).toBeNull();
    expect(await mem.cached('p', 'm', async () => 'recovered')).toBe('recovered');
  });
});

describe('rate limits', () => {
  it('counts hits in a fixed window and reports allowed, remaining and reset', async () => {
    const mem = new AgentMemory(cmd, uniqueId('agent'));
    const results = [];
    for (let i = 0; i < 4; i++) results.push(await mem.rateLimit('llm', 3, 10));
    expect(results.map((r) => [r.allowed, r.remaining, r.count])).toEqual([
      [true, 2, 1],
      [true, 1, 2],
      [true, 0, 3],
      [false, 0, 4],
    ]);
    expect(results[0]!.resetAt).toBeGreaterThan(Date.now() + 9_000);
    expect(results[0]!.resetAt).toBeLessThanOrEqual(Date.now() + 10_000);
    const ttl = await cmd.ttl(`agent:${mem.agentId}:ratelimit:llm`);
    expect(ttl).toBeGreaterThan(8);
  });

  it('opens a new window when the old one expires', async () => {
    const mem = new AgentMemory(cmd, uniqueId('agent'));
    await mem.rateLimit('w', 1, 1);
    expect((await mem.rateLimit('w', 1, 1)).allowed).toBe(false);
    await waitFor('the window to expire', async () => (await cmd.exists(`agent:${mem.agentId}:ratelimit:w`)) === 0, 3_000);
    expect((await mem.rateLimit('w', 1, 1)).allowed).toBe(true);
  });

  it('never leaves a counter without a TTL, even one another client INCRed bare', async () => {
    const mem = new AgentMemory(cmd, uniqueId('agent'));
    const key = `agent:${mem.agentId}:ratelimit:shared`;
    await cmd.incr(key); // a careless client: no EXPIRE
    expect(await cmd.ttl(key)).toBe(-1);
    await mem.rateLimit('shared', 5, 30);
    expect(await cmd.ttl(key)).toBeGreaterThan(0);
    // 50 concurrent limiters on their own connections: the key always has a TTL.
    const clients = Array.from({ length: 50 }, () => redis.client());
    const key2 = `agent:${mem.agentId}:ratelimit:busy`;
    const seen: number[] = [];
    await Promise.all(
      clients.map(async (c) => {
        const m = new AgentMemory(c, mem.agentId);
        for (let i = 0; i < 10; i++) {
          await m.rateLimit('busy', 1000, 30);
          seen.push(await c.ttl(key2));
        }
      }),
    );
    expect(seen.every((t) => t > 0)).toBe(true);
    expect(Number(await cmd.get(key2))).toBe(500);
  });
});

describe('task status, topic memory, preferences', () => {
  it('uses the article keys and TTLs', async () => {
    const mem = new AgentMemory(cmd, uniqueId('agent'));
    const a = mem.agentId;
    await mem.setTaskStatus('t-1', 'running');
    expect(await mem.getTaskStatus('t-1')).toBe('running');
    expect(await cmd.get(`agent:${a}:task:t-1:status`)).toBe('running');
    expect(await cmd.ttl(`agent:${a}:task:t-1:status`)).toBeGreaterThan(86_390);
    expect(await mem.getTaskStatus('nope')).toBeNull();

    await mem.remember('weather', { city: 'Nashville', temp: 68 });
    await mem.remember('weather', { sky: 'sunny' });
    expect(await mem.recall('weather')).toEqual({ city: 'Nashville', temp: '68', sky: 'sunny' });
    expect(await cmd.type(`agent:${a}:memory:weather`)).toBe('hash');
    expect(await cmd.ttl(`agent:${a}:memory:weather`)).toBeGreaterThan(86_390);

    await mem.setPreferences('usr-123', { units: 'metric' });
    expect(await mem.getPreferences('usr-123')).toEqual({ units: 'metric' });
    expect(await cmd.ttl(`agent:${a}:prefs:usr-123`)).toBeGreaterThan(604_790);
  });

  it('refuses ids that would break the key scheme', () => {
    expect(() => new AgentMemory(cmd, 'a:b')).toThrow(AgentdError);
    const mem = new AgentMemory(cmd, uniqueId('agent'));
    expect(() => mem.getTaskStatus('x:y')).toThrow(/task id/);
    expect(() => mem.recall('')).toThrow(/topic/);
  });
});

describe('clearing an agent', () => {
  it('spares the presence key agent:<id>:heartbeat (deleting it is not clearing memory)', async () => {
    const a = uniqueId('hb');
    await cmd.set(`agent:${a}:heartbeat`, String(Date.now()), 'EX', 60);
    await cmd.set(`agent:${a}:memory:t`, 'x');
    expect(await new AgentMemory(cmd, a).clear()).toBe(1);
    expect(await cmd.exists(`agent:${a}:heartbeat`)).toBe(1);
    expect(await cmd.exists(`agent:${a}:memory:t`)).toBe(0);
  });

  it('removes every key of agent a, and none of ab or a*b, in batches', async () => {
    const base = uniqueId('c');
    const a = base;
    const ab = `${base}b`;
    const star = `${base}*b`;
    const p = cmd.pipeline();
    for (let i = 0; i < 1_200; i++) p.set(`agent:${a}:memory:k${i}`, 'x');
    for (const other of [ab, star]) for (let i = 0; i < 5; i++) p.set(`agent:${other}:memory:k${i}`, 'x');
    p.set(`agentx:${a}:memory:k`, 'x');
    await p.exec();
    const mem = new AgentMemory(cmd, a);
    await mem.addMessage('s', { role: 'user', content: 'hi' });
    expect(await mem.clear()).toBe(1_201);
    const left = async (id: string) => (await cmd.keys(`agent:${id.replace('*', '\\*')}:*`)).length;
    expect(await left(a)).toBe(0);
    expect(await left(ab)).toBe(5);
    expect(await left(star)).toBe(5);
    expect(await cmd.exists(`agentx:${a}:memory:k`)).toBe(1);
    // The glob in a*b is literal: clearing it leaves a's and ab's keys alone too.
    await cmd.set(`agent:${a}:memory:again`, 'x');
    expect(await clearAgentMemory(cmd, star)).toBe(5);
    expect(await left(ab)).toBe(5);
    expect(await cmd.exists(`agent:${a}:memory:again`)).toBe(1);
  });
});

describe('memory monitoring', () => {
  it('reads INFO memory and warns once when usage passes the ratio', async () => {
    await cmd.config('SET', 'maxmemory-policy', 'allkeys-lru');
    const before = await redisMemoryStats(cmd);
    expect(before.usedBytes).toBeGreaterThan(0);
    expect(before.peakBytes).toBeGreaterThanOrEqual(before.usedBytes);
    expect(before.policy).toBe('allkeys-lru');
    await cmd.config('SET', 'maxmemory', '0');
    expect((await redisMemoryStats(cmd)).ratio).toBeNull();

    const { logger, lines } = captureLogger();
    const monitor = new MemoryMonitor(cmd, { intervalSeconds: 60, warnRatio: 0.8, log: logger });
    await cmd.config('SET', 'maxmemory', String(Math.floor(before.usedBytes / 0.9)));
    const over = await monitor.check();
    expect(over?.ratio).toBeGreaterThan(0.8);
    await monitor.check();
    expect(lines.filter((l) => l.level === 'warn' && String(l.msg).includes('redis memory above 80 %'))).toHaveLength(1);
    await cmd.config('SET', 'maxmemory', String(before.usedBytes * 10));
    expect((await monitor.check())?.ratio).toBeLessThan(0.8);
    expect(lines.some((l) => l.msg === 'redis memory back under the warning level')).toBe(true);
    await cmd.config('SET', 'maxmemory', '0');
  });
});
