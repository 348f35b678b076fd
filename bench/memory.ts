/**
 * Memory API throughput against redis-benchmark doing the same server work
 * with raw commands, in the same run, at concurrency 1 and 50:
 *   - conversation append: AgentMemory.addMessage (MULTI RPUSH/LTRIM/EXPIRE/LLEN)
 *     vs redis-benchmark EVAL of a script doing RPUSH, LTRIM, EXPIRE, LLEN;
 *   - cache hit: AgentMemory.getCached (sha256 + GET) vs redis-benchmark GET.
 * agentd's side uses one connection (as a daemon does), with C requests in
 * flight; redis-benchmark uses C connections.
 *
 *   node bench/memory.ts [--ops N] [--reps R] [--json] (--help lists the options)
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { Redis } from 'ioredis';
import { AgentMemory } from '../src/memory/memory.ts';
import { pythonMessageJson } from '../src/memory/python-json.ts';
import { startRedis } from '../test/helpers/redis.ts';
import { benchOptions } from './args.ts';
import { median, output } from './stats.ts';

const run = promisify(execFile);
const opts = benchOptions('memory', 'Memory API throughput (conversation append, cache hit) against redis-benchmark doing the same server work.');
const REPS = opts.reps;
const OPS = opts.ops;

async function redisBenchmark(port: number, clients: number, args: string[]): Promise<number> {
  const { stdout } = await run('redis-benchmark', ['-p', String(port), '-c', String(clients), '-n', String(OPS), '--csv', ...args]);
  // The test name column can hold quotes; the seven numeric columns at the end cannot.
  const m = /"([\d.]+)"(?:,"[\d.]+"){6}\s*$/.exec(stdout.trim());
  if (!m) throw new Error(`cannot read redis-benchmark output: ${stdout}`);
  return Number(m[1]);
}

async function ours(concurrency: number, op: (i: number) => Promise<unknown>): Promise<number> {
  let next = 0;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < OPS) await op(next++);
    }),
  );
  return OPS / ((performance.now() - t0) / 1000);
}

const server = await startRedis({ requireControl: true });
const redis = new Redis(server.url);
const mem = new AgentMemory(redis, 'bench');
const content = 'x'.repeat(100);
const message = pythonMessageJson('user', content);
const appendLua = "redis.call('RPUSH',KEYS[1],ARGV[1]); redis.call('LTRIM',KEYS[1],-20,-1); redis.call('EXPIRE',KEYS[1],3600); return redis.call('LLEN',KEYS[1])";
await mem.setCached('the prompt', 'the-model', 'the cached answer');
const cacheKey = mem.cacheKey('the prompt', 'the-model');

const rows: Array<Record<string, string | number>> = [];
try {
  for (const c of [1, 50]) {
    const a: number[] = [];
    const aBase: number[] = [];
    const h: number[] = [];
    const hBase: number[] = [];
    for (let r = 0; r < REPS; r++) {
      a.push(await ours(c, () => mem.addMessage('s', { role: 'user', content })));
      aBase.push(await redisBenchmark(server.port, c, ['EVAL', appendLua, '1', 'agent:bench:session:raw:messages', message]));
      h.push(await ours(c, () => mem.getCached('the prompt', 'the-model')));
      hBase.push(await redisBenchmark(server.port, c, ['GET', cacheKey]));
    }
    rows.push({ operation: 'conversation append', concurrency: c, 'agentd ops/s': Math.round(median(a)), 'redis-benchmark ops/s': Math.round(median(aBase)), ratio: median(a) / median(aBase) });
    rows.push({ operation: 'cache hit', concurrency: c, 'agentd ops/s': Math.round(median(h)), 'redis-benchmark ops/s': Math.round(median(hBase)), ratio: median(h) / median(hBase) });
  }
} finally {
  redis.disconnect();
  await server.stop();
}
output(opts.json, 'memory', rows, { ops: OPS, repetitions: REPS });
