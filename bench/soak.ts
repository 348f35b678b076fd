/**
 * Soak (not part of CI): a real redis-server and four agentd processes in one
 * den, under steady mixed traffic with bursts and bad messages, while the
 * harness keeps breaking things: Redis kill -9 + restart every ~90 s, SIGKILL
 * of an agent every ~2 min (restarted with the same id 10 s later), SIGTERM +
 * restart of another every ~3 min. Every 5 s it samples each agent's RSS and
 * /metrics. At the end it accounts for every event id (handled, dropped,
 * lost in a restart window) and checks the invariants:
 *
 *   1. no event handled twice by the same agent incarnation;
 *   2. each SIGKILL produced exactly one agent_down (and no live agent got one);
 *   3. no SIGTERM produced an agent_down;
 *   4. no agent process died except the ones the soak killed, no 'fatal' line;
 *   5. RSS of each long-lived agent stays within max − median < 50 MiB;
 *   6. after each Redis restart (and at the end) every live agent is back in the den set;
 *   7. every event an agent missed outside restart windows is covered by a counted drop;
 *   8. every SIGTERM (scheduled and final) ended in exit code 0.
 *
 * This file is the harness (processes, traffic, faults, sampling);
 * soak/schedule.ts says what fault comes when, soak/accounting.ts what was
 * sent, received and lost and the invariants, soak/report.ts the output.
 *
 * Progress goes to stderr. The summary goes to stdout, or with --json one
 * JSON document goes to stdout and the summary to stderr. Exits 1 if an
 * invariant broke (the scratch directory with recorder files and daemon logs
 * is then kept; --keep keeps it always).
 *
 *   npm run soak [-- --minutes N] [-- --json] [-- --keep] (--help lists the options)
 *   (npm prints its banner on stdout: use `npm run -s soak -- --json > out.json`)
 */
import { writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { spawnAgentd, type DaemonExit } from '../test/helpers/daemon.ts';
import { httpGet, RECORDER } from '../test/helpers/process.ts';
import { freePort } from '../test/helpers/ports.ts';
import { startRedis } from '../test/helpers/redis.ts';
import { hasMsg, logTime } from '../test/helpers/util.ts';
import { parseOptions } from './args.ts';
import { rssMiB } from './lib.ts';
import { INVALID, Ledger, alive, account, metricOf, type Agent, type Burst, type Incarnation, type Kill, type MembershipEvent, type RedisRestart, type SoakRun, type Term } from './soak/accounting.ts';
import { note, soakDocument, soakText } from './soak/report.ts';
import {
  AGENTS, BURST, DEN, HANDLER_DELAY_MS, INTERVAL, INVALID_EVERY, QUEUE_MAX, RATE, REDIS_DOWN_MS, RESTART_AFTER_KILL_MS, SAMPLE_MS, SERIES_EVERY, SWEEP, TTL,
  clock, fmtT, planActions, targets,
} from './soak/schedule.ts';

// --- settings ---------------------------------------------------------------

const opts = parseOptions('npm run soak --', 'Soak: four agents in one den under traffic, bursts and bad messages through Redis kills, SIGKILLs and SIGTERMs; checks the invariants.', {
  minutes: { type: 'number', default: 10, min: 0.1, help: 'how long traffic runs' },
  json: { type: 'boolean', help: 'one JSON document on stdout (the summary goes to stderr)' },
  keep: { type: 'boolean', help: 'keep the scratch directory (recorder files, daemon logs) even when the soak passes' },
});
const MINUTES = opts.minutes;
const SECONDS = Math.round(MINUTES * 60);
const DEN_KEY = `den:${DEN}:online_agents`;
const TYPES = ['task', 'task', 'task', 'task', 'new_message', 'new_message', 'new_message', 'metric', 'metric', 'note'] as const;

const plan = planActions(SECONDS);
const ledger = new Ledger(SECONDS, plan.filter((a) => a.kind === 'burst').length);
const agents: Agent[] = Array.from({ length: AGENTS }, (_, i) => ({ id: `soak-a${i}`, incs: [], current: undefined, busy: false, samples: [], heapSamples: [] }));
const run: SoakRun = {
  seconds: SECONDS,
  ledger,
  agents,
  kills: [] as Kill[],
  terms: [] as Term[],
  restarts: [] as RedisRestart[],
  bursts: [] as Burst[],
  membership: [] as MembershipEvent[],
  unexpectedExits: [],
  startFailures: [],
  finalDen: undefined,
  aborted: false,
};
const { kills, terms, restarts, bursts, membership } = run;
const liveIds = (): string[] => agents.filter((a) => alive(a.current)).map((a) => a.id);
const target = targets(agents);

// --- setup --------------------------------------------------------------------

const dir = await mkdtemp(join(tmpdir(), 'agentd-soak-'));
note(`scratch directory ${dir}; ${SECONDS} s, plan: ${plan.map((a) => `${a.kind}@${a.at}s`).join(' ')}`, false);
const server = await startRedis({ requireControl: true });
note(`redis-server (${server.kind}) on port ${server.port}`, false);
const admin = server.client({ retryStrategy: () => 100 });
// No offline queue: while Redis is down a publish fails at once instead of being sent later.
const publisher = server.client({ enableOfflineQueue: false, retryStrategy: () => 100 });
const observer = server.client({ retryStrategy: () => 100 }); // ioredis resubscribes after a reconnect
let probeSeen = 0;
observer.on('message', () => probeSeen++);
observer.on('pmessage', (_pattern: string, _channel: string, message: string) => {
  try {
    const env = JSON.parse(message) as { event?: string; data?: { agent?: string; via?: string; detectedBy?: string; rejoined?: boolean } };
    if (typeof env.event !== 'string' || typeof env.data?.agent !== 'string') return;
    const m: MembershipEvent = { event: env.event, agent: env.data.agent, at: Date.now() };
    if (env.data.via !== undefined) m.via = env.data.via;
    if (env.data.detectedBy !== undefined) m.detectedBy = env.data.detectedBy;
    if (env.data.rejoined !== undefined) m.rejoined = env.data.rejoined;
    membership.push(m);
    if (clock.start && env.event === 'agent_down') note(`observer: agent_down ${m.agent} (by ${m.detectedBy}, via ${m.via})`);
  } catch {
    // not ours
  }
});
await observer.psubscribe('agent:events:agent_*');
await observer.subscribe('soak:probe');

function agentEnv(agent: Agent, port: number, file: string): Record<string, string> {
  return {
    AGENTD_REDIS_URL: server.url,
    AGENTD_AGENT_ID: agent.id,
    AGENTD_DEN: DEN,
    AGENTD_HEARTBEAT_TTL: String(TTL),
    AGENTD_HEARTBEAT_INTERVAL: String(INTERVAL),
    AGENTD_SWEEP_INTERVAL: String(SWEEP),
    AGENTD_WATCH_NOTIFICATIONS: 'enable',
    AGENTD_QUEUE_MAX: String(QUEUE_MAX),
    AGENTD_HTTP_PORT: String(port),
    AGENTD_PLUGINS: RECORDER,
    AGENTD_LOG_LEVEL: 'info',
    RECORD_FILE: file,
    RECORD_DELAY_MS: String(HANDLER_DELAY_MS),
  };
}

function onExit(agent: Agent, inc: Incarnation, e: DaemonExit): void {
  inc.exit = { ...e, at: Date.now() };
  if (inc.stop) return;
  const text = `${inc.proc.logs.map((l) => JSON.stringify(l)).join('\n')}\n${inc.proc.stderr.join('\n')}`;
  if (inc.readyAt === 0 && text.includes('EADDRINUSE')) {
    inc.startFailure = 'EADDRINUSE';
    run.startFailures.push(`${agent.id}#${inc.n}: http port ${inc.port} taken (freePort race), retried`);
    return;
  }
  const what = `${agent.id}#${inc.n} (pid ${inc.pid}) exited (code ${e.code}, signal ${e.signal}) at ${fmtT(inc.exit.at)} without being stopped`;
  run.unexpectedExits.push(what);
  note(`UNEXPECTED: ${what}; stderr: ${inc.proc.stderr.slice(-5).join(' | ')}`);
}

async function launch(agent: Agent): Promise<Incarnation> {
  for (let attempt = 0; ; attempt++) {
    const port = await freePort();
    const n = agent.incs.length;
    const file = join(dir, `${agent.id}.${n}.jsonl`);
    const proc = spawnAgentd(['run'], { env: agentEnv(agent, port, file) });
    const inc: Incarnation = { agent: agent.id, n, proc, pid: proc.pid, port, file, startedAt: Date.now(), readyAt: 0, confirmedAt: 0, rss: [], heap: [], handled: 0, dups: 0 };
    agent.incs.push(inc);
    agent.current = inc;
    void proc.exited.then((e) => onExit(agent, inc, e));
    try {
      await proc.waitForLog(hasMsg('agentd ready'), 60_000);
    } catch (err) {
      await proc.exited.catch(() => undefined);
      if (inc.startFailure !== undefined && attempt < 3) continue;
      if (!inc.exit) {
        inc.stop = { kind: 'sigkill', at: Date.now() };
        await proc.stop();
      }
      throw new Error(`${agent.id} did not become ready: ${(err as Error).message}`);
    }
    inc.readyAt = Date.now();
    const confirmed = proc.logs.find(hasMsg('event subscription confirmed'));
    inc.confirmedAt = (confirmed && logTime(confirmed)) || inc.readyAt;
    return inc;
  }
}

async function scrape(inc: Incarnation): Promise<void> {
  const at = Date.now();
  try {
    const res = await httpGet(inc.port, '/metrics', 3_000);
    if (res.status !== 200) return;
    if (!inc.last || inc.last.at < at) inc.last = { at, text: res.body };
  } catch {
    // stopping, or busy past the time limit: the previous scrape stands
  }
}

// --- traffic --------------------------------------------------------------------

const TEXT = 'The quick brown fox jumps over the lazy dog while the agents keep their heartbeats going. '.repeat(3);
function payload(type: string, id: number): Record<string, unknown> {
  // `id` first: the analysis finds it in recorder lines as "data":{"id":N
  switch (type) {
    case 'task':
      return { id, task_id: `t-${id}`, priority: id % 3, args: { n: id % 97 } };
    case 'new_message':
      return { id, session_id: `s-${id % 64}`, role: 'user', content: TEXT.slice(0, 20 + ((id * 7) % 180)) };
    case 'metric':
      return { id, name: 'cpu', value: (id % 1000) / 10 };
    default:
      return { id, tags: ['soak', type], text: TEXT.slice(0, 40) };
  }
}

function publishSteady(i: number): void {
  if (i % INVALID_EVERY === INVALID_EVERY - 1) {
    const k = Math.floor(i / INVALID_EVERY) % INVALID.length;
    const bad = INVALID[k]!;
    const st = ledger.invalid[k]!;
    st.attempted++;
    ledger.inFlight++;
    publisher.publish('agent:events:task', bad.text).then(
      (n) => {
        st.acked++;
        st.delivered += n;
        ledger.inFlight--;
      },
      () => {
        st.failed++;
        ledger.failedAt.push(Date.now());
        ledger.inFlight--;
      },
    );
    return;
  }
  if (ledger.nextId >= ledger.cap) {
    ledger.overCap++;
    return;
  }
  const type = TYPES[i % TYPES.length]!;
  const id = ledger.newId(0);
  const message = JSON.stringify({ event: type, data: payload(type, id), id: `soak-${id}`, source: 'soak-harness', ts: ledger.sentAt[id] });
  ledger.inFlight++;
  publisher.publish(`agent:events:${type}`, message).then(
    (n) => {
      ledger.acked(id, n);
      ledger.inFlight--;
    },
    () => {
      ledger.failed(id);
      ledger.failedAt.push(Date.now());
      ledger.inFlight--;
    },
  );
}

let trafficOn = false;
let steadySent = 0;
async function traffic(): Promise<void> {
  const t0 = performance.now();
  while (trafficOn) {
    const due = Math.floor(((performance.now() - t0) * RATE) / 1000);
    const n = Math.min(due - steadySent, RATE / 2);
    for (let k = 0; k < n; k++) publishSteady(steadySent + k);
    steadySent += n;
    await sleep(10);
  }
}

async function burst(index: number): Promise<void> {
  const b: Burst = { index, startAt: Date.now(), endAt: 0, acked: 0, failed: 0 };
  bursts.push(b);
  const pipe = publisher.pipeline();
  const ids: number[] = [];
  for (let k = 0; k < BURST && ledger.nextId < ledger.cap; k++) {
    const id = ledger.newId(index + 1);
    ids.push(id);
    pipe.publish('agent:events:bulk', JSON.stringify({ event: 'bulk', data: { id, chunk: k, text: TEXT.slice(0, 60) }, id: `soak-${id}`, source: 'soak-harness', ts: b.startAt }));
  }
  let res: Array<[Error | null, unknown]> | null = null;
  try {
    res = await pipe.exec();
  } catch {
    res = null;
  }
  ids.forEach((id, k) => {
    const r = res?.[k];
    if (r && r[0] === null) {
      ledger.acked(id, Number(r[1]));
      b.acked++;
    } else {
      ledger.failed(id);
      b.failed++;
    }
  });
  b.endAt = Date.now();
  note(`burst ${index + 1}: ${b.acked} events pipelined in ${b.endAt - b.startAt} ms${b.failed ? `, ${b.failed} failed` : ''}`);
}

// --- actions ----------------------------------------------------------------------

async function withDeadline<T>(p: Promise<T>, ms: number): Promise<T | undefined> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<undefined>((r) => (timer = setTimeout(() => r(undefined), ms)));
  try {
    return await Promise.race([p, t]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Stops the agent's current incarnation with `kind`'s signal (after a last scrape), lets `stopped` wait and
 * record the stop as its kind needs, then starts the next incarnation and records when it is subscribed.
 */
async function replace(agent: Agent, kind: 'sigkill' | 'sigterm', stopped: (inc: Incarnation, at: number) => Promise<{ restartedAt: number }>): Promise<void> {
  agent.busy = true;
  try {
    const inc = agent.current;
    if (!alive(inc)) return;
    await scrape(inc);
    const at = Date.now();
    inc.stop = { kind, at };
    inc.proc.signal(kind === 'sigkill' ? 'SIGKILL' : 'SIGTERM');
    const record = await stopped(inc, at);
    const next = await launch(agent);
    record.restartedAt = next.confirmedAt;
    note(`restarted ${agent.id}#${next.n} (pid ${next.pid})`);
  } finally {
    agent.busy = false;
  }
}

const sigkill = (agent: Agent): Promise<void> =>
  replace(agent, 'sigkill', async (inc, at) => {
    await inc.proc.exited;
    const k: Kill = { agent: agent.id, at, restartedAt: 0 };
    kills.push(k);
    note(`SIGKILL ${agent.id}#${inc.n} (pid ${inc.pid}); restart in ${RESTART_AFTER_KILL_MS / 1000} s`);
    await sleep(Math.max(0, at + RESTART_AFTER_KILL_MS - Date.now()));
    return k;
  });

const sigterm = (agent: Agent): Promise<void> =>
  replace(agent, 'sigterm', async (inc, at) => {
    const t: Term = { agent: agent.id, at, restartedAt: 0 };
    terms.push(t);
    const exit = await withDeadline(inc.proc.exited, 20_000);
    if (!exit) {
      note(`${agent.id}#${inc.n} still running 20 s after SIGTERM: SIGKILL`);
      await inc.proc.stop();
    }
    t.exit = inc.exit ?? { code: null, signal: null };
    t.exitMs = (inc.exit?.at ?? Date.now()) - at;
    note(`SIGTERM ${agent.id}#${inc.n} (pid ${inc.pid}): exit code ${t.exit.code}${t.exit.signal ? ` signal ${t.exit.signal}` : ''} after ${t.exitMs} ms; restarting`);
    return t;
  });

/** Resolves with the ms it took until every live agent is a member of the den, or undefined at the deadline. */
async function waitForDen(since: number, timeoutMs: number): Promise<{ ms?: number; missing: string[] }> {
  let missing: string[] = liveIds();
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const members = await withDeadline(admin.smembers(DEN_KEY).catch(() => undefined), 1_000);
    if (members) {
      missing = liveIds().filter((id) => !members.includes(id));
      if (missing.length === 0) return { ms: Date.now() - since, missing };
    }
    await sleep(100);
  }
  return { missing };
}

async function redisRestart(index: number): Promise<void> {
  const r: RedisRestart = { index, killAt: Date.now(), upAt: 0 };
  restarts.push(r);
  await server.kill('SIGKILL');
  note(`redis restart ${index + 1}: kill -9, down for ${REDIS_DOWN_MS / 1000} s`);
  await sleep(REDIS_DOWN_MS);
  await server.start();
  r.upAt = Date.now();
  const den = await waitForDen(r.upAt, 30_000);
  if (den.ms !== undefined) r.denBackMs = den.ms;
  else r.missingFromDen = den.missing;
  // The observer must be subscribed again before the next kill: its channel probe proves it.
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline) {
    const before = probeSeen;
    const n = await withDeadline(admin.publish('soak:probe', 'x').catch(() => 0), 1_000);
    await sleep(50);
    if (n === 1 && probeSeen > before) {
      r.observerBackMs = Date.now() - r.upAt;
      break;
    }
    await sleep(100);
  }
  note(
    `redis restart ${index + 1}: up again; ${den.ms !== undefined ? `all live agents back in the den after ${den.ms} ms` : `NOT back in the den after 30 s: ${den.missing.join(', ')}`}` +
      `; observer resubscribed ${r.observerBackMs !== undefined ? `after ${r.observerBackMs} ms` : 'NOT within 30 s'}`,
  );
}

// --- sampling -----------------------------------------------------------------------

let sampling = false;
let sampleTicks = 0;
async function sampler(): Promise<void> {
  const t0 = Date.now();
  while (sampling) {
    const wait = t0 + sampleTicks * SAMPLE_MS - Date.now();
    if (wait > 0) await sleep(wait);
    if (!sampling) break;
    const tickAt = Date.now();
    const scrapes: Array<Promise<void>> = [];
    for (const a of agents) {
      const inc = a.current;
      let v: number | null = null;
      if (alive(inc)) {
        try {
          v = rssMiB(inc.pid);
          inc.rss.push(v);
        } catch {
          v = null;
        }
        scrapes.push(scrape(inc));
      }
      a.samples.push(v);
    }
    await Promise.all(scrapes);
    for (const a of agents) {
      const inc = a.current;
      let h: number | null = null;
      if (alive(inc) && inc.last && inc.last.at >= tickAt) {
        h = metricOf(inc.last, 'nodejs_heap_size_used_bytes') / 1048576;
        inc.heap.push(h);
      }
      a.heapSamples.push(h);
    }
    if (sampleTicks % SERIES_EVERY === 0) {
      const rss = agents.map((a) => `${a.id.slice(-2)} ${a.samples.at(-1)?.toFixed(0) ?? '-'}`).join(' ');
      const drops = agents.reduce((s, a) => s + metricOf(a.current?.last, 'agentd_events_dropped_total', { reason: 'queue_full' }), 0);
      note(`published ${ledger.nextId} valid (${ledger.failedAt.length} failed), live ${liveIds().length}/${AGENTS}, RSS MiB ${rss}, queue_full drops (current incarnations) ${drops}`, false);
    }
    // A supervisor's job: an agent that died on its own is restarted (and counted against invariant 4).
    for (const a of agents) {
      if (trafficOn && !a.busy && a.current?.exit && !a.current.stop) {
        a.busy = true;
        void launch(a)
          .then((inc) => note(`restarted ${a.id}#${inc.n} after its unexpected exit`))
          .catch((err: unknown) => note(`could not restart ${a.id}: ${(err as Error).message.split('\n')[0]}`))
          .finally(() => (a.busy = false));
      }
    }
    sampleTicks++;
  }
}

// --- run ----------------------------------------------------------------------------

try {
  await Promise.all(agents.map((a) => launch(a)));
  const den = await waitForDen(Date.now(), 30_000);
  if (den.ms === undefined) throw new Error(`agents not in the den at start: ${den.missing.join(', ')}`);
  clock.start = Date.now();
  note(`${AGENTS} agents ready in den "${DEN}"; traffic on (${RATE}/s)`);
  trafficOn = true;
  sampling = true;
  const trafficDone = traffic();
  const samplerDone = sampler();

  let redisIndex = 0;
  let burstIndex = 0;
  for (const action of plan) {
    const due = clock.start + action.at * 1000;
    if (Date.now() < due) await sleep(due - Date.now());
    else if (Date.now() - due > 2_000) note(`${action.kind} planned at ${action.at} s runs ${Math.round((Date.now() - due) / 1000)} s late`);
    if (action.kind === 'redis') await redisRestart(redisIndex++);
    else if (action.kind === 'burst') await burst(burstIndex++);
    else if (action.kind === 'sigkill') await sigkill(target('sigkill'));
    else await sigterm(target('sigterm'));
  }
  const end = clock.start + SECONDS * 1000;
  if (Date.now() < end) await sleep(end - Date.now());

  trafficOn = false;
  await trafficDone;
  const settle = Date.now() + 10_000;
  while (ledger.inFlight > 0 && Date.now() < settle) await sleep(50);
  note(`traffic off after ${Math.round((Date.now() - clock.start) / 1000)} s; letting the queues drain`);
  await sleep(5_000);
  sampling = false;
  await samplerDone;
  await Promise.all(agents.map((a) => (alive(a.current) ? scrape(a.current) : undefined)));
  const members = (await withDeadline(admin.smembers(DEN_KEY).catch(() => [] as string[]), 5_000)) ?? [];
  run.finalDen = { members: members.sort(), live: liveIds().sort() };

  note('stopping every agent with SIGTERM');
  await Promise.all(
    agents.map(async (a) => {
      const inc = a.current;
      if (!inc || inc.exit) return;
      inc.stop = { kind: 'final', at: Date.now() };
      inc.proc.signal('SIGTERM');
      if (!(await withDeadline(inc.proc.exited, 20_000))) await inc.proc.stop();
    }),
  );
  await sleep(1_000);
} catch (err) {
  note(`soak aborted: ${(err as Error).stack ?? String(err)}`);
  run.aborted = true;
  trafficOn = false;
  sampling = false;
  for (const a of agents) for (const inc of a.incs) if (!inc.exit) {
    inc.stop ??= { kind: 'final', at: Date.now() };
    await inc.proc.stop();
  }
} finally {
  await server.stop();
}

// --- accounting and report -----------------------------------------------------------

note('reading recorder files', false);
const acc = await account(run, SERIES_EVERY);
const doc = soakDocument(run, acc, MINUTES, plan, server.kind);
const text = soakText(doc, run);
if (opts.json) {
  process.stderr.write(text);
  process.stdout.write(`${JSON.stringify(doc, null, 2)}\n`);
} else process.stdout.write(text);

// Daemon logs next to the recorder files, for a post-mortem.
for (const a of agents) for (const i of a.incs) writeFileSync(join(dir, `${a.id}.${i.n}.log`), `${i.proc.logs.map((l) => JSON.stringify(l)).join('\n')}\n${i.proc.stderr.join('\n')}`);
if (opts.keep || !doc.ok) process.stderr.write(`kept ${dir} (recorder files and daemon logs)\n`);
else await rm(dir, { recursive: true, force: true });
process.exit(doc.ok ? 0 : 1);
