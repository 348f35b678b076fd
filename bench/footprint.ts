/**
 * Footprint: start-to-ready time, idle RSS, and RSS after 1,000,000 events
 * published as fast as redis-benchmark can (a backlog, so agentd's queue
 * fills and it drops what does not fit), for agentd (a no-op plugin, default
 * queue settings) and the bare ioredis
 * loop as the baseline, in the same run; median of 3 (--reps).
 *
 *   node bench/footprint.ts [--events N] [--reps R] [--json] (--help lists the options)
 */
import { startRedis } from '../test/helpers/redis.ts';
import { CONSUMERS, flood, rssMiB, sleep, startConsumer } from './lib.ts';
import { benchOptions } from './args.ts';
import { median, output } from './stats.ts';

const opts = benchOptions('footprint', 'Footprint: start to ready, idle RSS and RSS after a flood, agentd against the bare ioredis loop.');
const EVENTS = opts.events;
const REPS = opts.reps;

const server = await startRedis({ requireControl: true });
await server.client().config('SET', 'client-output-buffer-limit', 'pubsub 0 0 0');
const figures: Record<string, { ready: number[]; idle: number[]; after: number[] }> = {};
try {
  for (let r = 0; r < REPS; r++) {
    for (const kind of ['bare', 'agentd'] as const) {
      const t0 = performance.now();
      // agentd with its default queue.max (10,000): under a flood it drops rather than grow.
      // The bare loop reads every event (it has no queue to drop from).
      const args = kind === 'agentd' ? ['--queue-max', '10000', '--until', 'received'] : [];
      const consumer = await startConsumer(CONSUMERS[kind], ['--url', `${server.url}/0`, '--count', String(EVENTS), ...args]);
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
output(opts.json, 'footprint', rows, { events: EVENTS, repetitions: REPS }, `footprint: median of ${REPS}; "ready" = process spawned until subscribed (agentd: plugins set up, subscription confirmed, presence written)`);
