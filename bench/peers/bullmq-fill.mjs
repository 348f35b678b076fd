// Adds COUNT no-op jobs to a BullMQ queue (addBulk, 1,000 at a time), then exits.
//   node bench/peers/bullmq-fill.mjs HOST PORT QUEUE COUNT
import { Queue } from 'bullmq';

const [host, port, name, countText] = process.argv.slice(2);
const count = Number(countText);
const queue = new Queue(name, { connection: { host, port: Number(port) } });
for (let i = 0; i < count; i += 1000) {
  const n = Math.min(1000, count - i);
  await queue.addBulk(Array.from({ length: n }, (_, k) => ({ name: 'job', data: { user_id: 'usr-123', text: 'Hello there, this is a benchmark message', n: i + k } })));
}
await queue.close();
console.log(JSON.stringify({ filled: count }));
