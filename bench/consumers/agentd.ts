/**
 * One agentd (the real daemon class, in this process) with a no-op plugin.
 * Prints one JSON line when `count` events have been handled — or, with
 * BENCH_UNTIL=received, read (handled or dropped): {"events", "ms"} from the
 * first handler call to the last, the latency of each (handler start -
 * data.t, monotonic clock) when messages carry one, its RSS and its stats.
 * BENCH_SPIN_US makes each handler call busy-wait that long; BENCH_HTTP_PORT
 * turns the metrics endpoint on.
 *
 *   node bench/consumers/agentd.ts URL COUNT [QUEUE_MAX] [CONCURRENCY]
 */
import { latencySummary } from './latency.ts';
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
    http: { port: Number(process.env['BENCH_HTTP_PORT'] ?? 0) },
    watch: { enabled: false },
    queue: { max: Number(maxText ?? count), concurrency: Number(concurrencyText ?? 16) },
    log: { level: 'warn' },
    // BENCH_SIGNING=require with BENCH_KEYS_FILE: verify every envelope (the signing benchmark).
    // (probes far apart: a signed flood from Node takes longer than redis-benchmark's, and a probe
    // stuck behind a long SIGSTOP backlog would recycle the subscriber and lose the backlog)
    ...(process.env['BENCH_SIGNING'] ? { events: { probeInterval: 3600, probeTimeoutMs: 600_000 } } : {}),
    ...(process.env['BENCH_SIGNING'] ? { security: { signing: process.env['BENCH_SIGNING'] as 'off' | 'warn' | 'require', keysFile: process.env['BENCH_KEYS_FILE'] ?? '' } } : {}),
  },
});
let seen = 0;
let first = 0;
const latencies: number[] = [];
const spinUs = Number(process.env['BENCH_SPIN_US'] ?? 0);
const untilReceived = process.env['BENCH_UNTIL'] === 'received';
const report = (): void => {
  const rssMiB = process.memoryUsage.rss() / 1048576;
  console.log(JSON.stringify({ events: seen, ms: performance.now() - first, rssMiB, latency: latencySummary(latencies), stats: daemon.stats() }));
  void daemon.close({ drainTimeoutMs: 1 }).then(() => process.exit(0));
};
const daemon = new AgentDaemon({
  config,
  logger: createLogger({ level: 'error', destination: process.stderr }),
  plugins: [
    {
      name: 'noop',
      handlers: {
        bench: (event) => {
          const t = (event.data as { t?: number }).t;
          if (t !== undefined) latencies.push(Number(process.hrtime.bigint() / 1000n) - t);
          if (spinUs > 0) {
            const end = performance.now() + spinUs / 1000;
            while (performance.now() < end);
          }
          if (seen === 0) first = performance.now();
          if (++seen === count && !untilReceived) report();
        },
      },
    },
  ],
});
await daemon.start();
if (untilReceived) {
  const timer = setInterval(() => {
    if (daemon.stats().received >= count) {
      clearInterval(timer);
      report();
    }
  }, 20);
}
console.log(JSON.stringify({ ready: true }));
