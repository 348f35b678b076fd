/**
 * Footprint: start-to-ready time, idle RSS, and RSS after 1,000,000 events
 * published as fast as redis-benchmark can (a backlog, so agentd's queue
 * fills and it drops what does not fit), for agentd (a no-op plugin, default
 * queue settings) and the bare ioredis
 * loop as the baseline, in the same run; median of 3 (--reps).
 * Both processes run with Node's compile cache in a folder of this run's own,
 * as the agentd command does (src/bin/agentd.ts): the first start of each
 * fills it and is reported on its own row (cold), the measured ones use it.
 *
 *   node bench/footprint.ts [--events N] [--reps R] [--json] (--help lists the options)
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startRedis } from '../test/helpers/redis.ts';
import { CONSUMERS, MESSAGE, ensureBuilt, flood, rssMiB, sleep, startConsumer } from './lib.ts';
import { benchOptions } from './args.ts';
import { median, output } from './stats.ts';

const opts = benchOptions('footprint', 'Footprint: start to ready, idle RSS and RSS after a flood, agentd against the bare ioredis loop.');
const EVENTS = opts.events;
const REPS = opts.reps;

// Built before anything is timed (the agentd consumer runs dist/).
ensureBuilt();
const server = await startRedis({ requireControl: true });
await server.client().config('SET', 'client-output-buffer-limit', 'pubsub 0 0 0');
const figures: Record<string, { ready: number[]; idle: number[]; after: number[] }> = {};
const cacheDir = mkdtempSync(join(tmpdir(), 'agentd-bench-cc-'));
const env = { NODE_COMPILE_CACHE: cacheDir };
const cold: Record<string, number> = {};
try {
  for (const kind of ['bare', 'agentd'] as const) {
    const t0 = performance.now();
    const consumer = await startConsumer(CONSUMERS[kind], ['--url', `${server.url}/0`, '--count', '1'], env);
    cold[kind] = performance.now() - t0;
    // One event, so it reports and exits on its own (a process killed by a signal writes no cache).
    await server.client().publish('agent:events:bench', MESSAGE);
    await consumer.result;
    await new Promise((res) => (consumer.child.exitCode === null ? consumer.child.once('exit', res) : res(null)));
  }
  for (let r = 0; r < REPS; r++) {
    for (const kind of ['bare', 'agentd'] as const) {
      const t0 = performance.now();
      // agentd with its default queue.max (10,000): under a flood it drops rather than grow.
      // The bare loop reads every event (it has no queue to drop from).
      const args = kind === 'agentd' ? ['--queue-max', '10000', '--until', 'received'] : [];
      const consumer = await startConsumer(CONSUMERS[kind], ['--url', `${server.url}/0`, '--count', String(EVENTS), ...args], env);
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
  rmSync(cacheDir, { recursive: true, force: true });
}
const b = figures['bare']!;
const a = figures['agentd']!;
const rows = [
  { measure: 'first start to ready, cold compile cache (ms)', bare: cold['bare']!, agentd: cold['agentd']!, ratio: cold['agentd']! / cold['bare']! },
  { measure: 'start to ready (ms)', bare: median(b.ready), agentd: median(a.ready), ratio: median(a.ready) / median(b.ready) },
  { measure: 'idle RSS (MiB)', bare: median(b.idle), agentd: median(a.idle), ratio: median(a.idle) / median(b.idle) },
  { measure: `RSS after ${EVENTS.toLocaleString('en')} events (MiB)`, bare: median(b.after), agentd: median(a.after), ratio: median(a.after) / median(b.after) },
];
output(opts.json, 'footprint', rows, { events: EVENTS, repetitions: REPS }, `footprint: median of ${REPS}; "ready" = process spawned until subscribed (agentd: plugins set up, subscription confirmed, presence written)`);
