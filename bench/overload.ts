/**
 * Overload: events arrive at twice what the handlers can do. The handler
 * busy-waits 200 µs (capacity ≈ 5,000 events/s); events are published at
 * 10,000/s for 10 s against the default Redis pubsub output limits. Checks,
 * by scraping /metrics every 250 ms: the waiting queue never passes
 * queue.max, drops are counted, Redis never cuts the subscriber off (its
 * client id stays the same), and RSS stays flat.
 *
 *   node bench/overload.ts [--seconds S] [--json] (--help lists the options)
 */
import { Redis } from 'ioredis';
import { freePort } from '../test/helpers/ports.ts';
import { startRedis } from '../test/helpers/redis.ts';
import { CONSUMERS, rssMiB, startConsumer } from './lib.ts';
import { benchOptions } from './args.ts';
import { output } from './stats.ts';

const opts = benchOptions('overload', 'Overload: events at twice what the handlers can do; queue bound, counted drops, subscriber kept, RSS flat.');
const RATE = 10_000;
const SECONDS = opts.seconds;
const QUEUE_MAX = 1_000;
const SPIN_US = 200;

function sample(text: string, name: string, labels = ''): number {
  const line = text.split('\n').find((l) => l.startsWith(`${name}${labels} `) || (labels === '' && l.startsWith(`${name} `)));
  return line ? Number(line.split(' ').at(-1)) : 0;
}

const server = await startRedis({ requireControl: true });
const admin = new Redis(server.url);
const publisher = new Redis(server.url);
const port = await freePort();
const total = Math.round(RATE * SECONDS);
const consumer = await startConsumer(CONSUMERS.agentd, [
  ...['--url', `${server.url}/0`, '--count', String(total), '--queue-max', String(QUEUE_MAX), '--concurrency', '16'],
  ...['--spin-us', String(SPIN_US), '--http-port', String(port), '--until', 'received'],
]);
const subId = async (): Promise<string | undefined> =>
  String(await admin.client('LIST'))
    .split('\n')
    .find((l) => / name=agentd:bench-\d+:sub /.test(l))
    ?.match(/^id=(\d+)/)?.[1];
const idBefore = await subId();
let maxWaiting = 0;
const rss: number[] = [];
let scraping = true;
const scraper = (async () => {
  while (scraping) {
    try {
      const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
      maxWaiting = Math.max(maxWaiting, sample(text, 'agentd_queue_waiting'));
      rss.push(rssMiB(consumer.child.pid!));
    } catch {
      // the consumer is finishing
    }
    await new Promise((r) => setTimeout(r, 250));
  }
})();
const t0 = performance.now();
let sent = 0;
while (sent < total) {
  const due = Math.min(total, Math.floor(((performance.now() - t0) * RATE) / 1000) + 1);
  for (; sent < due; sent++) void publisher.publish('agent:events:bench', `{"event":"bench","data":{"i":${sent}}}`);
  await new Promise((r) => setImmediate(r));
}
const publishSeconds = (performance.now() - t0) / 1000;
const idAfter = await subId();
const out = await consumer.result;
scraping = false;
await scraper;
const stats = out['stats'] as { received: number; completed: number; waiting: number; running: number; dropped: { queue_full: number } };
publisher.disconnect();
admin.disconnect();
if (consumer.child.exitCode === null) await new Promise((r) => consumer.child.once('exit', r));
await server.stop();
const half = Math.floor(rss.length / 2);
const rssFirst = Math.max(...rss.slice(1, half));
const rssSecond = Math.max(...rss.slice(half));
const row = {
  'published/s': Math.round(total / publishSeconds),
  handled: stats.completed,
  dropped: stats.dropped.queue_full,
  // Left: still waiting or running when the last event was read.
  'handled+dropped+left': stats.completed + stats.dropped.queue_full + stats.waiting + stats.running,
  'queue.max': QUEUE_MAX,
  'max waiting seen': maxWaiting,
  'subscriber kept (same client id)': idBefore !== undefined && idBefore === idAfter ? 'yes' : 'NO',
  'RSS MiB 1st half max': Number(rssFirst.toFixed(1)),
  'RSS MiB 2nd half max': Number(rssSecond.toFixed(1)),
};
output(opts.json, 'overload', [row], { rate: RATE, seconds: SECONDS, spinUs: SPIN_US }, `overload: ${RATE}/s for ${SECONDS} s into handlers that take ${SPIN_US} µs each (capacity ≈ ${Math.round(1e6 / SPIN_US)}/s)`);
