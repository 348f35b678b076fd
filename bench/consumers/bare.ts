/**
 * The ceiling for a Node subscriber: one ioredis PSUBSCRIBE connection that
 * only parses each message as JSON. Prints one JSON line when it has seen
 * `count` events: {"events", "ms"} from the first to the last, the latency
 * of each (now - data.t, on the monotonic clock) when the messages carry
 * one, and its RSS.
 *
 *   node bench/consumers/bare.ts --url URL --count N
 */
import { latencySummary } from './latency.ts';
import { Redis } from 'ioredis';
import { parseOptions } from '../args.ts';

const o = parseOptions('node bench/consumers/bare.ts', 'The bare ioredis PSUBSCRIBE + JSON.parse loop; prints one JSON line after COUNT events.', {
  url: { type: 'string', help: 'Redis URL' },
  count: { type: 'number', integer: true, min: 1, help: 'events to wait for' },
});
const count = o.count;
const sub = new Redis(o.url, { protocol: 2 });
let seen = 0;
let first = 0;
let sink = 0;
const latencies: number[] = [];
sub.on('pmessageBuffer', (_pattern: string, _channel: Buffer, message: Buffer) => {
  if (seen === 0) first = performance.now();
  const env = JSON.parse(message.toString()) as { event: string; data: { t?: number } };
  if (env.data.t !== undefined) latencies.push(Number(process.hrtime.bigint() / 1000n) - env.data.t);
  sink += env.event.length;
  if (++seen === count) {
    const rssMiB = process.memoryUsage.rss() / 1048576;
    console.log(JSON.stringify({ events: seen, ms: performance.now() - first, sink, rssMiB, latency: latencySummary(latencies) }));
    sub.disconnect();
  }
});
await sub.psubscribe('agent:events:*');
console.log(JSON.stringify({ ready: true }));
