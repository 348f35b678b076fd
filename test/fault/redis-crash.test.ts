/**
 * Fault 1, Redis crash: redis-server is SIGKILLed and restarted on the same
 * port after 5 s (the restarted server is empty: no persistence). Pass:
 * within 2 s of Redis being back the subscription is confirmed (an event
 * the test publishes reaches the plugin), the agent is back in its den and its
 * heartbeat key exists, agent_online {rejoined: true} is announced; no
 * unhandled rejection; the process alive, and it still stops cleanly after.
 * The 2 s deadline is measured for each part. (The in-process side of a
 * restart, states and a plugin's publish during the outage, is in
 * test/integration/daemon-reconnect.test.ts.)
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { expectSound, httpGet, isAlive, processSuite, readRecords } from '../helpers/process.ts';
import { collect, dataOf, hasMsg, keys, logTime, waitFor } from '../helpers/util.ts';

const OUTAGE_MS = 5_000;
const DEADLINE_MS = 2_000;

const suite = processSuite({ redis: { requireControl: true } });

describe('fault 1: Redis crash (kill -9, restart on the same port after 5 s)', () => {
  it('within 2 s of Redis being back: subscription confirmed (a probe event arrives), back in its den, heartbeat key present, ready; rejoined announced; a clean stop after', async () => {
    // Default ttl/interval (60 s / 20 s): only the reconnect path can bring presence back within seconds.
    const d = await suite.start({ plugins: ['recorder.js'], http: true });
    const { id, den, file, httpPort } = d;
    const c = suite.cmd;
    // A watcher that reconnects every 20 ms, so it is subscribed again well before the daemon
    // (whose back-off is 0.5-1 s after a few failed attempts) re-registers.
    const online = await collect(suite.redis.client({ retryStrategy: () => 20, connectionName: 'fault1-watcher' }), keys.channel('agent_online'));

    // Sanity: an event before the crash is handled.
    await c.publish(keys.channel('probe'), JSON.stringify({ event: 'probe', data: { uid: `${id}-before` } }));
    await waitFor('pre-crash event recorded', () => readRecords(file).some((r) => (r.data as { uid?: string })?.uid === `${id}-before`), 5_000);

    await suite.redis.kill('SIGKILL');
    const killedAt = Date.now();
    await sleep(OUTAGE_MS);
    expect(isAlive(d), 'alive during the outage').toBe(true);
    const startCalledAt = Date.now();
    await suite.redis.start();
    const backAt = Date.now(); // the server answers PING from here on

    // Probe events: a fresh uid every 50 ms until one reaches the recorder.
    let seq = 0;
    const published = new Map<string, number>();
    let probing = true;
    const prober = (async () => {
      while (probing) {
        const uid = `${id}-probe-${seq++}`;
        published.set(uid, Date.now());
        await c.publish(keys.channel('probe'), JSON.stringify({ event: 'probe', data: { uid } })).catch(() => 0);
        await sleep(50);
      }
    })();

    const measure = async (what: string, check: () => Promise<boolean> | boolean): Promise<number> => {
      await waitFor(what, check, 10_000, 10);
      return Date.now() - backAt;
    };
    const probeRecorded = (): boolean => readRecords(file).some((r) => String((r.data as { uid?: string })?.uid ?? '').startsWith(`${id}-probe-`));
    let probeMs: number, denMs: number, heartbeatMs: number, readyMs: number;
    try {
      [probeMs, denMs, heartbeatMs, readyMs] = await Promise.all([
        measure('a probe event recorded', probeRecorded),
        measure('agent back in its den', async () => (await c.sismember(keys.den(den), id)) === 1),
        measure('heartbeat key back', async () => (await c.exists(keys.heartbeat(id))) === 1),
        measure('/readyz 200', async () => (await httpGet(httpPort, '/readyz', 500)).status === 200),
      ]);
    } finally {
      probing = false;
      await prober;
    }

    // The first probe that arrived: how long after `backAt` its publisher sent it and the recorder wrote it.
    const firstProbe = readRecords(file).find((r) => String((r.data as { uid?: string })?.uid ?? '').startsWith(`${id}-probe-`));
    const firstProbeAt = firstProbe?.at ?? Number.NaN;
    const confirmed = d.logs.find(hasMsg(/event subscription confirmed again/));
    const timings = {
      outageMs: backAt - killedAt,
      redisStartMs: backAt - startCalledAt,
      probeRecordedAfterBackMs: firstProbeAt - backAt,
      probeSeenByTestMs: probeMs,
      denMs,
      heartbeatMs,
      readyzMs: readyMs,
      subscriptionConfirmedLogMs: confirmed ? logTime(confirmed) - backAt : null,
      gapMs: confirmed?.['gapMs'],
    };
    console.log(`fault 1 (Redis crash, ${OUTAGE_MS} ms outage) recovery after Redis was back: ${JSON.stringify(timings)}`);

    expect(firstProbeAt - backAt, 'probe event handled within 2 s of Redis being back').toBeLessThan(DEADLINE_MS);
    expect(denMs, 'back in its den within 2 s').toBeLessThan(DEADLINE_MS);
    expect(heartbeatMs, 'heartbeat key back within 2 s').toBeLessThan(DEADLINE_MS);
    expect(readyMs, '/readyz 200 within 2 s').toBeLessThan(DEADLINE_MS);
    expect(confirmed, '"event subscription confirmed again" logged').toBeDefined();
    expect(confirmed?.['gapMs'] as number, 'the gap covers the outage').toBeGreaterThanOrEqual(OUTAGE_MS);

    // The heartbeat key holds a beat written after the restart, with its TTL.
    expect(Number(await c.get(keys.heartbeat(id)))).toBeGreaterThanOrEqual(startCalledAt);
    expect(await c.ttl(keys.heartbeat(id))).toBeGreaterThan(50);
    const rec = JSON.parse((await c.hget(keys.registry, id)) as string) as Record<string, unknown>;
    expect(rec).toMatchObject({ id, den, status: 'online', pid: d.pid });
    expect(rec['lastSeen'] as number).toBeGreaterThanOrEqual(startCalledAt);

    // Still delivering afterwards; every probe that arrived arrived once.
    await c.publish(keys.channel('probe'), JSON.stringify({ event: 'probe', data: { uid: `${id}-after` } }));
    await waitFor('post-recovery event recorded', () => readRecords(file).some((r) => (r.data as { uid?: string })?.uid === `${id}-after`), 3_000);
    const uids = readRecords(file).map((r) => (r.data as { uid?: string })?.uid).filter((u) => u !== undefined);
    for (const u of uids) expect(u === `${id}-before` || u === `${id}-after` || published.has(u), `recorded uid ${u} was published`).toBe(true);

    // agent_online with rejoined: true, seen by the watcher or by the daemon's own recorder.
    const isRejoin = (data: Record<string, unknown>): boolean => data['agent'] === id && data['rejoined'] === true;
    const rejoined = await waitFor(
      'agent_online {rejoined: true}',
      () =>
        online.map(dataOf).find(isRejoin) ??
        readRecords(file).find((r) => r.event === 'agent_online' && isRejoin((r.data ?? {}) as Record<string, unknown>))?.data,
      3_000,
    );
    expect(rejoined).toMatchObject({ agent: id, den, rejoined: true });
    expect(d.logs.some(hasMsg(/rejoined/)), 'the rejoin logged').toBe(true);
    expectSound(d, file);

    // And it still stops cleanly afterwards.
    d.signal('SIGTERM');
    expect(await d.exited).toEqual({ code: 0, signal: null });
    expect(await c.sismember(keys.den(den), id)).toBe(0);
    expectSound(d, file, { alive: false });
  });
});
