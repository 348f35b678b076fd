/**
 * Durable messages, in one run against one redis-server:
 *
 * Throughput, submit → handled → acknowledged with a no-op handler: each
 * consumer gets a backlog of N entries already in Redis and is timed from its
 * start to its last acknowledgement.
 *   - bare:   an ioredis XREADGROUP (COUNT 100, non-blocking) / XACK loop (the ceiling)
 *   - agentd: the daemon's durable consumer (durable.concurrency 100, so it reads
 *             at least 100 entries at a time like the bare loop; poll, doorbell
 *             and claim machinery on), reading den:<den>:tasks
 *   - bullmq: a BullMQ Worker (concurrency 64) on a queue filled with addBulk
 *
 * Request/reply round trip, sequential: agentd ctx.request → another daemon's
 * handler → reply, against a bare ioredis publish → subscriber → publish back.
 *
 *   node bench/durable.ts [--events N] [--reps R] [--requests K] [--json] (--help lists the options)
 */
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { benchOptions } from './args.ts';
import { fileURLToPath } from 'node:url';
import { Redis } from 'ioredis';
import { startRedis } from '../test/helpers/redis.ts';
import { benchDaemon } from './consumers/daemon.ts';
import { MESSAGE, PEERS_DIR, ensurePeer, startConsumer, sleep } from './lib.ts';
import { median, output, summarize } from './stats.ts';

const run = promisify(execFile);
const opts = benchOptions('durable', 'Durable throughput (agentd, the bare XREADGROUP/XACK loop, BullMQ) and request/reply round trips.');
const EVENTS = opts.events;
const REPS = opts.reps;
const REQUESTS = opts.requests;
const here = (p: string): string => fileURLToPath(new URL(p, import.meta.url));

const server = await startRedis({ requireControl: true });
const admin = server.client();
const url = `${server.url}/0`;

async function fillStream(key: string, n: number): Promise<void> {
  await admin.xgroup('CREATE', key, 'agentd', '0', 'MKSTREAM');
  for (let i = 0; i < n; i += 1_000) {
    const p = admin.pipeline();
    for (let k = i; k < Math.min(n, i + 1_000); k++) p.xadd(key, '*', 'envelope', MESSAGE.replace('"bench"', '"job"'));
    await p.exec();
  }
}

async function throughput(kind: 'bare' | 'agentd' | 'bullmq', rep: number): Promise<number> {
  const den = `bench-${kind}-${rep}`;
  const key = `den:${den}:tasks`;
  let consumer;
  if (kind === 'bullmq') {
    await run(process.execPath, [join(PEERS_DIR, 'bullmq-fill.mjs'), server.host, String(server.port), den, String(EVENTS)]);
    consumer = await startConsumer(join(PEERS_DIR, 'bullmq-worker.mjs'), [server.host, String(server.port), den, String(EVENTS), '64'], {}, true);
  } else {
    await fillStream(key, EVENTS);
    const script = kind === 'bare' ? here('./consumers/durable-bare.ts') : here('./consumers/durable-agentd.ts');
    const args = kind === 'bare' ? ['--stream', key, '--batch', '100'] : ['--den', den, '--concurrency', '100'];
    consumer = await startConsumer(script, ['--url', url, '--count', String(EVENTS), ...args], {}, true);
  }
  await sleep(200);
  consumer.child.stdin!.write('go\n');
  const result = await consumer.result;
  await new Promise((r) => (consumer.child.exitCode === null ? consumer.child.once('exit', r) : r(null)));
  await admin.flushall();
  return (Number(result['events']) / Number(result['ms'])) * 1000;
}

async function roundTrips(kind: 'agentd' | 'bare'): Promise<number[]> {
  const target = `echo-${kind}-${process.pid}`;
  const responder = await startConsumer(here('./consumers/durable-echo.ts'), ['--kind', kind, '--url', url, '--id', target]);
  const out: number[] = [];
  try {
    if (kind === 'bare') {
      const sub = new Redis(url);
      const pub = new Redis(url);
      let waiting: ((m: string) => void) | undefined;
      sub.on('message', (_c: string, m: string) => waiting?.(m));
      await sub.subscribe('bench:resp');
      for (let i = 0; i < REQUESTS; i++) {
        const t0 = performance.now();
        const back = new Promise<string>((r) => (waiting = r));
        await pub.publish('bench:req', `{"event":"echo","data":${i}}`);
        await back;
        out.push(performance.now() - t0);
      }
      sub.disconnect();
      pub.disconnect();
    } else {
      const daemon = benchDaemon(url, 'bench-rr', [], {}, `req-${process.pid}`);
      await daemon.start();
      for (let i = 0; i < REQUESTS; i++) {
        const t0 = performance.now();
        await daemon.durable.request(target, 'echo', i, { timeoutMs: 10_000 });
        out.push(performance.now() - t0);
      }
      await daemon.close({ drainTimeoutMs: 100 });
    }
  } finally {
    responder.child.kill('SIGKILL');
  }
  return out.slice(Math.min(100, Math.floor(out.length / 10))); // warm-up left out
}

const kinds: Array<'bare' | 'agentd' | 'bullmq'> = ['bare', 'agentd'];
if (await ensurePeer('bullmq')) kinds.push('bullmq');
const rates: Record<string, number[]> = {};
const rtt: Record<string, number[]> = {};
try {
  for (let r = 0; r < REPS; r++) for (const kind of kinds) (rates[kind] ??= []).push(await throughput(kind, r));
  for (const kind of ['bare', 'agentd'] as const) rtt[kind] = await roundTrips(kind);
} finally {
  await server.stop();
}
const bare = median(rates['bare']!);
const rows: Array<Record<string, string | number>> = kinds.map((kind) => ({
  measure: `throughput: ${kind}`,
  'entries/s (median)': Math.round(median(rates[kind]!)),
  runs: rates[kind]!.map((x) => Math.round(x)).join(' '),
  'ratio to bare': median(rates[kind]!) / bare,
}));
const bareRtt = summarize(rtt['bare']!);
for (const kind of ['bare', 'agentd'] as const) {
  const s = summarize(rtt[kind]!);
  rows.push({ measure: `round trip: ${kind === 'bare' ? 'bare pub/sub' : 'agentd request/reply'}`, 'p50 ms': s.p50, 'p99 ms': s.p99, 'p50 ratio to bare': s.p50 / bareRtt.p50, 'p99 ratio to bare': s.p99 / bareRtt.p99 });
}
const columns = [...new Set(rows.flatMap((r) => Object.keys(r)))];
for (const r of rows) for (const c of columns) r[c] ??= '';
output(opts.json, 'durable', rows, { events: EVENTS, repetitions: REPS, requests: REQUESTS }, `durable: ${EVENTS} entries backlog, ${REPS} runs each; ${REQUESTS} sequential round trips`);
