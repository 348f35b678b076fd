/**
 * One agentd (the real daemon class, in this process) with a no-op plugin.
 * Prints one JSON line when its handler has run `count` times: {"events", "ms"}
 * from the first handler call to the last, plus what it dropped.
 *
 *   node bench/consumers/agentd.ts URL COUNT [QUEUE_MAX] [CONCURRENCY]
 */
import { AgentDaemon } from '../../src/daemon.ts';
import { loadConfig } from '../../src/config/load.ts';
import { createLogger } from '../../src/log.ts';

const [url = '', countText = '0', maxText, concurrencyText] = process.argv.slice(2);
const count = Number(countText);
const { config } = loadConfig({
  env: {},
  overrides: {
    redis: { url },
    agent: { id: `bench-${process.pid}`, den: 'bench' },
    http: { port: 0 },
    watch: { enabled: false },
    queue: { max: Number(maxText ?? count), concurrency: Number(concurrencyText ?? 16) },
    log: { level: 'warn' },
  },
});
let seen = 0;
let first = 0;
const daemon = new AgentDaemon({
  config,
  logger: createLogger({ level: 'warn', destination: process.stderr }),
  plugins: [
    {
      name: 'noop',
      handlers: {
        bench: () => {
          if (seen === 0) first = performance.now();
          if (++seen === count) {
            console.log(JSON.stringify({ events: seen, ms: performance.now() - first, stats: daemon.stats() }));
            void daemon.close().then(() => process.exit(0));
          }
        },
      },
    },
  ],
});
await daemon.start();
console.log(JSON.stringify({ ready: true }));
