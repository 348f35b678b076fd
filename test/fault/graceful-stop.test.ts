/**
 * Fault 6, graceful stop with 1,000 events queued: 1,000 events are published
 * in one pipeline to a daemon whose handler takes 5 ms (4 at a time), and
 * SIGTERM arrives once all of them are queued. Pass: the queued events finish
 * (each exactly once), or — with a drain timeout shorter than the work — the
 * timeout is hit and logged with what was left and the exit code is 1; in both
 * cases presence is removed and agent_offline published; exit 0 when drained.
 * This is where a stop by SIGTERM is tested with a real process; the drain
 * result and the abort of running handlers through the API are in
 * test/integration/daemon-presence.test.ts.
 */
import { hostname } from 'node:os';
import { beforeAll, describe, expect, it } from 'vitest';
import { expectSound, processSuite, recordedUids, type Agent } from '../helpers/process.ts';
import { collect, hasMsg, keys, metric, waitFor, type Collected } from '../helpers/util.ts';

const EVENTS = 1_000;

const suite = processSuite({ redis: { requireControl: true } });

describe('fault 6: graceful stop with 1,000 events queued', () => {
  let offline: Collected[];

  beforeAll(async () => {
    offline = await collect(suite.redis.client({ connectionName: 'fault6-observer' }), keys.channel('agent_offline'));
  });

  /** Starts a daemon, publishes 1,000 events in one pipeline and resolves once all are queued (per /metrics). */
  async function loaded(env: Record<string, string>): Promise<{ d: Agent; id: string; den: string; file: string; uids: string[] }> {
    const d = await suite.start({
      plugins: ['recorder.js'],
      http: true,
      env: { RECORD_DELAY_MS: '5', AGENTD_QUEUE_CONCURRENCY: '4', AGENTD_QUEUE_MAX: '2000', ...env },
    });
    const { id, den, file } = d;
    const c = suite.cmd;

    const uids = Array.from({ length: EVENTS }, (_, i) => `${id}-job-${i}`);
    const pipe = c.pipeline();
    for (const uid of uids) pipe.publish(keys.channel('job'), JSON.stringify({ event: 'job', data: { uid } }));
    const replies = (await pipe.exec()) ?? [];
    expect(replies.every(([err, n]) => err === null && n === 1), 'every publish reached the daemon').toBe(true);
    // `job` has no handler of its own (the recorder handles '*'), so its metrics label is "other".
    await waitFor(
      'all 1,000 events queued',
      async () => metric(await d.scrape(), 'agentd_events_dispatched_total', { event: 'other' }) === EVENTS,
      5_000,
      5,
    );
    return { d, id, den, file, uids };
  }

  async function expectLeft(id: string, den: string): Promise<void> {
    const c = suite.cmd;
    expect(await c.sismember(keys.den(den), id), 'out of its den').toBe(0);
    expect(await c.exists(keys.heartbeat(id)), 'heartbeat key deleted').toBe(0);
    const rec = JSON.parse((await c.hget(keys.registry, id)) as string) as Record<string, unknown>;
    expect(rec['status']).toBe('offline');
    const msg = await waitFor('agent_offline', () => offline.find((m) => (m.json?.['data'] as { agent?: string } | undefined)?.agent === id), 3_000);
    expect(msg.json?.['data']).toMatchObject({ agent: id, den, host: hostname(), reason: 'shutdown' });
    expect(msg.json, 'the envelope names its source').toMatchObject({ source: id, den });
    expect(offline.filter((m) => (m.json?.['data'] as { agent?: string } | undefined)?.agent === id), 'one agent_offline').toHaveLength(1);
  }

  it('SIGTERM with ~1,000 queued: every event handled exactly once, presence removed, agent_offline, exit 0', async () => {
    const { d, id, den, file, uids } = await loaded({});
    const t0 = Date.now();
    d.signal('SIGTERM');
    const exit = await d.exited;
    const stopMs = Date.now() - t0;

    const stopping = d.logs.find(hasMsg('agentd stopping'));
    const queuedAtSigterm = (stopping?.['waiting'] as number) + (stopping?.['running'] as number);
    const stopped = d.logs.find(hasMsg('agentd stopped'));
    const recorded = recordedUids(file, (r) => r.event === 'job');
    console.log(`fault 6 (drain): queued at SIGTERM ${queuedAtSigterm}, recorded ${recorded.length}/${EVENTS}, stop took ${stopMs} ms, exit ${JSON.stringify(exit)}`);

    expect(queuedAtSigterm, 'events queued when SIGTERM arrived').toBeGreaterThanOrEqual(500);
    expect(exit).toEqual({ code: 0, signal: null });
    expect(stopped?.['drained']).toBe(true);
    expect(new Set(recorded).size, 'distinct events handled').toBe(EVENTS);
    expect([...recorded].sort()).toEqual([...uids].sort());
    await expectLeft(id, den);
    expectSound(d, file, { alive: false });
  });

  it('drain timeout shorter than the work: timeout logged with what was left, exit 1, presence still removed', async () => {
    const drainTimeoutMs = 300; // ~1.25 s of work is queued
    const { d, id, den, file } = await loaded({ AGENTD_DRAIN_TIMEOUT_MS: String(drainTimeoutMs) });
    const t0 = Date.now();
    d.signal('SIGTERM');
    const exit = await d.exited;
    const stopMs = Date.now() - t0;

    const left = d.logs.find(hasMsg(/drain timeout/));
    const running = (left?.['running'] ?? []) as Array<{ plugin: string; event: string; runningMs: number }>;
    const waiting = left?.['waiting'] as number;
    const stopped = d.logs.find(hasMsg('agentd stopped'));
    const recorded = recordedUids(file, (r) => r.event === 'job');
    console.log(
      `fault 6 (drain timeout ${drainTimeoutMs} ms): recorded ${recorded.length}, left waiting ${waiting}, running ${running.length}, stop took ${stopMs} ms, exit ${JSON.stringify(exit)}`,
    );

    expect(exit).toEqual({ code: 1, signal: null });
    expect(left, 'a drain timeout line').toBeDefined();
    expect(left?.['level']).toBe('error');
    expect(left?.['drainTimeoutMs']).toBe(drainTimeoutMs);
    expect(waiting, 'calls still waiting at the timeout').toBeGreaterThan(0);
    expect(running.length).toBeLessThanOrEqual(4);
    for (const r of running) expect(r).toMatchObject({ plugin: 'recorder', event: 'job' });
    expect(stopped?.['drained']).toBe(false);
    expect((stopped?.['stats'] as { dropped: { shutdown: number } }).dropped.shutdown, 'discarded calls counted').toBe(waiting);
    // Every event is accounted for: handled, or discarded at the timeout (an aborted running call may still finish).
    expect(recorded.length + waiting).toBeLessThanOrEqual(EVENTS);
    expect(recorded.length + waiting).toBeGreaterThanOrEqual(EVENTS - running.length);
    expect(stopMs, 'stopped soon after the drain timeout').toBeLessThan(drainTimeoutMs + 3_000);
    await expectLeft(id, den);
    expectSound(d, file, { alive: false });
  });
});
