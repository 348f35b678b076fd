/**
 * The soak's output: progress lines on stderr (the ones kept make the
 * timeline), the JSON document, and the text summary.
 */
import { machine } from '../lib.ts';
import type { Accounts, SoakRun } from './accounting.ts';
import { runningAt, resubscription } from './accounting.ts';
import * as S from './schedule.ts';
import { clock, fmtT, rel, type PlannedAction } from './schedule.ts';

export const timeline: Array<{ t: number; what: string }> = [];

/** A progress line on stderr; kept in the timeline unless `keep` is false. */
export function note(what: string, keep = true): void {
  const now = Date.now();
  process.stderr.write(`[${clock.start ? fmtT(now) : 'setup'}] ${what}\n`);
  if (keep) timeline.push({ t: clock.start ? rel(now) : 0, what });
}

/** The JSON document (`--json`). */
export function soakDocument(run: SoakRun, acc: Accounts, minutes: number, plan: PlannedAction[], redisKind: string) {
  const { agents, restarts, membership } = run;
  return {
    benchmark: 'soak',
    started: new Date(clock.start).toISOString(),
    machine: machine(),
    settings: {
      minutes,
      agents: S.AGENTS,
      den: S.DEN,
      ttl: S.TTL,
      interval: S.INTERVAL,
      sweepInterval: S.SWEEP,
      queueMax: S.QUEUE_MAX,
      handlerDelayMs: S.HANDLER_DELAY_MS,
      ratePerSecond: S.RATE,
      invalidFraction: 1 / S.INVALID_EVERY,
      burst: S.BURST,
      redisDownMs: S.REDIS_DOWN_MS,
      restartAfterKillMs: S.RESTART_AFTER_KILL_MS,
      sampleMs: S.SAMPLE_MS,
      redis: redisKind,
    },
    plan,
    traffic: acc.traffic,
    agents: acc.agentReports,
    redisRestarts: restarts.map((r, i) => ({
      index: r.index + 1,
      at: rel(r.killAt),
      publishesFailedWhileDown: acc.failedPerRestart[i],
      missedWhileResubscribing: Object.fromEntries(agents.map((a, ai) => [a.id, acc.missedPerRestart[i]![ai]])),
      resubscribeGapMs: Object.fromEntries(
        agents.map((a) => {
          const l = resubscription(runningAt(a, r.killAt), r.killAt);
          return [a.id, l ? Number(l['gapMs']) : null];
        }),
      ),
      denBackMs: r.denBackMs ?? null,
      observerBackMs: r.observerBackMs ?? null,
    })),
    kills: acc.killReports.map((k) => ({
      agent: k.agent,
      at: rel(k.at),
      agentDown: k.downs.length,
      detectionMs: k.downs[0] ? k.downs[0].at - k.at : null,
      via: k.downs.map((d) => d.via).join(','),
      detectedBy: k.downs.map((d) => d.detectedBy).join(','),
    })),
    sigterms: run.terms.map((t) => ({
      agent: t.agent,
      at: rel(t.at),
      exitCode: t.exit?.code ?? null,
      exitMs: t.exitMs ?? null,
      agentOffline: membership.filter((m) => m.event === 'agent_offline' && m.agent === t.agent && m.at >= t.at && m.at <= t.at + 30_000).length,
      agentDown: membership.filter((m) => m.event === 'agent_down' && m.agent === t.agent && m.at >= t.at && m.at <= t.at + 30_000).length,
    })),
    bursts: run.bursts.map((b) => ({ index: b.index + 1, at: rel(b.startAt), acked: b.acked, failed: b.failed, pipelineMs: b.endAt - b.startAt })),
    membershipEvents: {
      agent_online: membership.filter((m) => m.event === 'agent_online' && !m.rejoined).length,
      agent_online_rejoined: membership.filter((m) => m.event === 'agent_online' && m.rejoined).length,
      agent_offline: membership.filter((m) => m.event === 'agent_offline').length,
      agent_down: acc.downs.length,
    },
    rss: { incarnations: acc.rssRows, perAgent: acc.rssSeries },
    startFailures: run.startFailures,
    logs: acc.logSummary,
    timeline,
    invariants: acc.invariants,
    ok: acc.ok,
  };
}
export type SoakDocument = ReturnType<typeof soakDocument>;

function renderTable(rows: Array<Record<string, string | number | null>>): string {
  if (rows.length === 0) return '  (none)\n';
  const cols = Object.keys(rows[0]!);
  const cell = (v: string | number | null | undefined): string => (v === null || v === undefined ? '-' : typeof v === 'number' ? (Number.isInteger(v) ? String(v) : v.toFixed(1)) : v);
  const widths = cols.map((c) => Math.max(c.length, ...rows.map((r) => cell(r[c]).length)));
  const line = (vals: string[]): string => `  ${vals.map((v, i) => v.padStart(widths[i]!)).join('  ')}`;
  return `${[line(cols), ...rows.map((r) => line(cols.map((c) => cell(r[c]))))].join('\n')}\n`;
}

/** The text summary. */
export function soakText(doc: SoakDocument, run: SoakRun): string {
  const { agents } = run;
  const T = doc.traffic;
  const agentReports = doc.agents;
  const broken = doc.invariants.filter((i) => !i.ok);
  let text = '';
  const p = (s = ''): void => void (text += `${s}\n`);
  p();
  p(`== agentd soak: ${doc.settings.minutes} min, ${S.AGENTS} agents in den "${S.DEN}" (TTL ${S.TTL} s, interval ${S.INTERVAL} s, sweep ${S.SWEEP} s, queue.max ${S.QUEUE_MAX}, handler ${S.HANDLER_DELAY_MS} ms), redis ${doc.settings.redis} ==`);
  p(`traffic ${S.RATE}/s (1 in ${S.INVALID_EVERY} invalid) + ${S.BURST}-event bursts; ${run.restarts.length} Redis restarts, ${run.kills.length} SIGKILLs, ${run.terms.length} SIGTERMs, ${run.bursts.length} bursts`);
  p();
  p('Events published');
  p(renderTable([
    { kind: 'valid', published: T.valid.published, acked: T.valid.acked, 'failed (Redis down)': T.valid.failedRedisDown, 'of which bursts (acked)': T.valid.fromBursts, 'deliveries (sum of PUBLISH receivers)': T.valid.deliveredToAgents },
    { kind: 'invalid', published: T.invalid.published, acked: T.invalid.acked, 'failed (Redis down)': T.invalid.failedRedisDown, 'of which bursts (acked)': 0, 'deliveries (sum of PUBLISH receivers)': T.invalid.byKind.reduce((s, r) => s + r.delivered, 0) },
  ]));
  p('Invalid messages: delivered to agents (PUBLISH receivers) vs counted by their metrics (last scrape of each incarnation;');
  p('a few reach an incarnation after its last scrape, just before its SIGKILL/SIGTERM)');
  p(renderTable(Object.entries(T.invalid.byReason).map(([reason, v]) => ({ reason, delivered: v.delivered, 'counted by agents': v.countedByAgents }))));
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
  p(renderTable(doc.rss.incarnations));
  p('RSS and V8 heap used per agent over time (MiB, every 30 s from the start; - = not running)');
  const series = (vs: Array<number | null>): string => vs.map((v) => (v === null ? '-' : v.toFixed(0)).padStart(3)).join(' ');
  for (const s of doc.rss.perAgent) {
    p(`  ${s.agent}: RSS min ${s.min}, median ${s.median}, max ${s.max}`);
    p(`    RSS       ${series(s.every30s)}`);
    p(`    heap used ${series(s.heapUsedEvery30s)}`);
  }
  p();
  p('Warnings and errors logged (all incarnations)');
  for (const l of doc.logs) {
    p(`  ${l.agent}: ${Object.entries(l.counts).map(([k, v]) => `${v}× ${k}`).join('; ') || 'none'}`);
    if (l.stderr.length) p(`    stderr: ${l.stderr.join(' | ')}`);
  }
  if (doc.startFailures.length) p(`  start retries: ${doc.startFailures.join('; ')}`);
  if (T.publishFailuresOutsideRedisRestarts) p(`  publishes that failed outside Redis restarts: ${T.publishFailuresOutsideRedisRestarts}`);
  p();
  p('Invariants');
  for (const i of doc.invariants) {
    p(`  ${i.ok ? 'ok    ' : 'BROKEN'} ${i.id}. ${i.name}`);
    for (const d of i.details.slice(0, 20)) p(`           - ${d}`);
    if (i.details.length > 20) p(`           … ${i.details.length - 20} more`);
  }
  p();
  p(doc.ok ? 'soak passed' : `soak FAILED (${broken.length} invariant(s) broken)`);
  return text;
}
