// BullMQ peer for the durable benchmark: a Worker with a no-op processor on a
// queue that already holds COUNT jobs. Waits for a line on stdin, then starts;
// prints {"events", "ms"} once COUNT jobs completed.
//   node bench/peers/bullmq-worker.mjs HOST PORT QUEUE COUNT [CONCURRENCY]
import { Worker } from 'bullmq';

const [host, port, queue, countText, concurrencyText = '64'] = process.argv.slice(2);
const count = Number(countText);
console.log(JSON.stringify({ ready: true }));
await new Promise((r) => process.stdin.once('data', r));
let done = 0;
const t0 = performance.now();
const worker = new Worker(queue, async () => undefined, {
  connection: { host, port: Number(port) },
  concurrency: Number(concurrencyText),
  removeOnComplete: { count: 0 },
});
worker.on('completed', () => {
  if (++done === count) {
    console.log(JSON.stringify({ events: done, ms: performance.now() - t0 }));
    void worker.close().then(() => process.exit(0));
  }
});
