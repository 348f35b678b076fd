/**
 * Sweep cost: time per sweep and Redis commands per sweep for dens of 100,
 * 1,000 and 10,000 live agents, against the obvious client-side baseline
 * (SMEMBERS, then one pipeline of EXISTS) measured in the same run.
 *
 *   node bench/sweep.ts [--sizes N,N] [--json] (--help lists the options)
 */
import { Redis } from 'ioredis';
import { sweepDen } from '../src/redis/scripts.ts';
import { denMembersKey, heartbeatKey } from '../src/redis/keys.ts';
import { startRedis } from '../test/helpers/redis.ts';
import { benchOptions } from './args.ts';
import { median, output } from './stats.ts';

const opts = benchOptions('sweep', 'Sweep cost per den size: the sweep script against SMEMBERS + a pipeline of EXISTS.');
const SIZES = opts.sizes;
const ROUNDS = 7;
const SWEEPS_PER_ROUND = 20;

async function commandCalls(redis: Redis): Promise<number> {
  const info = await redis.info('commandstats');
  let total = 0;
  for (const m of info.matchAll(/calls=(\d+)/g)) total += Number(m[1]);
  return total;
}

async function baseline(redis: Redis, den: string): Promise<string[]> {
  const members = await redis.smembers(denMembersKey(den));
  const p = redis.pipeline();
  for (const id of members) p.exists(heartbeatKey(id));
  const replies = (await p.exec()) ?? [];
  return members.filter((_, i) => replies[i]?.[1] === 0);
}

async function measure(redis: Redis, run: () => Promise<unknown>): Promise<{ ms: number; commands: number }> {
  const times: number[] = [];
  let commands = 0;
  for (let r = 0; r < ROUNDS; r++) {
    await redis.config('RESETSTAT');
    const t0 = performance.now();
    for (let i = 0; i < SWEEPS_PER_ROUND; i++) await run();
    times.push((performance.now() - t0) / SWEEPS_PER_ROUND);
    // INFO itself and CONFIG RESETSTAT are not part of the sweep.
    commands = (await commandCalls(redis)) / SWEEPS_PER_ROUND;
  }
  return { ms: median(times), commands: Math.round(commands) };
}

const server = await startRedis({ requireControl: true });
const redis = new Redis(server.url);
const rows: Array<Record<string, string | number>> = [];
try {
  for (const size of SIZES) {
    const den = `bench-${size}`;
    const p = redis.pipeline();
    for (let i = 0; i < size; i++) {
      p.sadd(denMembersKey(den), `agent-${i}`);
      p.set(heartbeatKey(`agent-${i}`), '1', 'EX', 600);
    }
    await p.exec();
    const lua = await measure(redis, () => sweepDen(redis, den));
    const pipe = await measure(redis, () => baseline(redis, den));
    rows.push({
      den: size,
      'script ms/sweep': lua.ms,
      'script round trips': 1,
      'script server cmds': lua.commands,
      'pipeline ms/sweep': pipe.ms,
      'pipeline round trips': 2,
      'pipeline server cmds': pipe.commands,
      'script/pipeline time': lua.ms / pipe.ms,
    });
  }
} finally {
  redis.disconnect();
  await server.stop();
}
output(opts.json, 'sweep', rows);
