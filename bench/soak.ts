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
 * Progress goes to stderr. The summary goes to stdout, or with --json one
 * JSON document goes to stdout and the summary to stderr. Exits 1 if an
 * invariant broke (the scratch directory with recorder files and daemon logs
 * is then kept; --keep keeps it always).
 *
 *   npm run soak [-- --minutes N] [-- --json] [-- --keep]
 *   (npm prints its banner on stdout: use `npm run -s soak -- --json > out.json`)
 */
import { createReadStream, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { spawnAgentd, type DaemonExit, type DaemonProcess } from '../test/helpers/daemon.ts';
import { freePort } from '../test/helpers/ports.ts';
import { startRedis } from '../test/helpers/redis.ts';
import { machine, rssMiB } from './lib.ts';
import { median, summarize } from './stats.ts';

// --- settings ---------------------------------------------------------------

const argv = process.argv.slice(2);
const option = (name: string): string | undefined => {
  const i = argv.indexOf(name);
  return i >= 0 ? argv[i + 1] : undefined;
};
const MINUTES = Number(option('--minutes') ?? 10);
if (!(MINUTES > 0)) {
  process.stderr.write('soak: --minutes must be a positive number\n');
  process.exit(2);
}
const JSON_OUT = argv.includes('--json');
const KEEP = argv.includes('--keep');

const SECONDS = Math.round(MINUTES * 60);
const AGENTS = 4;
const DEN = 'soak';
const TTL = 3;
const INTERVAL = 1;
const SWEEP = 1;
/**
 * The recorder waits this long (a timer) before writing, like a handler doing
 * I/O: with the default 16 concurrent calls the agents handle up to ~8,000
 * events/s, above the steady rate and far below a pipelined burst, which
 * overflows the queue. (Without a wait, calls finish in the same turn and the
 * queue never fills: the backlog stays in the socket.)
 */
const HANDLER_DELAY_MS = 2;
/** Half the default 10,000, so that a burst surely overflows it. */
const QUEUE_MAX = 5_000;
/** Steady messages per second, all types together (one in INVALID_EVERY is invalid). */
const RATE = 2_000;
const INVALID_EVERY = 200;
const BURST = 20_000;
const REDIS_DOWN_MS = 3_000;
const RESTART_AFTER_KILL_MS = 10_000;
const SAMPLE_MS = 5_000;
const SERIES_EVERY = 6; // one series point every 6 samples = 30 s
const RSS_BOUND_MIB = 50;
/** An incarnation is long-lived (invariant 5) when it ran at least this long. */
const LONG_LIVED_S = Math.min(300, SECONDS * 0.6);
/** Actions start at least this far apart, so each one's effects can be told apart. */
const ACTION_GAP_S = 20;
/** Margin before a signal or a Redis kill: messages in flight then may be lost too. */
const WINDOW_LEAD_MS = 500;
/** How long after a burst the queues may still be overflowing. */
const BURST_TAIL_MS = 10_000;
const DEN_KEY = `den:${DEN}:online_agents`;
const RECORDER = fileURLToPath(new URL('../test/fixtures/plugins/recorder.js', import.meta.url));
const TYPES = ['task', 'task', 'task', 'task', 'new_message', 'new_message', 'new_message', 'metric', 'metric', 'note'] as const;
const INVALID = [
  { kind: 'bad JSON', reason: 'not_json', text: '{"event":"task","data":{"id":' },
  { kind: '__proto__ key', reason: 'forbidden_key', text: '{"event":"task","data":{"__proto__":{"polluted":true}}}' },
  { kind: 'constructor.prototype', reason: 'forbidden_key', text: '{"event":"note","data":{"constructor":{"prototype":{"polluted":true}}}}' },
  { kind: 'no event field', reason: 'no_event', text: '{"data":{"x":1}}' },
  { kind: 'not an object', reason: 'not_object', text: '[1,2,3]' },
] as const;
const BAD_REASONS = ['too_large', 'not_json', 'not_object', 'no_event', 'forbidden_key'];
const QUEUE_REASONS = ['queue_full', 'evicted', 'shutdown'];

// --- schedule ---------------------------------------------------------------

type ActionKind = 'redis' | 'sigkill' | 'sigterm' | 'burst';
interface PlannedAction {
  at: number;
  kind: ActionKind;
}

/** Nominal periods, then each action pushed later until it is ACTION_GAP_S away from every other. */
function planActions(seconds: number): PlannedAction[] {
  const kinds: Array<{ kind: ActionKind; first: number; every: number; lastAt: number }> = [
    { kind: 'redis', first: 90, every: 90, lastAt: seconds - 30 },
    { kind: 'sigkill', first: 20, every: 120, lastAt: seconds - 30 },
    { kind: 'sigterm', first: 50, every: 180, lastAt: seconds - 30 },
    { kind: 'burst', first: 35, every: 60, lastAt: seconds - 20 },
  ];
  const placed: PlannedAction[] = [];
  for (const k of kinds) {
    for (let t = k.first; t <= seconds; t += k.every) {
      let at = t;
      while (placed.some((p) => Math.abs(p.at - at) < ACTION_GAP_S)) at += 5;
      if (at <= k.lastAt) placed.push({ at, kind: k.kind });
    }
  }
  return placed.sort((a, b) => a.at - b.at);
}

const plan = planActions(SECONDS);

// --- bookkeeping --------------------------------------------------------------

const runStart = { wall: 0 };
const rel = (at: number): number => Math.round((at - runStart.wall) / 100) / 10;
const fmtT = (at: number): string => {
  const s = Math.max(0, Math.round((at - runStart.wall) / 1000));
  return `${String(Math.floor(s / 60)).padStart(2, '0')}:${String(s % 60).padStart(2, '0')}`;
};
const timeline: Array<{ t: number; what: string }> = [];
function note(what: string, keep = true): void {
  const now = Date.now();
  process.stderr.write(`[${runStart.wall ? fmtT(now) : 'setup'}] ${what}\n`);
  if (keep) timeline.push({ t: runStart.wall ? rel(now) : 0, what });
}

const nBursts = plan.filter((a) => a.kind === 'burst').length;
const CAP = Math.ceil(SECONDS * RATE * 1.05) + nBursts * BURST + 10_000;
/** Per valid event id: when it was sent (wall ms), 0 pending / 1 acked / 2 failed, PUBLISH's receiver count, burst number. */
const sentAt = new Float64Array(CAP);
const status = new Uint8Array(CAP);
const receivers = new Uint8Array(CAP);
const burstOf = new Uint8Array(CAP);
let nextId = 0;
let inFlight = 0;
let overCap = 0;
const invalidStats = INVALID.map(() => ({ attempted: 0, acked: 0, failed: 0, delivered: 0 }));
const failedAt: number[] = [];

interface Scrape {
  at: number;
  /** name -> list of [labels, value] */
  values: Map<string, Array<[Record<string, string>, number]>>;
}
function metric(s: Scrape | undefined, name: string, match: Record<string, string> = {}): number {
  let sum = 0;
  for (const [labels, v] of s?.values.get(name) ?? []) {
    if (Object.entries(match).every(([k, want]) => labels[k] === want)) sum += v;
  }
  return sum;
}
function parseMetrics(text: string, at: number): Scrape {
  const values = new Map<string, Array<[Record<string, string>, number]>>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]!] = l[2]!;
    const list = values.get(m[1]!) ?? [];
    list.push([labels, Number(m[3])]);
    values.set(m[1]!, list);
  }
  return { at, values };
}

type StopKind = 'sigkill' | 'sigterm' | 'final';
interface Incarnation {
  readonly agent: string;
  readonly n: number;
  readonly proc: DaemonProcess;
  readonly pid: number;
  readonly port: number;
  readonly file: string;
  readonly startedAt: number;
  readyAt: number;
  confirmedAt: number;
  stop?: { kind: StopKind; at: number };
  exit?: DaemonExit & { at: number };
  startFailure?: string;
  last?: Scrape;
  rss: number[];
  /** V8 heap in use (nodejs_heap_size_used_bytes, MiB) at each sample, to tell a leak from a high-water mark. */
  heap: number[];
  // filled by the analysis
  handled: number;
  dups: number;
}
interface Agent {
  readonly id: string;
  readonly incs: Incarnation[];
  current: Incarnation | undefined;
  busy: boolean;
  /** RSS per sample tick (null while down). */
  readonly samples: Array<number | null>;
  readonly heapSamples: Array<number | null>;
}
interface Kill {
  agent: string;
  at: number;
  restartedAt: number;
}
interface Term {
  agent: string;
  at: number;
  exit?: DaemonExit;
  exitMs?: number;
  restartedAt: number;
}
interface RedisRestart {
  index: number;
  killAt: number;
  upAt: number;
  denBackMs?: number;
  observerBackMs?: number;
  missingFromDen?: string[];
}
interface Burst {
  index: number;
  startAt: number;
  endAt: number;
  acked: number;
  failed: number;
}
interface MembershipEvent {
  event: string;
  agent: string;
  at: number;
  via?: string;
  detectedBy?: string;
  rejoined?: boolean;
}

const agents: Agent[] = Array.from({ length: AGENTS }, (_, i) => ({ id: `soak-a${i}`, incs: [], current: undefined, busy: false, samples: [], heapSamples: [] }));
const kills: Kill[] = [];
const terms: Term[] = [];
const restarts: RedisRestart[] = [];
const bursts: Burst[] = [];
const membership: MembershipEvent[] = [];
const unexpectedExits: string[] = [];
const startFailures: string[] = [];
let finalDen: { members: string[]; live: string[] } | undefined;

const logTime = (l: Record<string, unknown> | undefined): number => (l && typeof l['time'] === 'string' ? Date.parse(l['time']) : 0);
const alive = (inc: Incarnation | undefined): inc is Incarnation => inc !== undefined && inc.readyAt > 0 && !inc.stop && !inc.exit;
const liveIds = (): string[] => agents.filter((a) => alive(a.current)).map((a) => a.id);

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
    if (runStart.wall && env.event === 'agent_down') note(`observer: agent_down ${m.agent} (by ${m.detectedBy}, via ${m.via})`);
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
    startFailures.push(`${agent.id}#${inc.n}: http port ${inc.port} taken (freePort race), retried`);
    return;
  }
  const what = `${agent.id}#${inc.n} (pid ${inc.pid}) exited (code ${e.code}, signal ${e.signal}) at ${fmtT(inc.exit.at)} without being stopped`;
  unexpectedExits.push(what);
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
      await proc.waitForLog((l) => l['msg'] === 'agentd ready', 60_000);
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
    inc.confirmedAt = logTime(proc.logs.find((l) => l['msg'] === 'event subscription confirmed')) || inc.readyAt;
    return inc;
  }
}

async function scrape(inc: Incarnation): Promise<void> {
  const at = Date.now();
  try {
    const res = await fetch(`http://127.0.0.1:${inc.port}/metrics`, { signal: AbortSignal.timeout(3_000) });
    const text = await res.text();
    if (!res.ok) return;
    if (!inc.last || inc.last.at < at) inc.last = parseMetrics(text, at);
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

function newId(burst: number): number {
  const id = nextId++;
  const now = Date.now();
  sentAt[id] = now;
  burstOf[id] = Math.min(255, burst);
  return id;
}

function publishSteady(i: number): void {
  if (i % INVALID_EVERY === INVALID_EVERY - 1) {
    const k = Math.floor(i / INVALID_EVERY) % INVALID.length;
    const bad = INVALID[k]!;
    const st = invalidStats[k]!;
    st.attempted++;
    inFlight++;
    publisher.publish('agent:events:task', bad.text).then(
      (n) => {
        st.acked++;
        st.delivered += n;
        inFlight--;
      },
      () => {
        st.failed++;
        failedAt.push(Date.now());
        inFlight--;
      },
    );
    return;
  }
  if (nextId >= CAP) {
    overCap++;
    return;
  }
  const type = TYPES[i % TYPES.length]!;
  const id = newId(0);
  const message = JSON.stringify({ event: type, data: payload(type, id), id: `soak-${id}`, source: 'soak-harness', ts: sentAt[id] });
  inFlight++;
  publisher.publish(`agent:events:${type}`, message).then(
    (n) => {
      status[id] = 1;
      receivers[id] = Math.min(255, n);
      inFlight--;
    },
    () => {
      status[id] = 2;
      failedAt.push(Date.now());
      inFlight--;
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
  for (let k = 0; k < BURST && nextId < CAP; k++) {
    const id = newId(index + 1);
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
      status[id] = 1;
      receivers[id] = Math.min(255, Number(r[1]));
      b.acked++;
    } else {
      status[id] = 2;
      b.failed++;
    }
  });
  b.endAt = Date.now();
  note(`burst ${index + 1}: ${b.acked} events pipelined in ${b.endAt - b.startAt} ms${b.failed ? `, ${b.failed} failed` : ''}`);
}

// --- actions ----------------------------------------------------------------------

let killCount = 0;
let termCount = 0;
let lastKilled: Agent | undefined;
function target(kind: 'sigkill' | 'sigterm'): Agent {
  // soak-a0 is never touched (the long-lived reference); kills go a1, a2, a3, …; SIGTERMs a3, a2, a1, …,
  // skipping the agent killed last (a SIGTERM goes to another agent).
  if (kind === 'sigkill') return (lastKilled = agents[1 + (killCount++ % (AGENTS - 1))]!);
  let a = agents[AGENTS - 1 - (termCount++ % (AGENTS - 1))]!;
  if (a === lastKilled) a = agents[AGENTS - 1 - (termCount++ % (AGENTS - 1))]!;
  return a;
}

async function withDeadline<T>(p: Promise<T>, ms: number): Promise<T | undefined> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<undefined>((r) => (timer = setTimeout(() => r(undefined), ms)));
  try {
    return await Promise.race([p, t]);
  } finally {
    clearTimeout(timer);
  }
}

async function sigkill(agent: Agent): Promise<void> {
  agent.busy = true;
  try {
    const inc = agent.current;
    if (!alive(inc)) return;
    await scrape(inc);
    const at = Date.now();
    inc.stop = { kind: 'sigkill', at };
    inc.proc.signal('SIGKILL');
    await inc.proc.exited;
    const k: Kill = { agent: agent.id, at, restartedAt: 0 };
    kills.push(k);
    note(`SIGKILL ${agent.id}#${inc.n} (pid ${inc.pid}); restart in ${RESTART_AFTER_KILL_MS / 1000} s`);
    await sleep(Math.max(0, at + RESTART_AFTER_KILL_MS - Date.now()));
    const next = await launch(agent);
    k.restartedAt = next.confirmedAt;
    note(`restarted ${agent.id}#${next.n} (pid ${next.pid})`);
  } finally {
    agent.busy = false;
  }
}

async function sigterm(agent: Agent): Promise<void> {
  agent.busy = true;
  try {
    const inc = agent.current;
    if (!alive(inc)) return;
    await scrape(inc);
    const at = Date.now();
    inc.stop = { kind: 'sigterm', at };
    inc.proc.signal('SIGTERM');
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
    const next = await launch(agent);
    t.restartedAt = next.confirmedAt;
    note(`restarted ${agent.id}#${next.n} (pid ${next.pid})`);
  } finally {
    agent.busy = false;
  }
}

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
        h = metric(inc.last, 'nodejs_heap_size_used_bytes') / 1048576;
        inc.heap.push(h);
      }
      a.heapSamples.push(h);
    }
    if (sampleTicks % SERIES_EVERY === 0) {
      const rss = agents.map((a) => `${a.id.slice(-2)} ${a.samples.at(-1)?.toFixed(0) ?? '-'}`).join(' ');
      const drops = agents.reduce((s, a) => s + metric(a.current?.last, 'agentd_events_dropped_total', { reason: 'queue_full' }), 0);
      note(`published ${nextId} valid (${failedAt.length} failed), live ${liveIds().length}/${AGENTS}, RSS MiB ${rss}, queue_full drops (current incarnations) ${drops}`, false);
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

let exitCode = 0;
try {
  await Promise.all(agents.map((a) => launch(a)));
  const den = await waitForDen(Date.now(), 30_000);
  if (den.ms === undefined) throw new Error(`agents not in the den at start: ${den.missing.join(', ')}`);
  runStart.wall = Date.now();
  note(`${AGENTS} agents ready in den "${DEN}"; traffic on (${RATE}/s)`);
  trafficOn = true;
  sampling = true;
  const trafficDone = traffic();
  const samplerDone = sampler();

  let redisIndex = 0;
  let burstIndex = 0;
  for (const action of plan) {
    const due = runStart.wall + action.at * 1000;
    if (Date.now() < due) await sleep(due - Date.now());
    else if (Date.now() - due > 2_000) note(`${action.kind} planned at ${action.at} s runs ${Math.round((Date.now() - due) / 1000)} s late`);
    if (action.kind === 'redis') await redisRestart(redisIndex++);
    else if (action.kind === 'burst') await burst(burstIndex++);
    else if (action.kind === 'sigkill') await sigkill(target('sigkill'));
    else await sigterm(target('sigterm'));
  }
  const end = runStart.wall + SECONDS * 1000;
  if (Date.now() < end) await sleep(end - Date.now());

  trafficOn = false;
  await trafficDone;
  const settle = Date.now() + 10_000;
  while (inFlight > 0 && Date.now() < settle) await sleep(50);
  note(`traffic off after ${Math.round((Date.now() - runStart.wall) / 1000)} s; letting the queues drain`);
  await sleep(5_000);
  sampling = false;
  await samplerDone;
  await Promise.all(agents.map((a) => (alive(a.current) ? scrape(a.current) : undefined)));
  const members = (await withDeadline(admin.smembers(DEN_KEY).catch(() => [] as string[]), 5_000)) ?? [];
  finalDen = { members: members.sort(), live: liveIds().sort() };

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
  exitCode = 1;
  trafficOn = false;
  sampling = false;
  for (const a of agents) for (const inc of a.incs) if (!inc.exit) {
    inc.stop ??= { kind: 'final', at: Date.now() };
    await inc.proc.stop();
  }
} finally {
  await server.stop();
}

// --- analysis -------------------------------------------------------------------------

note('reading recorder files', false);
const ID_RE = /"data":\{"id":(\d+)/;
const AT_RE = /"at":(\d+)\}$/;
const handledBy = agents.map(() => new Uint8Array(CAP));
const latency = agents.map(() => [] as number[]);
const seen = new Uint8Array(CAP);
let handledAfterFailedPublish = 0;
for (const [ai, a] of agents.entries()) {
  for (const inc of a.incs) {
    seen.fill(0);
    try {
      const lines = createInterface({ input: createReadStream(inc.file), crlfDelay: Infinity });
      for await (const line of lines) {
        const m = ID_RE.exec(line);
        if (!m) continue;
        const id = Number(m[1]);
        if (id >= CAP) continue;
        inc.handled++;
        if (seen[id]) inc.dups++;
        seen[id] = 1;
        const h = handledBy[ai]!;
        if (h[id]! < 255) h[id]!++;
        if (status[id] === 2 && h[id] === 1) handledAfterFailedPublish++;
        if (id % 50 === 0) {
          const t = AT_RE.exec(line);
          if (t) latency[ai]!.push(Number(t[1]) - sentAt[id]!);
        }
      }
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
  }
}

type Window = [from: number, to: number];
const inWindow = (t: number, ws: readonly Window[]): boolean => ws.some(([f, to]) => t >= f && t <= to);

/** Per agent: when its own restarts (signal → next incarnation subscribed) and each Redis restart (kill → its resubscription) left it deaf. */
function windowsOf(a: Agent): { restart: Window[]; redis: Window[]; redisIndex: number[]; unresubscribed: number[] } {
  const restart: Window[] = [];
  const incs = a.incs.filter((i) => i.readyAt > 0);
  for (const [k, inc] of incs.entries()) {
    const endAt = inc.stop && inc.stop.kind !== 'final' ? inc.stop.at : inc.exit && !inc.stop ? inc.exit.at : undefined;
    if (endAt === undefined) continue;
    restart.push([endAt - WINDOW_LEAD_MS, incs[k + 1]?.confirmedAt ?? Number.POSITIVE_INFINITY]);
  }
  const redis: Window[] = [];
  const redisIndex: number[] = [];
  const unresubscribed: number[] = [];
  for (const r of restarts) {
    const inc = incs.find((i) => i.readyAt <= r.killAt && (i.stop?.at ?? i.exit?.at ?? Number.POSITIVE_INFINITY) > r.killAt);
    if (!inc) continue;
    redisIndex.push(r.index);
    const back = inc.proc.logs.find((l) => String(l['msg']).startsWith('event subscription confirmed again') && logTime(l) > r.killAt);
    if (back) redis.push([r.killAt - WINDOW_LEAD_MS, logTime(back)]);
    else {
      unresubscribed.push(r.index);
      redis.push([r.killAt - WINDOW_LEAD_MS, inc.stop?.at ?? inc.exit?.at ?? Number.POSITIVE_INFINITY]);
    }
  }
  return { restart, redis, redisIndex, unresubscribed };
}
const burstWindows: Window[] = bursts.map((b) => [b.startAt, b.endAt + BURST_TAIL_MS]);

let validAcked = 0;
let validFailed = 0;
let deliveredValid = 0;
let burstAcked = 0;
for (let id = 0; id < nextId; id++) {
  if (status[id] === 1) {
    validAcked++;
    deliveredValid += receivers[id]!;
    if (burstOf[id]) burstAcked++;
  } else validFailed++;
}

interface AgentReport {
  agent: string;
  incarnations: number;
  handled: number;
  duplicatesInIncarnation: number;
  handledTwiceAcrossIncarnations: number;
  missed: number;
  missedWhileRestarting: number;
  missedInRedisRestart: number;
  missedInBurstWindow: number;
  missedOther: number;
  received: number;
  dropped: Record<string, number>;
  handlerCalls: Record<string, number>;
  receivedNotHandledNorDropped: number;
  latencyMs: { p50: number; p99: number; max: number };
  unresubscribedAfterRestart: number[];
}
const missedPerRestart = restarts.map(() => agents.map(() => 0));
const failedPerRestart = restarts.map(() => 0);
for (const t of failedAt) {
  const i = restarts.findIndex((r) => t >= r.killAt - WINDOW_LEAD_MS && t <= r.upAt + 5_000);
  if (i >= 0) failedPerRestart[i]!++;
}
const failedOutsideRestarts = failedAt.length - failedPerRestart.reduce((s, n) => s + n, 0);

const agentReports: AgentReport[] = agents.map((a, ai) => {
  const w = windowsOf(a);
  const h = handledBy[ai]!;
  let missed = 0;
  let restarting = 0;
  let redis = 0;
  let burstW = 0;
  let other = 0;
  let twice = 0;
  for (let id = 0; id < nextId; id++) {
    if (h[id]! > 1) twice++;
    if (status[id] !== 1 || h[id]! > 0) continue;
    missed++;
    const t = sentAt[id]!;
    if (inWindow(t, w.restart)) restarting++;
    else if (inWindow(t, w.redis)) {
      redis++;
      const k = w.redis.findIndex(([f, to]) => t >= f && t <= to);
      const ri = w.redisIndex[k];
      if (ri !== undefined) missedPerRestart[ri]![ai]!++;
    } else if (inWindow(t, burstWindows)) burstW++;
    else other++;
  }
  const dropped: Record<string, number> = {};
  const handlerCalls: Record<string, number> = {};
  let received = 0;
  let okCalls = 0;
  let queueDropsSoak = 0;
  for (const inc of a.incs) {
    const s = inc.last;
    received += metric(s, 'agentd_events_received_total', { event: 'other' });
    okCalls += metric(s, 'agentd_handler_calls_total', { event: 'other', outcome: 'ok' });
    for (const reason of [...QUEUE_REASONS, ...BAD_REASONS]) dropped[reason] = (dropped[reason] ?? 0) + metric(s, 'agentd_events_dropped_total', { reason });
    for (const reason of QUEUE_REASONS) queueDropsSoak += metric(s, 'agentd_events_dropped_total', { reason, event: 'other' });
    for (const outcome of ['ok', 'error', 'timeout', 'aborted']) handlerCalls[outcome] = (handlerCalls[outcome] ?? 0) + metric(s, 'agentd_handler_calls_total', { outcome });
  }
  void okCalls;
  const lat = summarize(latency[ai]!);
  return {
    agent: a.id,
    incarnations: a.incs.filter((i) => i.readyAt > 0).length,
    handled: a.incs.reduce((s, i) => s + i.handled, 0),
    duplicatesInIncarnation: a.incs.reduce((s, i) => s + i.dups, 0),
    handledTwiceAcrossIncarnations: twice,
    missed,
    missedWhileRestarting: restarting,
    missedInRedisRestart: redis,
    missedInBurstWindow: burstW,
    missedOther: other,
    received,
    dropped,
    handlerCalls,
    receivedNotHandledNorDropped: received - a.incs.reduce((s, i) => s + i.handled, 0) - queueDropsSoak,
    latencyMs: { p50: Math.round(lat.p50), p99: Math.round(lat.p99), max: Math.round(lat.max) },
    unresubscribedAfterRestart: w.unresubscribed,
  };
});

// RSS
const incLife = (inc: Incarnation): number => ((inc.stop?.at ?? inc.exit?.at ?? Date.now()) - inc.readyAt) / 1000;
const rssRows = agents.flatMap((a) =>
  a.incs
    .filter((inc) => inc.rss.length > 0)
    .map((inc) => {
      const s = summarize(inc.rss);
      const med = median(inc.rss);
      return {
        agent: a.id,
        incarnation: inc.n,
        'lived s': Math.round(incLife(inc)),
        samples: inc.rss.length,
        'min MiB': Number(s.min.toFixed(1)),
        'median MiB': Number(med.toFixed(1)),
        'max MiB': Number(s.max.toFixed(1)),
        'max-median MiB': Number((s.max - med).toFixed(1)),
        'heap used median MiB': Number(median(inc.heap).toFixed(1)),
        'heap used max MiB': Number(summarize(inc.heap).max.toFixed(1)),
        'long-lived': incLife(inc) >= LONG_LIVED_S ? 'yes' : 'no',
      };
    }),
);
const rssSeries = agents.map((a) => {
  const all = a.samples.filter((v): v is number => v !== null);
  const s = summarize(all);
  return {
    agent: a.id,
    min: Number(s.min.toFixed(1)),
    median: Number(median(all).toFixed(1)),
    max: Number(s.max.toFixed(1)),
    every30s: a.samples.filter((_, i) => i % SERIES_EVERY === 0).map((v) => (v === null ? null : Number(v.toFixed(1)))),
    heapUsedEvery30s: a.heapSamples.filter((_, i) => i % SERIES_EVERY === 0).map((v) => (v === null ? null : Number(v.toFixed(1)))),
  };
});

// agent_down attribution
const downs = membership.filter((m) => m.event === 'agent_down');
const killReports = kills.map((k) => ({ ...k, downs: [] as MembershipEvent[] }));
const termDowns: string[] = [];
const strayDowns: string[] = [];
for (const d of downs) {
  const k = killReports.filter((r) => r.agent === d.agent && d.at >= r.at && (r.restartedAt === 0 || d.at <= r.restartedAt)).at(-1);
  if (k) {
    k.downs.push(d);
    continue;
  }
  const t = terms.find((r) => r.agent === d.agent && d.at >= r.at && (r.restartedAt === 0 || d.at <= r.restartedAt + 5_000));
  if (t) termDowns.push(`${d.agent} at ${fmtT(d.at)} after its SIGTERM at ${fmtT(t.at)} (via ${d.via})`);
  else strayDowns.push(`${d.agent} at ${fmtT(d.at)} (by ${d.detectedBy}, via ${d.via}) while it was alive`);
}

// invariants
interface Invariant {
  id: number;
  name: string;
  ok: boolean;
  details: string[];
}
const inv: Invariant[] = [];
const check = (id: number, name: string, details: string[]): void => void inv.push({ id, name, ok: details.length === 0, details });
check(
  1,
  'no event handled twice by the same agent incarnation',
  agents.flatMap((a) => a.incs.filter((i) => i.dups > 0).map((i) => `${a.id}#${i.n}: ${i.dups} ids recorded twice`)),
);
check(2, 'each SIGKILL produced exactly one agent_down (and no live agent got one)', [
  ...killReports.filter((k) => k.downs.length !== 1).map((k) => `SIGKILL of ${k.agent} at ${fmtT(k.at)}: ${k.downs.length} agent_down`),
  ...strayDowns,
]);
check(3, 'no SIGTERM produced an agent_down', termDowns);
const fatals = agents.flatMap((a) => a.incs.flatMap((i) => i.proc.logs.filter((l) => l['level'] === 'fatal').map((l) => `${a.id}#${i.n}: fatal "${String(l['msg'])}" ${JSON.stringify(l['err'] ?? '')}`)));
check(4, "no agent process died except the ones the soak killed; no 'fatal' log line", [...unexpectedExits, ...fatals]);
check(
  5,
  `RSS of each long-lived agent (ran >= ${Math.round(LONG_LIVED_S)} s) stays within max - median < ${RSS_BOUND_MIB} MiB`,
  rssRows.filter((r) => r['long-lived'] === 'yes' && r['max-median MiB'] >= RSS_BOUND_MIB).map((r) => `${r.agent}#${r.incarnation}: max ${r['max MiB']} MiB, median ${r['median MiB']} MiB`),
);
const denDetails = restarts.filter((r) => r.denBackMs === undefined).map((r) => `after Redis restart ${r.index + 1}: not back in the den within 30 s: ${(r.missingFromDen ?? []).join(', ')}`);
if (finalDen) {
  const missing = finalDen.live.filter((id) => !finalDen!.members.includes(id));
  const extra = finalDen.members.filter((id) => !finalDen!.live.includes(id));
  if (missing.length) denDetails.push(`at the end, live but not in the den: ${missing.join(', ')}`);
  if (extra.length) denDetails.push(`at the end, in the den but not running: ${extra.join(', ')}`);
} else denDetails.push('the final den check did not run');
for (const r of agentReports) for (const i of r.unresubscribedAfterRestart) denDetails.push(`${r.agent} never logged its resubscription after Redis restart ${i + 1}`);
check(6, 'after each Redis restart (and at the end) every live agent is back in the den set', denDetails);
check(
  7,
  'every event an agent missed outside its restart windows is covered by a counted queue drop (no silent loss)',
  agentReports
    .filter((r) => r.missedInBurstWindow + r.missedOther > (r.dropped['queue_full'] ?? 0) + (r.dropped['evicted'] ?? 0) + (r.dropped['shutdown'] ?? 0))
    .map((r) => `${r.agent}: missed ${r.missedInBurstWindow} in burst windows + ${r.missedOther} elsewhere, but only ${(r.dropped['queue_full'] ?? 0) + (r.dropped['evicted'] ?? 0) + (r.dropped['shutdown'] ?? 0)} queue drops counted`),
);
check(
  8,
  'every SIGTERM (scheduled and final) ended in exit code 0',
  agents.flatMap((a) =>
    a.incs
      .filter((i) => (i.stop?.kind === 'sigterm' || i.stop?.kind === 'final') && (i.exit?.code !== 0 || i.exit.signal !== null))
      .map((i) => `${a.id}#${i.n} (${i.stop?.kind}): exit code ${i.exit?.code ?? 'none'}, signal ${i.exit?.signal ?? 'none'}; ${i.proc.logs.filter((l) => l['level'] === 'error').map((l) => String(l['msg'])).join('; ')}`),
  ),
);
if (exitCode !== 0) check(0, 'the soak ran to the end', ['aborted: see the run log']);
const broken = inv.filter((i) => !i.ok);
if (broken.length > 0) exitCode = 1;

// log lines worth a look
const logSummary = agents.map((a) => {
  const counts: Record<string, number> = {};
  for (const i of a.incs) for (const l of i.proc.logs) {
    const level = String(l['level'] ?? 'raw');
    if (level === 'warn' || level === 'error' || level === 'fatal') {
      const key = `${level}: ${String(l['msg'])}`;
      counts[key] = (counts[key] ?? 0) + 1;
    }
  }
  return { agent: a.id, counts, stderr: a.incs.flatMap((i) => i.proc.stderr.filter((s) => s.trim() !== '')).slice(0, 20) };
});

// --- report -----------------------------------------------------------------------------

const invalidReport = INVALID.map((b, k) => ({ kind: b.kind, reason: b.reason, ...invalidStats[k]! }));
const invalidByReason: Record<string, { delivered: number; countedByAgents: number }> = {};
for (const r of invalidReport) {
  const e = (invalidByReason[r.reason] ??= { delivered: 0, countedByAgents: 0 });
  e.delivered += r.delivered;
}
for (const reason of Object.keys(invalidByReason)) invalidByReason[reason]!.countedByAgents = agentReports.reduce((s, r) => s + (r.dropped[reason] ?? 0), 0);

const doc = {
  benchmark: 'soak',
  started: new Date(runStart.wall).toISOString(),
  machine: machine(),
  settings: {
    minutes: MINUTES,
    agents: AGENTS,
    den: DEN,
    ttl: TTL,
    interval: INTERVAL,
    sweepInterval: SWEEP,
    queueMax: QUEUE_MAX,
    handlerDelayMs: HANDLER_DELAY_MS,
    ratePerSecond: RATE,
    invalidFraction: 1 / INVALID_EVERY,
    burst: BURST,
    redisDownMs: REDIS_DOWN_MS,
    restartAfterKillMs: RESTART_AFTER_KILL_MS,
    sampleMs: SAMPLE_MS,
    redis: server.kind,
  },
  plan,
  traffic: {
    valid: { published: nextId, acked: validAcked, failedRedisDown: validFailed, fromBursts: burstAcked, deliveredToAgents: deliveredValid, overCap },
    invalid: {
      published: invalidReport.reduce((s, r) => s + r.attempted, 0),
      acked: invalidReport.reduce((s, r) => s + r.acked, 0),
      failedRedisDown: invalidReport.reduce((s, r) => s + r.failed, 0),
      byKind: invalidReport,
      byReason: invalidByReason,
    },
    handledAfterFailedPublish,
    publishFailuresOutsideRedisRestarts: failedOutsideRestarts,
  },
  agents: agentReports,
  redisRestarts: restarts.map((r, i) => ({
    index: r.index + 1,
    at: rel(r.killAt),
    publishesFailedWhileDown: failedPerRestart[i],
    missedWhileResubscribing: Object.fromEntries(agents.map((a, ai) => [a.id, missedPerRestart[i]![ai]])),
    resubscribeGapMs: Object.fromEntries(
      agents.map((a) => {
        const inc = a.incs.find((x) => x.readyAt > 0 && x.readyAt <= r.killAt && (x.stop?.at ?? x.exit?.at ?? Number.POSITIVE_INFINITY) > r.killAt);
        const l = inc?.proc.logs.find((x) => String(x['msg']).startsWith('event subscription confirmed again') && logTime(x) > r.killAt);
        return [a.id, l ? Number(l['gapMs']) : null];
      }),
    ),
    denBackMs: r.denBackMs ?? null,
    observerBackMs: r.observerBackMs ?? null,
  })),
  kills: killReports.map((k) => ({
    agent: k.agent,
    at: rel(k.at),
    agentDown: k.downs.length,
    detectionMs: k.downs[0] ? k.downs[0].at - k.at : null,
    via: k.downs.map((d) => d.via).join(','),
    detectedBy: k.downs.map((d) => d.detectedBy).join(','),
  })),
  sigterms: terms.map((t) => ({
    agent: t.agent,
    at: rel(t.at),
    exitCode: t.exit?.code ?? null,
    exitMs: t.exitMs ?? null,
    agentOffline: membership.filter((m) => m.event === 'agent_offline' && m.agent === t.agent && m.at >= t.at && m.at <= t.at + 30_000).length,
    agentDown: membership.filter((m) => m.event === 'agent_down' && m.agent === t.agent && m.at >= t.at && m.at <= t.at + 30_000).length,
  })),
  bursts: bursts.map((b) => ({ index: b.index + 1, at: rel(b.startAt), acked: b.acked, failed: b.failed, pipelineMs: b.endAt - b.startAt })),
  membershipEvents: {
    agent_online: membership.filter((m) => m.event === 'agent_online' && !m.rejoined).length,
    agent_online_rejoined: membership.filter((m) => m.event === 'agent_online' && m.rejoined).length,
    agent_offline: membership.filter((m) => m.event === 'agent_offline').length,
    agent_down: downs.length,
  },
  rss: { incarnations: rssRows, perAgent: rssSeries },
  startFailures,
  logs: logSummary,
  timeline,
  invariants: inv,
  ok: exitCode === 0,
};

function renderTable(rows: Array<Record<string, string | number | null>>): string {
  if (rows.length === 0) return '  (none)\n';
  const cols = Object.keys(rows[0]!);
  const cell = (v: string | number | null | undefined): string => (v === null || v === undefined ? '-' : typeof v === 'number' ? (Number.isInteger(v) ? String(v) : v.toFixed(1)) : v);
  const widths = cols.map((c) => Math.max(c.length, ...rows.map((r) => cell(r[c]).length)));
  const line = (vals: string[]): string => `  ${vals.map((v, i) => v.padStart(widths[i]!)).join('  ')}`;
  return `${[line(cols), ...rows.map((r) => line(cols.map((c) => cell(r[c]))))].join('\n')}\n`;
}

const T = doc.traffic;
let text = '';
const p = (s = ''): void => void (text += `${s}\n`);
p();
p(`== agentd soak: ${MINUTES} min, ${AGENTS} agents in den "${DEN}" (TTL ${TTL} s, interval ${INTERVAL} s, sweep ${SWEEP} s, queue.max ${QUEUE_MAX}, handler ${HANDLER_DELAY_MS} ms), redis ${server.kind} ==`);
p(`traffic ${RATE}/s (1 in ${INVALID_EVERY} invalid) + ${BURST}-event bursts; ${restarts.length} Redis restarts, ${kills.length} SIGKILLs, ${terms.length} SIGTERMs, ${bursts.length} bursts`);
p();
p('Events published');
p(renderTable([
  { kind: 'valid', published: T.valid.published, acked: T.valid.acked, 'failed (Redis down)': T.valid.failedRedisDown, 'of which bursts (acked)': T.valid.fromBursts, 'deliveries (sum of PUBLISH receivers)': T.valid.deliveredToAgents },
  { kind: 'invalid', published: T.invalid.published, acked: T.invalid.acked, 'failed (Redis down)': T.invalid.failedRedisDown, 'of which bursts (acked)': 0, 'deliveries (sum of PUBLISH receivers)': invalidReport.reduce((s, r) => s + r.delivered, 0) },
]));
p('Invalid messages: delivered to agents (PUBLISH receivers) vs counted by their metrics (last scrape of each incarnation;');
p('a few reach an incarnation after its last scrape, just before its SIGKILL/SIGTERM)');
p(renderTable(Object.entries(invalidByReason).map(([reason, v]) => ({ reason, delivered: v.delivered, 'counted by agents': v.countedByAgents }))));
p('Per agent (handled from recorder files; received/dropped/calls summed over the last scrape of each incarnation)');
p(renderTable(agentReports.map((r) => ({
  agent: r.agent,
  incs: r.incarnations,
  handled: r.handled,
  dup: r.duplicatesInIncarnation,
  missed: r.missed,
  'm:restart': r.missedWhileRestarting,
  'm:redis': r.missedInRedisRestart,
  'm:burst': r.missedInBurstWindow,
  'm:other': r.missedOther,
  queue_full: r.dropped['queue_full'] ?? 0,
  evicted: r.dropped['evicted'] ?? 0,
  shutdown: r.dropped['shutdown'] ?? 0,
  'calls ok': r.handlerCalls['ok'] ?? 0,
  'calls err/timeout': (r.handlerCalls['error'] ?? 0) + (r.handlerCalls['timeout'] ?? 0) + (r.handlerCalls['aborted'] ?? 0),
  received: r.received,
  'recv-handled-dropped': r.receivedNotHandledNorDropped,
  'lat p50/p99 ms': `${r.latencyMs.p50}/${r.latencyMs.p99}`,
}))));
p('  m:restart = published while that agent was being restarted (signal -> new process subscribed); m:redis = while Redis was down or');
p('  the agent resubscribing; m:burst / m:other = everything else, which counted queue drops must cover (invariant 7).');
p('  recv-handled-dropped: a few events either way come from the gap between an incarnation\'s last scrape and its SIGKILL/SIGTERM.');
p();
p('Redis restarts (kill -9, 3 s down, restart): at-most-once loss');
p(renderTable(doc.redisRestarts.map((r) => ({
  '#': r.index,
  at: `${r.at} s`,
  'publishes failed (down)': r.publishesFailedWhileDown ?? 0,
  ...Object.fromEntries(agents.map((a) => [`missed ${a.id.slice(-2)}`, r.missedWhileResubscribing[a.id] ?? 0])),
  ...Object.fromEntries(agents.map((a) => [`gap ms ${a.id.slice(-2)}`, r.resubscribeGapMs[a.id] ?? null])),
  'den back ms': r.denBackMs,
  'observer back ms': r.observerBackMs,
}))));
p('SIGKILLs');
p(renderTable(doc.kills.map((k) => ({ agent: k.agent, at: `${k.at} s`, agent_down: k.agentDown, 'detection ms': k.detectionMs, via: k.via, 'detected by': k.detectedBy }))));
p('SIGTERMs');
p(renderTable(doc.sigterms.map((t) => ({ agent: t.agent, at: `${t.at} s`, 'exit code': t.exitCode, 'exit ms': t.exitMs, agent_offline: t.agentOffline, agent_down: t.agentDown }))));
p('Bursts');
p(renderTable(doc.bursts.map((b) => ({ '#': b.index, at: `${b.at} s`, acked: b.acked, failed: b.failed, 'pipeline ms': b.pipelineMs }))));
p('RSS per incarnation (sampled every 5 s)');
p(renderTable(rssRows));
p('RSS and V8 heap used per agent over time (MiB, every 30 s from the start; - = not running)');
const series = (vs: Array<number | null>): string => vs.map((v) => (v === null ? '-' : v.toFixed(0)).padStart(3)).join(' ');
for (const s of rssSeries) {
  p(`  ${s.agent}: RSS min ${s.min}, median ${s.median}, max ${s.max}`);
  p(`    RSS       ${series(s.every30s)}`);
  p(`    heap used ${series(s.heapUsedEvery30s)}`);
}
p();
p('Warnings and errors logged (all incarnations)');
for (const l of logSummary) {
  p(`  ${l.agent}: ${Object.entries(l.counts).map(([k, v]) => `${v}× ${k}`).join('; ') || 'none'}`);
  if (l.stderr.length) p(`    stderr: ${l.stderr.join(' | ')}`);
}
if (startFailures.length) p(`  start retries: ${startFailures.join('; ')}`);
if (T.publishFailuresOutsideRedisRestarts) p(`  publishes that failed outside Redis restarts: ${T.publishFailuresOutsideRedisRestarts}`);
p();
p('Invariants');
for (const i of inv) {
  p(`  ${i.ok ? 'ok    ' : 'BROKEN'} ${i.id}. ${i.name}`);
  for (const d of i.details.slice(0, 20)) p(`           - ${d}`);
  if (i.details.length > 20) p(`           … ${i.details.length - 20} more`);
}
p();
p(exitCode === 0 ? 'soak passed' : `soak FAILED (${broken.length} invariant(s) broken)`);

if (JSON_OUT) {
  process.stderr.write(text);
  process.stdout.write(`${JSON.stringify(doc, null, 2)}\n`);
} else process.stdout.write(text);

// Daemon logs next to the recorder files, for a post-mortem.
for (const a of agents) for (const i of a.incs) writeFileSync(join(dir, `${a.id}.${i.n}.log`), `${i.proc.logs.map((l) => JSON.stringify(l)).join('\n')}\n${i.proc.stderr.join('\n')}`);
if (KEEP || exitCode !== 0) process.stderr.write(`kept ${dir} (recorder files and daemon logs)\n`);
else await rm(dir, { recursive: true, force: true });
process.exit(exitCode);
