/**
 * One agentd (the real daemon class, in this process) with a no-op plugin.
 * Prints one JSON line when `count` events have been handled — or, with
 * --until received, read (handled or dropped): {"events", "ms"} from the
 * first handler call to the last, the latency of each (handler start -
 * data.t, monotonic clock) when messages carry one, its RSS and its stats.
 * --spin-us makes each handler call busy-wait that long; --http-port turns the
 * metrics endpoint on.
 *
 *   node bench/consumers/agentd.ts --url URL --count N [--queue-max N] [--concurrency N]
 *     [--until handled|received] [--spin-us N] [--http-port N] [--signing off|warn|require --keys-file F]
 */
import { latencySummary } from './latency.ts';
import { parseOptions } from '../args.ts';
import { benchDaemon } from './daemon.ts';

const o = parseOptions('node bench/consumers/agentd.ts', 'One agentd with a no-op plugin; prints one JSON line when COUNT events are handled (or read).', {
  url: { type: 'string', help: 'Redis URL' },
  count: { type: 'number', integer: true, min: 1, help: 'events to wait for' },
  'queue-max': { type: 'number', integer: true, min: 0, default: 0, help: 'queue.max (0: the count, so nothing is dropped)' },
  concurrency: { type: 'number', integer: true, min: 1, default: 16, help: 'queue.concurrency' },
  until: { type: 'string', default: 'handled', choices: ['handled', 'received'], help: 'report when COUNT are handled, or read (handled or dropped)' },
  'spin-us': { type: 'number', min: 0, default: 0, help: 'busy-wait this long in each handler call' },
  'http-port': { type: 'number', integer: true, min: 0, default: 0, help: 'metrics endpoint port (0: off)' },
  signing: { type: 'string', default: 'config', choices: ['config', 'off', 'warn', 'require'], help: 'security.signing (config: left alone)' },
  'keys-file': { type: 'string', default: '', help: 'security.keysFile, with --signing' },
});
const count = o.count;
const signing = o.signing === 'config' ? undefined : o.signing;
const spinUs = o['spin-us'];
const untilReceived = o.until === 'received';
let seen = 0;
let first = 0;
const latencies: number[] = [];
const report = (): void => {
  const rssMiB = process.memoryUsage.rss() / 1048576;
  console.log(JSON.stringify({ events: seen, ms: performance.now() - first, rssMiB, latency: latencySummary(latencies), stats: daemon.stats() }));
  void daemon.close({ drainTimeoutMs: 1 }).then(() => process.exit(0));
};
const noop = {
  name: 'noop',
  handlers: {
    bench: (event: { data: unknown }) => {
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
};
const daemon = benchDaemon(o.url, 'bench', [noop], {
  http: { port: o['http-port'] },
  queue: { max: o['queue-max'] || count, concurrency: o.concurrency },
  // --signing with --keys-file: verify every envelope (the signing benchmark).
  // (probes far apart: a signed flood from Node takes longer than redis-benchmark's, and a probe
  // stuck behind a long SIGSTOP backlog would recycle the subscriber and lose the backlog)
  ...(signing ? { events: { probeInterval: 3600, probeTimeoutMs: 600_000 }, security: { signing, keysFile: o['keys-file'] } } : {}),
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
