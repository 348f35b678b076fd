/**
 * One agentd daemon (the real class, in this process) reading its den's task
 * stream with a no-op handler. Waits for a line on stdin, then starts; prints
 * {"events", "ms"} from the first handler call to the last acknowledgement
 * once COUNT entries are acknowledged (as the bare loop: first read to last ack).
 *
 *   node bench/consumers/durable-agentd.ts URL DEN COUNT [CONCURRENCY]
 */
import { AgentDaemon } from '../../src/daemon.ts';
import { loadConfig } from '../../src/config/load.ts';
import { createLogger } from '../../src/log.ts';

const [url = '', den = '', countText = '0', concurrencyText = '64'] = process.argv.slice(2);
const count = Number(countText);
const { config } = loadConfig({
  env: {},
  overrides: {
    redis: { url },
    agent: { id: `bench-${process.pid}`, den },
    http: { port: 0 },
    watch: { enabled: false },
    durable: { concurrency: Number(concurrencyText), pollInterval: 0.05 },
    log: { level: 'warn' },
  },
});
const daemon = new AgentDaemon({
  config,
  logger: createLogger({ level: 'error', destination: process.stderr }),
  plugins: [
    {
      name: 'noop',
      handlers: {
        job: () => {
          if (first === 0) first = performance.now();
        },
      },
    },
  ],
});
let first = 0;
console.log(JSON.stringify({ ready: true }));
await new Promise((r) => process.stdin.once('data', r));
await daemon.start();
const timer = setInterval(() => {
  if (daemon.durable.consumer.counts.acked >= count && daemon.durable.consumer.inFlight === 0) {
    clearInterval(timer);
    console.log(JSON.stringify({ events: daemon.durable.consumer.counts.acked, ms: performance.now() - first }));
    void daemon.close({ drainTimeoutMs: 1 }).then(() => process.exit(0));
  }
}, 1);
