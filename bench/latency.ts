/**
 * Latency at fixed publish rates: publish → handler start, p50 / p99 / p99.9,
 * for agentd (no-op plugin) and the bare ioredis loop, at 1k, 10k and 50k
 * events/s. The publisher stamps each message with the monotonic clock
 * (process.hrtime, shared by all processes on the machine) in microseconds.
 *
 *   node bench/latency.ts [--scale F] [--json] (--help lists the options)
 */
import { Redis } from 'ioredis';
import { startRedis } from '../test/helpers/redis.ts';
import { CONSUMERS, startConsumer } from './lib.ts';
import { benchOptions } from './args.ts';
import { output } from './stats.ts';

const opts = benchOptions('latency', 'Latency publish -> handler start at fixed rates, agentd against the bare ioredis loop.');
const PLAN = [
  { rate: 1_000, seconds: 3 * opts.scale },
  { rate: 10_000, seconds: 2 * opts.scale },
  { rate: 50_000, seconds: 1 * opts.scale },
];

/** Publishes `rate` events a second for `seconds`, spread evenly, each stamped with its send time. */
async function paced(redis: Redis, rate: number, seconds: number): Promise<number> {
  const total = Math.round(rate * seconds);
  const t0 = performance.now();
  let sent = 0;
  while (sent < total) {
    const due = Math.min(total, Math.floor(((performance.now() - t0) * rate) / 1000) + 1);
    for (; sent < due; sent++) {
      const t = Number(process.hrtime.bigint() / 1000n);
      void redis.publish('agent:events:bench', `{"event":"bench","data":{"i":${sent},"t":${t}}}`);
    }
    await new Promise((r) => setImmediate(r));
  }
  return (sent / (performance.now() - t0)) * 1000;
}

const server = await startRedis({ requireControl: true });
const publisher = new Redis(server.url);
const rows: Array<Record<string, string | number>> = [];
try {
  for (const { rate, seconds } of PLAN) {
    const results: Record<string, { p50: number; p99: number; p999: number; max: number }> = {};
    let achieved = 0;
    for (const kind of ['bare', 'agentd'] as const) {
      const total = Math.round(rate * seconds);
      const consumer = await startConsumer(CONSUMERS[kind], ['--url', `${server.url}/0`, '--count', String(total)]);
      achieved = await paced(publisher, rate, seconds);
      const out = await consumer.result;
      if (consumer.child.exitCode === null) await new Promise((r) => consumer.child.once('exit', r));
      results[kind] = out['latency'] as { p50: number; p99: number; p999: number; max: number };
    }
    const a = results['agentd']!;
    const b = results['bare']!;
    rows.push({
      'rate/s': rate,
      achieved: Math.round(achieved),
      'bare p50 ms': b.p50,
      'bare p99': b.p99,
      'bare p99.9': b.p999,
      'agentd p50 ms': a.p50,
      'agentd p99': a.p99,
      'agentd p99.9': a.p999,
      'p99 ratio': a.p99 / b.p99,
    });
  }
} finally {
  publisher.disconnect();
  await server.stop();
}
output(opts.json, 'latency', rows, {}, 'latency publish -> handler start (ms), agentd vs bare ioredis loop');
