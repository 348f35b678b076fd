/**
 * Footprint: start-to-ready time, idle RSS, and RSS after 1,000,000 events
 * published as fast as redis-benchmark can (a backlog, so agentd's queue
 * fills and it drops what does not fit), for agentd (a no-op plugin, default
 * queue settings) and the bare ioredis
 * loop as the baseline, in the same run; median of 3.
 *
 *   node bench/footprint.ts [--events N] [--json]
 */
import { startRedis } from '../test/helpers/redis.ts';
import { CONSUMERS, flood, rssMiB, sleep, startConsumer } from './lib.ts';
import { median, printTable } from './stats.ts';

const json = process.argv.includes('--json');
const i = process.argv.indexOf('--events');
const EVENTS = i > 0 ? Number(process.argv[i + 1]) : 1_000_000;
const REPS = 3;

const server = await startRedis({ requireControl: true });
await server.client().config('SET', 'client-output-buffer-limit', 'pubsub 0 0 0');
const figures: Record<string, { ready: number[]; idle: number[]; after: number[] }> = {};
try {
  for (let r = 0; r < REPS; r++) {
    for (const kind of ['bare', 'agentd'] as const) {
      const t0 = performance.now();
      // agentd with its default queue.max (10,000): under a flood it drops rather than grow.
      const args = kind === 'agentd' ? [`${server.url}/0`, String(EVENTS), '10000'] : [`${server.url}/0`, String(EVENTS)];
      const consumer = await startConsumer(CONSUMERS[kind], args, { BENCH_UNTIL: 'received' });
      const ready = performance.now() - t0;
      await sleep(1_000);
      const idle = rssMiB(consumer.child.pid!);
      await flood(server.port, EVENTS);
      const out = await consumer.result;
      if (consumer.child.exitCode === null) await new Promise((res) => consumer.child.once('exit', res));
      const f = (figures[kind] ??= { ready: [], idle: [], after: [] });
      f.ready.push(ready);
      f.idle.push(idle);
      f.after.push(Number(out['rssMiB']));
    }
  }
} finally {
  await server.stop();
}
const b = figures['bare']!;
const a = figures['agentd']!;
const rows = [
  { measure: 'start to ready (ms)', bare: median(b.ready), agentd: median(a.ready), ratio: median(a.ready) / median(b.ready) },
  { measure: 'idle RSS (MiB)', bare: median(b.idle), agentd: median(a.idle), ratio: median(a.idle) / median(b.idle) },
  { measure: `RSS after ${EVENTS.toLocaleString('en')} events (MiB)`, bare: median(b.after), agentd: median(a.after), ratio: median(a.after) / median(b.after) },
];
if (json) console.log(JSON.stringify({ benchmark: 'footprint', events: EVENTS, repetitions: REPS, rows }, null, 2));
else {
  console.log(`footprint: median of ${REPS}; "ready" = process spawned until subscribed (agentd: plugins set up, subscription confirmed, presence written)`);
  printTable(rows);
}
