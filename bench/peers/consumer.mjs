// Moleculer peer for the dispatch benchmark: a service whose event handler
// only counts. Prints {"ready": true} once started, then {"events", "ms"}
// (first to last event) after COUNT events.
//   node bench/peers/consumer.mjs URL COUNT
import { ServiceBroker } from 'moleculer';

const [url, countText] = process.argv.slice(2);
const count = Number(countText);
const broker = new ServiceBroker({ nodeID: `consumer-${process.pid}`, transporter: { type: 'Redis', options: url }, logger: false });
let seen = 0;
let first = 0;
broker.createService({
  name: 'sink',
  events: {
    'bench.event'(ctx) {
      if (seen === 0) first = performance.now();
      if (typeof ctx.params.text !== 'string') throw new Error('bad payload');
      if (++seen === count) {
        console.log(JSON.stringify({ events: seen, ms: performance.now() - first }));
        void broker.stop().then(() => process.exit(0));
      }
    },
  },
});
await broker.start();
console.log(JSON.stringify({ ready: true }));
