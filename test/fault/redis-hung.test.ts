/**
 * Fault 3, hung Redis: redis-server is frozen with SIGSTOP for 30 s (its
 * connections stay open, nothing is answered), then continued. With
 * heartbeat.ttl 6 s and heartbeat.interval 1 s. Pass: the daemon notices
 * within 2 × interval ('heartbeat failed', /readyz 503) and recovers within
 * 2 s of SIGCONT (a heartbeat written after it, a new event handled, /readyz 200).
 *
 * The freeze is started right after a beat has landed: the worst phase, since
 * the next beat is a full interval away and then needs its own deadline to fail.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, describe, expect, it } from 'vitest';
import { expectSound, httpGet, isAlive, mb, processSuite, readRecords, rssKb } from '../helpers/process.ts';
import { hasMsg, keys, logTime, waitFor } from '../helpers/util.ts';

const FREEZE_MS = 30_000;
const TTL_S = 6;
const INTERVAL_S = 1;
const NOTICE_BOUND_MS = 2 * INTERVAL_S * 1000;
const RECOVER_BOUND_MS = 2_000;
/** /readyz is polled this often: the resolution of the readiness measurement (not slack on the bound). */
const READYZ_POLL_MS = 5;

const suite = processSuite({ redis: { requireControl: true } });

describe('fault 3: hung Redis (SIGSTOP 30 s)', () => {
  afterAll(async () => {
    await suite.redis.resume().catch(() => undefined);
  });

  it('notices within 2 × interval (heartbeat failed, /readyz 503), recovers within 2 s of SIGCONT', { timeout: 90_000 }, async () => {
    const d = await suite.start({
      plugins: ['recorder.js'],
      http: true,
      env: { AGENTD_HEARTBEAT_TTL: String(TTL_S), AGENTD_HEARTBEAT_INTERVAL: String(INTERVAL_S) },
    });
    const { id, den, file, httpPort } = d;
    const c = suite.cmd;
    await sleep(1_500);
    expect((await httpGet(httpPort, '/readyz')).status).toBe(200);
    expect(d.logs.some(hasMsg('heartbeat failed'))).toBe(false);

    // Freeze right after a beat lands: poll the heartbeat value (the beat's start time) until it changes.
    const last = await c.get(keys.heartbeat(id));
    await waitFor('a new beat', async () => (await c.get(keys.heartbeat(id))) !== last, 3_000, 2);
    const lastBeat = Number(await c.get(keys.heartbeat(id)));
    await suite.redis.pause();
    const pausedAt = Date.now();
    const linesBefore = d.logs.length;
    const rssBefore = rssKb(d.pid);

    let resumedAt = 0;
    try {
      // Noticed: the log line and /readyz, measured in parallel.
      const [failed, readyzDownMs] = await Promise.all([
        d.waitForLog(hasMsg('heartbeat failed'), 5_000),
        (async () => {
          await waitFor('/readyz 503', async () => (await httpGet(httpPort, '/readyz', 500)).status === 503, 5_000, READYZ_POLL_MS);
          return Date.now() - pausedAt;
        })(),
      ]);
      const noticedMs = logTime(failed) - pausedAt;
      const readyz = await httpGet(httpPort, '/readyz');

      // Stay frozen for the rest of the 30 s, checking liveness and readiness now and then.
      const readyzDuring: number[] = [];
      while (Date.now() - pausedAt < FREEZE_MS) {
        await sleep(Math.min(3_000, FREEZE_MS - (Date.now() - pausedAt)));
        expect(isAlive(d), 'alive while Redis is frozen').toBe(true);
        readyzDuring.push((await httpGet(httpPort, '/readyz')).status);
      }
      const frozenLines = d.logs.slice(linesBefore);
      const rssFrozen = rssKb(d.pid);

      await suite.redis.resume();
      resumedAt = Date.now();

      // Recovery, measured in parallel: fresh beat, an event handled, ready.
      const c2 = suite.redis.client({ connectionName: 'fault3-after' });
      let seq = 0;
      const measure = async (what: string, check: () => Promise<boolean> | boolean): Promise<number> => {
        await waitFor(what, check, 10_000, 10);
        return Date.now() - resumedAt;
      };
      const [beatMs, eventMs, readyMs] = await Promise.all([
        measure('a heartbeat written after SIGCONT', async () => Number(await c2.get(keys.heartbeat(id))) >= resumedAt),
        measure('an event published after SIGCONT handled', async () => {
          await c2.publish(keys.channel('probe'), JSON.stringify({ event: 'probe', data: { uid: `${id}-after-${seq++}` } }));
          return readRecords(file).some((r) => String((r.data as { uid?: string })?.uid ?? '').startsWith(`${id}-after-`));
        }),
        measure('/readyz 200', async () => (await httpGet(httpPort, '/readyz', 500)).status === 200),
      ]);
      const firstEvent = readRecords(file).find((r) => String((r.data as { uid?: string })?.uid ?? '').startsWith(`${id}-after-`));

      const report = {
        pausePhaseAfterBeatMs: pausedAt - lastBeat,
        noticedMs,
        readyzDownMs,
        readyzReasons: readyz.body.trim(),
        frozenLogLines: frozenLines.map((l) => `${String(l['level'])} ${String(l['msg'])}`),
        rssMb: { before: mb(rssBefore), frozen: mb(rssFrozen) },
        recovery: { beatMs, eventHandledMs: (firstEvent?.at ?? Number.NaN) - resumedAt, eventSeenMs: eventMs, readyzMs: readyMs },
      };
      console.log(`fault 3 (Redis SIGSTOP ${FREEZE_MS / 1000} s, ttl ${TTL_S} s, interval ${INTERVAL_S} s): ${JSON.stringify(report)}`);

      expect(failed['code']).toBe('AGENTD_ERR_HEARTBEAT');
      expect(noticedMs, "'heartbeat failed' within 2 × interval of the freeze").toBeLessThanOrEqual(NOTICE_BOUND_MS);
      expect(readyzDownMs, '/readyz 503 within 2 × interval of the freeze').toBeLessThanOrEqual(NOTICE_BOUND_MS + READYZ_POLL_MS);
      expect(new Set(readyzDuring), '/readyz while frozen').toEqual(new Set([503]));
      expect(frozenLines.filter(hasMsg('heartbeat failed')), 'one heartbeat failed line, not one per beat').toHaveLength(1);
      expect(frozenLines.length, 'log lines during a 30 s freeze').toBeLessThanOrEqual(10);

      expect(beatMs, 'fresh heartbeat within 2 s of SIGCONT').toBeLessThan(RECOVER_BOUND_MS);
      expect(eventMs, 'a new event handled within 2 s of SIGCONT').toBeLessThan(RECOVER_BOUND_MS);
      expect(readyMs, '/readyz 200 within 2 s of SIGCONT').toBeLessThan(RECOVER_BOUND_MS);
      await d.waitForLog(hasMsg('heartbeat restored'), 2_000);
      expect(await c2.sismember(keys.den(den), id)).toBe(1);
      expect(await c2.ttl(keys.heartbeat(id))).toBeGreaterThan(TTL_S - 2);
      const rec = JSON.parse((await c2.hget(keys.registry, id)) as string) as { lastSeen: number; status: string };
      expect(rec.status).toBe('online');
      expect(rec.lastSeen).toBeGreaterThanOrEqual(resumedAt);

      // Still fine a few beats later: the beats replayed from the freeze did not win over fresh ones.
      await sleep(2_000);
      expect(Number(await c2.get(keys.heartbeat(id)))).toBeGreaterThan(Date.now() - 2 * INTERVAL_S * 1000);
      expect((await httpGet(httpPort, '/readyz')).status).toBe(200);
    } finally {
      if (resumedAt === 0) await suite.redis.resume();
    }
    expectSound(d, file);
  });
});
