/**
 * One agentd daemon (the real class, in this process) reading its den's task
 * stream with a no-op handler. Waits for a line on stdin, then starts; prints
 * {"events", "ms"} from the first handler call to the last acknowledgement
 * once COUNT entries are acknowledged (as the bare loop: first read to last ack).
 *
 *   node bench/consumers/durable-agentd.ts --url URL --den DEN --count N [--concurrency N]
 */
import { parseOptions } from '../args.ts';
import { benchDaemon } from './daemon.ts';

const o = parseOptions('node bench/consumers/durable-agentd.ts', "One agentd reading den:<den>:tasks with a no-op handler, from a line on stdin until COUNT are acknowledged.", {
  url: { type: 'string', help: 'Redis URL' },
  den: { type: 'string', help: 'the den whose task stream is read' },
  count: { type: 'number', integer: true, min: 1, help: 'entries to wait for' },
  concurrency: { type: 'number', integer: true, min: 1, default: 64, help: 'durable.concurrency' },
});
let first = 0;
const noop = { name: 'noop', handlers: { job: () => void (first ||= performance.now()) } };
const daemon = benchDaemon(o.url, o.den, [noop], { durable: { concurrency: o.concurrency, pollInterval: 0.05 } });
console.log(JSON.stringify({ ready: true }));
await new Promise((r) => process.stdin.once('data', r));
await daemon.start();
const timer = setInterval(() => {
  if (daemon.durable.consumer.counts.acked >= o.count && daemon.durable.consumer.inFlight === 0) {
    clearInterval(timer);
    console.log(JSON.stringify({ events: daemon.durable.consumer.counts.acked, ms: performance.now() - first }));
    void daemon.close({ drainTimeoutMs: 1 }).then(() => process.exit(0));
  }
}, 1);
