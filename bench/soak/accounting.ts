/**
 * The soak's accounting: what was sent (a ledger per valid event id, counts
 * per kind of invalid message), what each agent incarnation received and
 * handled (its recorder file and its last /metrics scrape), what was lost and
 * in which window (its own restart, a Redis restart, a burst, elsewhere), and
 * the invariants the soak checks.
 */
import { createReadStream } from 'node:fs';
import { createInterface } from 'node:readline';
import type { DaemonExit, DaemonProcess } from '../../test/helpers/daemon.ts';
import { logTime, metric } from '../../test/helpers/util.ts';
import { median, summarize } from '../stats.ts';
import { BURST, BURST_TAIL_MS, RATE, RSS_BOUND_MIB, WINDOW_LEAD_MS, fmtT, longLivedS } from './schedule.ts';

/** The invalid messages mixed into the steady traffic (one in INVALID_EVERY), and the drop reason each must be counted under. */
export const INVALID = [
  { kind: 'bad JSON', reason: 'not_json', text: '{"event":"task","data":{"id":' },
  { kind: '__proto__ key', reason: 'forbidden_key', text: '{"event":"task","data":{"__proto__":{"polluted":true}}}' },
  { kind: 'constructor.prototype', reason: 'forbidden_key', text: '{"event":"note","data":{"constructor":{"prototype":{"polluted":true}}}}' },
  { kind: 'no event field', reason: 'no_event', text: '{"data":{"x":1}}' },
  { kind: 'not an object', reason: 'not_object', text: '[1,2,3]' },
] as const;
const BAD_REASONS = ['too_large', 'not_json', 'not_object', 'no_event', 'forbidden_key'];
const QUEUE_REASONS = ['queue_full', 'evicted', 'shutdown'];

/** Every valid event the harness published, by id: when it was sent, whether Redis acknowledged it and to how many receivers. */
export class Ledger {
  readonly cap: number;
  /** Per valid event id: when it was sent (wall ms), 0 pending / 1 acked / 2 failed, PUBLISH's receiver count, burst number. */
  readonly sentAt: Float64Array;
  readonly status: Uint8Array;
  readonly receivers: Uint8Array;
  readonly burstOf: Uint8Array;
  nextId = 0;
  inFlight = 0;
  overCap = 0;
  readonly invalid = INVALID.map(() => ({ attempted: 0, acked: 0, failed: 0, delivered: 0 }));
  /** When each failed publish (valid or not) failed. */
  readonly failedAt: number[] = [];

  constructor(seconds: number, bursts: number) {
    this.cap = Math.ceil(seconds * RATE * 1.05) + bursts * BURST + 10_000;
    this.sentAt = new Float64Array(this.cap);
    this.status = new Uint8Array(this.cap);
    this.receivers = new Uint8Array(this.cap);
    this.burstOf = new Uint8Array(this.cap);
  }

  newId(burst: number): number {
    const id = this.nextId++;
    this.sentAt[id] = Date.now();
    this.burstOf[id] = Math.min(255, burst);
    return id;
  }

  acked(id: number, receivers: number): void {
    this.status[id] = 1;
    this.receivers[id] = Math.min(255, receivers);
  }

  failed(id: number): void {
    this.status[id] = 2;
  }
}

/** The last /metrics text an incarnation served, and when it was read. */
export interface Scrape {
  at: number;
  text: string;
}
/** Sum of the samples of `name` with those labels in a scrape (0 without one). */
export const metricOf = (s: Scrape | undefined, name: string, labels: Record<string, string> = {}): number => (s ? metric(s.text, name, labels) : 0);

type StopKind = 'sigkill' | 'sigterm' | 'final';
export interface Incarnation {
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
export interface Agent {
  readonly id: string;
  readonly incs: Incarnation[];
  current: Incarnation | undefined;
  busy: boolean;
  /** RSS per sample tick (null while down). */
  readonly samples: Array<number | null>;
  readonly heapSamples: Array<number | null>;
}
export interface Kill {
  agent: string;
  at: number;
  restartedAt: number;
}
export interface Term {
  agent: string;
  at: number;
  exit?: DaemonExit;
  exitMs?: number;
  restartedAt: number;
}
export interface RedisRestart {
  index: number;
  killAt: number;
  upAt: number;
  denBackMs?: number;
  observerBackMs?: number;
  missingFromDen?: string[];
}
export interface Burst {
  index: number;
  startAt: number;
  endAt: number;
  acked: number;
  failed: number;
}
export interface MembershipEvent {
  event: string;
  agent: string;
  at: number;
  via?: string;
  detectedBy?: string;
  rejoined?: boolean;
}

/** What happened in one soak run, as the harness recorded it. */
export interface SoakRun {
  readonly seconds: number;
  readonly ledger: Ledger;
  readonly agents: Agent[];
  readonly kills: Kill[];
  readonly terms: Term[];
  readonly restarts: RedisRestart[];
  readonly bursts: Burst[];
  /** agent_* events seen by the observer. */
  readonly membership: MembershipEvent[];
  readonly unexpectedExits: string[];
  readonly startFailures: string[];
  /** The den set and the live agents after traffic stopped (undefined if the run aborted before). */
  finalDen: { members: string[]; live: string[] } | undefined;
  aborted: boolean;
}

export const alive = (inc: Incarnation | undefined): inc is Incarnation => inc !== undefined && inc.readyAt > 0 && !inc.stop && !inc.exit;

export interface AgentReport {
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
export interface Invariant {
  id: number;
  name: string;
  ok: boolean;
  details: string[];
}
export type RssRow = ReturnType<typeof rssRowsOf>[number];

type Window = [from: number, to: number];
const inWindow = (t: number, ws: readonly Window[]): boolean => ws.some(([f, to]) => t >= f && t <= to);
const resubscribed = (l: Record<string, unknown>): boolean => String(l['msg']).startsWith('event subscription confirmed again');

/** The incarnation of `a` that was running when Redis was killed at `killAt`. */
export function runningAt(a: Agent, killAt: number): Incarnation | undefined {
  return a.incs.find((i) => i.readyAt > 0 && i.readyAt <= killAt && (i.stop?.at ?? i.exit?.at ?? Number.POSITIVE_INFINITY) > killAt);
}

/** The log line in which `inc` confirmed its subscription again after a Redis kill at `killAt`. */
export function resubscription(inc: Incarnation | undefined, killAt: number): Record<string, unknown> | undefined {
  return inc?.proc.logs.find((l) => resubscribed(l) && logTime(l) > killAt);
}

/** Per agent: when its own restarts (signal → next incarnation subscribed) and each Redis restart (kill → its resubscription) left it deaf. */
function windowsOf(a: Agent, restarts: readonly RedisRestart[]): { restart: Window[]; redis: Window[]; redisIndex: number[]; unresubscribed: number[] } {
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
    const inc = runningAt(a, r.killAt);
    if (!inc) continue;
    redisIndex.push(r.index);
    const back = resubscription(inc, r.killAt);
    if (back) redis.push([r.killAt - WINDOW_LEAD_MS, logTime(back)]);
    else {
      unresubscribed.push(r.index);
      redis.push([r.killAt - WINDOW_LEAD_MS, inc.stop?.at ?? inc.exit?.at ?? Number.POSITIVE_INFINITY]);
    }
  }
  return { restart, redis, redisIndex, unresubscribed };
}

const ID_RE = /"data":\{"id":(\d+)/;
const AT_RE = /"at":(\d+)\}$/;

/** Reads every incarnation's recorder file: handled and duplicate counts per incarnation, what each agent handled, latency samples. */
async function readRecorders(run: SoakRun): Promise<{ handledBy: Uint8Array[]; latency: number[][]; handledAfterFailedPublish: number }> {
  const { ledger } = run;
  const handledBy = run.agents.map(() => new Uint8Array(ledger.cap));
  const latency = run.agents.map(() => [] as number[]);
  const seen = new Uint8Array(ledger.cap);
  let handledAfterFailedPublish = 0;
  for (const [ai, a] of run.agents.entries()) {
    for (const inc of a.incs) {
      seen.fill(0);
      try {
        const lines = createInterface({ input: createReadStream(inc.file), crlfDelay: Infinity });
        for await (const line of lines) {
          const m = ID_RE.exec(line);
          if (!m) continue;
          const id = Number(m[1]);
          if (id >= ledger.cap) continue;
          inc.handled++;
          if (seen[id]) inc.dups++;
          seen[id] = 1;
          const h = handledBy[ai]!;
          if (h[id]! < 255) h[id]!++;
          if (ledger.status[id] === 2 && h[id] === 1) handledAfterFailedPublish++;
          if (id % 50 === 0) {
            const t = AT_RE.exec(line);
            if (t) latency[ai]!.push(Number(t[1]) - ledger.sentAt[id]!);
          }
        }
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      }
    }
  }
  return { handledBy, latency, handledAfterFailedPublish };
}

const incLife = (inc: Incarnation): number => ((inc.stop?.at ?? inc.exit?.at ?? Date.now()) - inc.readyAt) / 1000;

function rssRowsOf(agents: readonly Agent[], longLived: number) {
  return agents.flatMap((a) =>
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
          'long-lived': incLife(inc) >= longLived ? 'yes' : 'no',
        };
      }),
  );
}

/** Everything the report shows, worked out from a run. */
export async function account(run: SoakRun, seriesEvery: number) {
  const { ledger, agents, restarts, kills, terms, membership } = run;
  const { handledBy, latency, handledAfterFailedPublish } = await readRecorders(run);
  const burstWindows: Window[] = run.bursts.map((b) => [b.startAt, b.endAt + BURST_TAIL_MS]);

  let validAcked = 0;
  let validFailed = 0;
  let deliveredValid = 0;
  let burstAcked = 0;
  for (let id = 0; id < ledger.nextId; id++) {
    if (ledger.status[id] === 1) {
      validAcked++;
      deliveredValid += ledger.receivers[id]!;
      if (ledger.burstOf[id]) burstAcked++;
    } else validFailed++;
  }

  const missedPerRestart = restarts.map(() => agents.map(() => 0));
  const failedPerRestart = restarts.map(() => 0);
  for (const t of ledger.failedAt) {
    const i = restarts.findIndex((r) => t >= r.killAt - WINDOW_LEAD_MS && t <= r.upAt + 5_000);
    if (i >= 0) failedPerRestart[i]!++;
  }
  const failedOutsideRestarts = ledger.failedAt.length - failedPerRestart.reduce((s, n) => s + n, 0);

  const agentReports: AgentReport[] = agents.map((a, ai) => {
    const w = windowsOf(a, restarts);
    const h = handledBy[ai]!;
    // Per agent: every acknowledged event it did not handle, by the window it was published in.
    const m = { missed: 0, restarting: 0, redis: 0, burst: 0, other: 0, twice: 0 };
    for (let id = 0; id < ledger.nextId; id++) {
      if (h[id]! > 1) m.twice++;
      if (ledger.status[id] !== 1 || h[id]! > 0) continue;
      m.missed++;
      const t = ledger.sentAt[id]!;
      if (inWindow(t, w.restart)) m.restarting++;
      else if (inWindow(t, w.redis)) {
        m.redis++;
        const k = w.redis.findIndex(([f, to]) => t >= f && t <= to);
        const ri = w.redisIndex[k];
        if (ri !== undefined) missedPerRestart[ri]![ai]!++;
      } else if (inWindow(t, burstWindows)) m.burst++;
      else m.other++;
    }
    const dropped: Record<string, number> = {};
    const handlerCalls: Record<string, number> = {};
    let received = 0;
    let queueDropsSoak = 0;
    for (const inc of a.incs) {
      const s = inc.last;
      received += metricOf(s, 'agentd_events_received_total', { event: 'other' });
      for (const reason of [...QUEUE_REASONS, ...BAD_REASONS]) dropped[reason] = (dropped[reason] ?? 0) + metricOf(s, 'agentd_events_dropped_total', { reason });
      for (const reason of QUEUE_REASONS) queueDropsSoak += metricOf(s, 'agentd_events_dropped_total', { reason, event: 'other' });
      for (const outcome of ['ok', 'error', 'timeout', 'aborted']) handlerCalls[outcome] = (handlerCalls[outcome] ?? 0) + metricOf(s, 'agentd_handler_calls_total', { outcome });
    }
    const lat = summarize(latency[ai]!);
    return {
      agent: a.id,
      incarnations: a.incs.filter((i) => i.readyAt > 0).length,
      handled: a.incs.reduce((s, i) => s + i.handled, 0),
      duplicatesInIncarnation: a.incs.reduce((s, i) => s + i.dups, 0),
      handledTwiceAcrossIncarnations: m.twice,
      missed: m.missed,
      missedWhileRestarting: m.restarting,
      missedInRedisRestart: m.redis,
      missedInBurstWindow: m.burst,
      missedOther: m.other,
      received,
      dropped,
      handlerCalls,
      receivedNotHandledNorDropped: received - a.incs.reduce((s, i) => s + i.handled, 0) - queueDropsSoak,
      latencyMs: { p50: Math.round(lat.p50), p99: Math.round(lat.p99), max: Math.round(lat.max) },
      unresubscribedAfterRestart: w.unresubscribed,
    };
  });

  // RSS
  const longLived = longLivedS(run.seconds);
  const rssRows = rssRowsOf(agents, longLived);
  const rssSeries = agents.map((a) => {
    const all = a.samples.filter((v): v is number => v !== null);
    const s = summarize(all);
    return {
      agent: a.id,
      min: Number(s.min.toFixed(1)),
      median: Number(median(all).toFixed(1)),
      max: Number(s.max.toFixed(1)),
      every30s: a.samples.filter((_, i) => i % seriesEvery === 0).map((v) => (v === null ? null : Number(v.toFixed(1)))),
      heapUsedEvery30s: a.heapSamples.filter((_, i) => i % seriesEvery === 0).map((v) => (v === null ? null : Number(v.toFixed(1)))),
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
  check(4, "no agent process died except the ones the soak killed; no 'fatal' log line", [...run.unexpectedExits, ...fatals]);
  check(
    5,
    `RSS of each long-lived agent (ran >= ${Math.round(longLived)} s) stays within max - median < ${RSS_BOUND_MIB} MiB`,
    rssRows.filter((r) => r['long-lived'] === 'yes' && r['max-median MiB'] >= RSS_BOUND_MIB).map((r) => `${r.agent}#${r.incarnation}: max ${r['max MiB']} MiB, median ${r['median MiB']} MiB`),
  );
  const denDetails = restarts.filter((r) => r.denBackMs === undefined).map((r) => `after Redis restart ${r.index + 1}: not back in the den within 30 s: ${(r.missingFromDen ?? []).join(', ')}`);
  const finalDen = run.finalDen;
  if (finalDen) {
    const missing = finalDen.live.filter((id) => !finalDen.members.includes(id));
    const extra = finalDen.members.filter((id) => !finalDen.live.includes(id));
    if (missing.length) denDetails.push(`at the end, live but not in the den: ${missing.join(', ')}`);
    if (extra.length) denDetails.push(`at the end, in the den but not running: ${extra.join(', ')}`);
  } else denDetails.push('the final den check did not run');
  for (const r of agentReports) for (const i of r.unresubscribedAfterRestart) denDetails.push(`${r.agent} never logged its resubscription after Redis restart ${i + 1}`);
  check(6, 'after each Redis restart (and at the end) every live agent is back in the den set', denDetails);
  const queueDrops = (r: AgentReport): number => (r.dropped['queue_full'] ?? 0) + (r.dropped['evicted'] ?? 0) + (r.dropped['shutdown'] ?? 0);
  check(
    7,
    'every event an agent missed outside its restart windows is covered by a counted queue drop (no silent loss)',
    agentReports
      .filter((r) => r.missedInBurstWindow + r.missedOther > queueDrops(r))
      .map((r) => `${r.agent}: missed ${r.missedInBurstWindow} in burst windows + ${r.missedOther} elsewhere, but only ${queueDrops(r)} queue drops counted`),
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
  if (run.aborted) check(0, 'the soak ran to the end', ['aborted: see the run log']);

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

  const invalidReport = INVALID.map((b, k) => ({ kind: b.kind, reason: b.reason, ...ledger.invalid[k]! }));
  const invalidByReason: Record<string, { delivered: number; countedByAgents: number }> = {};
  for (const r of invalidReport) {
    const e = (invalidByReason[r.reason] ??= { delivered: 0, countedByAgents: 0 });
    e.delivered += r.delivered;
  }
  for (const reason of Object.keys(invalidByReason)) invalidByReason[reason]!.countedByAgents = agentReports.reduce((s, r) => s + (r.dropped[reason] ?? 0), 0);

  return {
    traffic: {
      valid: { published: ledger.nextId, acked: validAcked, failedRedisDown: validFailed, fromBursts: burstAcked, deliveredToAgents: deliveredValid, overCap: ledger.overCap },
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
    agentReports,
    missedPerRestart,
    failedPerRestart,
    killReports,
    downs,
    rssRows,
    rssSeries,
    logSummary,
    invariants: inv,
    ok: !run.aborted && inv.every((i) => i.ok),
  };
}
export type Accounts = Awaited<ReturnType<typeof account>>;
