// Moleculer peer for the dispatch benchmark: once the `sink` service is
// discovered it prints {"ready": true}; on a line on stdin it emits COUNT
// `bench.event` events to the service as fast as the broker takes them.
//   node bench/peers/producer.mjs URL COUNT
import { ServiceBroker } from 'moleculer';

const [url, countText] = process.argv.slice(2);
const count = Number(countText);
const broker = new ServiceBroker({ nodeID: `producer-${process.pid}`, transporter: { type: 'Redis', options: url }, logger: false });
await broker.start();
await broker.waitForServices('sink');
console.log(JSON.stringify({ ready: true }));
await new Promise((resolve) => process.stdin.once('data', resolve));
process.stdin.destroy();
const payload = { user_id: 'usr-123', text: 'Hello there, this is a benchmark message' };
const t0 = performance.now();
for (let i = 0; i < count; i++) {
  void broker.emit('bench.event', payload);
  // Let the transporter write now and then, as a real producer would.
  if (i % 1000 === 999) await new Promise((r) => setImmediate(r));
}
console.log(JSON.stringify({ emitted: count, ms: performance.now() - t0 }));
await new Promise((r) => setTimeout(r, 200));
await broker.stop();
process.exit(0);
