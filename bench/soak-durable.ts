/**
 * Durable soak (not part of CI): three agentd processes share one den's task
 * stream on a redis-server with `appendonly yes` (`appendfsync always`), while
 * tasks are submitted at a steady rate and the harness SIGKILLs an agent every
 * ~20 s (restarted with the same id 3 s later) and kills Redis every ~45 s
 * (restarted after 2 s). At the end it waits for the backlog to drain and
 * accounts for every task it submitted:
 *
 *   1. none lost: every submitted task completed or is in den:<den>:dead;
 *   2. every entry handled twice is explained: each earlier start ran on an
 *      agent process that was SIGKILLed after that start;
 *   3. nothing left pending in the group.
 *
 *   npm run soak:durable [-- --minutes N] [-- --json] (--help lists the options)
 */
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { spawnAgentd, type DaemonProcess } from '../test/helpers/daemon.ts';
import { startRedis } from '../test/helpers/redis.ts';
import { parseOptions } from './args.ts';

const opts = parseOptions('npm run soak:durable --', 'Durable soak: three agents share a den task stream through agent kills and Redis kills; every task accounted for.', {
  minutes: { type: 'number', default: 3, min: 0.1, help: 'how long tasks are submitted' },
  json: { type: 'boolean', help: 'the summary as JSON' },
});
const MINUTES = opts.minutes;
const JSON_OUT = opts.json;
const SECONDS = Math.round(MINUTES * 60);
const RATE = 200; // tasks per second
const AGENTS = 3;
const DEN = 'soak-durable';
const KEY = `den:${DEN}:tasks`;
const KILL_EVERY_MS = 20_000;
const REDIS_EVERY_MS = 45_000;
const WORKER = fileURLToPath(new URL('../test/fixtures/plugins/durable-worker.js', import.meta.url));
const log = (msg: string): void => void process.stderr.write(`[soak-durable ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);

interface Line {
  phase: 'start' | 'done';
  agent: string;
  pid: number;
  n: number;
  /** The stream entry id. */
  id: string;
  at: number;
}

const dir = mkdtempSync(join(tmpdir(), 'soak-durable-'));
const file = join(dir, 'rec.jsonl');
const redis = await startRedis({ requireControl: true, args: ['--appendonly', 'yes', '--appendfsync', 'always'] });
// No resending after a reconnect: an XADD replayed after Redis restarts would add a second entry.
const c = redis.client({ autoResendUnfulfilledCommands: false, enableOfflineQueue: false, maxRetriesPerRequest: 0 });
const agents = new Map<string, DaemonProcess>();
const kills: Array<{ pid: number; at: number }> = [];

function spawn(id: string): DaemonProcess {
  const d = spawnAgentd(['run'], {
    env: {
      AGENTD_REDIS_URL: redis.url,
      AGENTD_AGENT_ID: id,
      AGENTD_DEN: DEN,
      AGENTD_PLUGINS: WORKER,
      // A TTL above the Redis outage (~3 s), so no live member is reaped while Redis is away.
      AGENTD_HEARTBEAT_TTL: '6',
      AGENTD_HEARTBEAT_INTERVAL: '2',
      AGENTD_SWEEP_INTERVAL: '1',
      AGENTD_DURABLE_POLL_INTERVAL: '0.5',
      AGENTD_LOG_LEVEL: 'warn',
      DURABLE_RECORD_FILE: file,
    },
  });
  agents.set(id, d);
  return d;
}

const ids = Array.from({ length: AGENTS }, (_, i) => `sd-${i + 1}`);
await Promise.all(ids.map((id) => spawn(id).waitForLog(() => true, 20_000).catch(() => undefined)));
await sleep(2_000);
log(`${AGENTS} agents up; ${RATE} tasks/s for ${SECONDS} s`);

let next = 0;
const submitted = new Set<number>();
let failedSubmits = 0;
let redisRestarts = 0;
let agentKills = 0;
const t0 = Date.now();
let nextKill = t0 + KILL_EVERY_MS;
let nextRedis = t0 + REDIS_EVERY_MS;
while (Date.now() - t0 < SECONDS * 1000) {
  const due = Math.floor(((Date.now() - t0) * RATE) / 1000);
  for (; next < due; next++) {
    const n = next;
    const data = { n, ms: 5 + (n % 10) * 5 };
    c.xadd(KEY, 'MAXLEN', '~', 100_000, '*', 'envelope', JSON.stringify({ event: 'job', data }))
      .then((id) => {
        submitted.add(n);
        return c.publish(KEY, String(id));
      })
      .catch(() => failedSubmits++);
  }
  if (Date.now() >= nextKill) {
    nextKill += KILL_EVERY_MS;
    const id = ids[agentKills % AGENTS]!;
    const d = agents.get(id)!;
    kills.push({ pid: d.pid, at: Date.now() });
    d.signal('SIGKILL');
    agentKills++;
    log(`SIGKILL ${id} (pid ${d.pid})`);
    setTimeout(() => void spawn(id), 3_000);
  }
  if (Date.now() >= nextRedis) {
    nextRedis += REDIS_EVERY_MS;
    redisRestarts++;
    log('kill -9 redis');
    // In the background: submitting goes on (and is refused) while Redis is down.
    void (async () => {
      await redis.kill('SIGKILL');
      await sleep(2_000);
      await redis.start();
      log('redis back');
    })();
  }
  await sleep(20);
}
log(`submitted ${submitted.size} (${failedSubmits} refused while Redis was down); draining`);

const lines = (): Line[] =>
  existsSync(file) ? readFileSync(file, 'utf8').split('\n').filter((l) => l.trim() !== '').map((l) => JSON.parse(l) as Line) : [];
const deadNs = async (): Promise<Set<number>> => {
  const rows = (await c.xrange(`den:${DEN}:dead`, '-', '+')) as Array<[string, string[]]>;
  return new Set(rows.map(([, f]) => (JSON.parse(f[f.indexOf('envelope') + 1] ?? '{}') as { data?: { n?: number } }).data?.n ?? -1));
};
const deadline = Date.now() + 120_000;
let done = new Set<number>();
let dead = new Set<number>();
for (;;) {
  done = new Set(lines().filter((l) => l.phase === 'done').map((l) => l.n));
  dead = await deadNs();
  const open = [...submitted].filter((n) => !done.has(n) && !dead.has(n));
  if (open.length === 0 || Date.now() > deadline) break;
  await sleep(1_000);
}
await sleep(2_000);
const all = lines();
done = new Set(all.filter((l) => l.phase === 'done').map((l) => l.n));
const pending = Number(((await c.xpending(KEY, 'agentd')) as [number])[0]);
const lost = [...submitted].filter((n) => !done.has(n) && !dead.has(n));
// Per stream entry: a task whose XADD reply was lost in a Redis kill may have been added twice.
const starts = new Map<string, Line[]>();
for (const l of all) if (l.phase === 'start') starts.set(l.id, [...(starts.get(l.id) ?? []), l]);
let duplicates = 0;
let unexplained = 0;
for (const [, list] of starts) {
  if (list.length < 2) continue;
  duplicates++;
  const earlier = list.slice(0, -1);
  const explained = earlier.every((s) => kills.some((k) => k.pid === s.pid && k.at >= s.at));
  if (!explained) unexplained++;
}
for (const d of agents.values()) d.signal('SIGTERM');
await Promise.all([...agents.values()].map((d) => Promise.race([d.exited, sleep(10_000)])));
for (const d of agents.values()) await d.stop();
await redis.stop();

const summary = {
  minutes: MINUTES,
  submitted: submitted.size,
  refusedWhileRedisDown: failedSubmits,
  completed: [...submitted].filter((n) => done.has(n)).length,
  deadLettered: dead.size,
  lost: lost.length,
  duplicates,
  unexplainedDuplicates: unexplained,
  agentKills,
  redisRestarts,
  pendingAtEnd: pending,
  invariants: { noneLost: lost.length === 0, duplicatesExplained: unexplained === 0, nothingPending: pending === 0 },
};
const ok = Object.values(summary.invariants).every(Boolean);
if (ok) rmSync(dir, { recursive: true, force: true });
else log(`kept ${dir}`);
console.log(JSON_OUT ? JSON.stringify(summary, null, 2) : summary);
process.exit(ok ? 0 : 1);
