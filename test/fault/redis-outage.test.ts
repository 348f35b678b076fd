/**
 * Fault 2, long outage: redis-server is killed and kept down for 12 s (three
 * times redis.reconnectLogIntervalMs, set to 4 s here; 30 s by default), then
 * restarted (empty). Pass: the daemon's RSS stays bounded, nothing it tried
 * to write during the outage is replayed after the return (presence, plugin
 * writes and plugin publishes all carry post-return timestamps), and the log
 * says clearly what is going on without flooding (one "redis reconnecting"
 * line when it starts, then one per reconnectLogIntervalMs per connection).
 *
 * The ticker fixture publishes a `tick` every 50 ms through ctx.publish and
 * RPUSHes its timestamp to fault:ticks:<id> through ctx.redis; about 240 of each are attempted
 * while Redis is away.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { expectSound, httpGet, isAlive, mb, processSuite, readRecords, rssKb } from '../helpers/process.ts';
import { hasMsg, keys, logTime, waitFor, type LogLine } from '../helpers/util.ts';

const OUTAGE_MS = 12_000;
/** redis.reconnectLogIntervalMs: one 'redis reconnecting' info line when reconnecting starts, then one per interval. */
const RECONNECT_LOG_EVERY_MS = 4_000;
/** Beats fall due during the outage (ttl stays the default 60 s). */
const INTERVAL_S = 2;
const RSS_GROWTH_LIMIT_KB = 30 * 1024;
const TICK_MS = 50;

interface Tick {
  uid: string;
  seq: number;
  t: number;
}

const suite = processSuite({ redis: { requireControl: true } });

describe('fault 2: long outage (Redis down 12 s, three reconnect log intervals)', () => {
  it('RSS bounded, no stale state replayed after the return, one clear log line per reconnect log interval while waiting', { timeout: 60_000 }, async () => {
    const d = await suite.start({
      plugins: ['recorder.js', 'ticker.js'],
      http: true,
      env: { TICK_MS: String(TICK_MS), AGENTD_HEARTBEAT_INTERVAL: String(INTERVAL_S), AGENTD_REDIS_RECONNECT_LOG_INTERVAL_MS: String(RECONNECT_LOG_EVERY_MS) },
    });
    const { id, den, file, httpPort } = d;
    const c = suite.cmd;
    const ticks = (): Tick[] => readRecords(file).filter((r) => r.event === 'tick').map((r) => r.data as Tick);
    await waitFor('ticks flowing before the outage', () => ticks().length >= 5, 5_000);
    await sleep(1_000); // let RSS settle after start

    const rssBefore = rssKb(d.pid);
    const linesBefore = d.logs.length;
    const ticksBefore = ticks().length;

    await suite.redis.kill('SIGKILL');
    const killedAt = Date.now();

    // While it waits: sample RSS, check liveness and readiness every 2 s.
    const rssDuring: number[] = [];
    const readyzDuring: number[] = [];
    const healthzDuring: number[] = [];
    while (Date.now() - killedAt < OUTAGE_MS) {
      await sleep(Math.min(2_000, OUTAGE_MS - (Date.now() - killedAt)));
      expect(isAlive(d), 'alive during the outage').toBe(true);
      rssDuring.push(rssKb(d.pid));
      readyzDuring.push((await httpGet(httpPort, '/readyz')).status);
      healthzDuring.push((await httpGet(httpPort, '/healthz')).status);
    }
    const outageLines = d.logs.slice(linesBefore);
    const startCalledAt = Date.now();
    await suite.redis.start();
    const backAt = Date.now();

    // Back: subscription confirmed again and a fresh event delivered.
    const probeUid = `${id}-after`;
    await waitFor(
      'an event published after the return is handled',
      async () => {
        await c.publish(keys.channel('probe'), JSON.stringify({ event: 'probe', data: { uid: `${probeUid}-${Date.now()}` } }));
        return readRecords(file).some((r) => String((r.data as { uid?: string })?.uid ?? '').startsWith(probeUid));
      },
      5_000,
      100,
    );
    const recoveredMs = Date.now() - backAt;
    await d.waitForLog(hasMsg(/event subscription confirmed again/), 5_000);

    // Presence: everything in the (empty) restarted server was written after the restart.
    await waitFor('back in its den', async () => (await c.sismember(keys.den(den), id)) === 1, 5_000);
    const heartbeat = Number(await c.get(keys.heartbeat(id)));
    const rec = JSON.parse((await c.hget(keys.registry, id)) as string) as { lastSeen: number; status: string };

    // Let a few seconds of ticks flow after the return, then measure RSS again.
    await sleep(2_000);
    const rssAfter = rssKb(d.pid);
    // Every plugin write the restarted (empty) server holds, oldest first.
    const tickWrites = (await c.lrange(`fault:ticks:${id}`, 0, -1)).map(Number);
    // Ticks handled after the return; one attempted before the restart would have been replayed.
    const recordedAfterReturn = readRecords(file).filter((r) => r.event === 'tick' && r.at >= startCalledAt);
    const stale = recordedAfterReturn.map((r) => r.data as Tick).filter((t) => t.t < startCalledAt);
    // Nothing was handled while Redis was away (the recorder only hears ticks that went through Redis).
    const duringOutage = readRecords(file).filter((r) => r.at > killedAt + 1_000 && r.at < startCalledAt);

    const reconnectInfo = outageLines.filter((l) => hasMsg('redis reconnecting')(l) && l['level'] === 'info');
    const byConn = (conn: string): LogLine[] => reconnectInfo.filter((l) => l['conn'] === conn);
    const maxReconnectLines = 1 + Math.floor(OUTAGE_MS / RECONNECT_LOG_EVERY_MS);
    const messageCounts: Record<string, number> = {};
    for (const l of outageLines) {
      const k = `${String(l['level'])} ${String(l['msg'])}${l['conn'] ? ` (${String(l['conn'])})` : ''}`;
      messageCounts[k] = (messageCounts[k] ?? 0) + 1;
    }

    d.signal('SIGTERM');
    const exit = await d.exited;
    const tickerStats = d.logs.find(hasMsg('ticker stats'));

    const report = {
      outageMs: backAt - killedAt,
      recoveredMs,
      rssMb: { before: mb(rssBefore), maxDuring: mb(Math.max(...rssDuring)), after: mb(rssAfter), growthMb: mb(Math.max(...rssDuring, rssAfter) - rssBefore) },
      linesDuringOutage: outageLines.length,
      messageCounts,
      ticks: { beforeOutage: ticksBefore, writesAfterReturn: tickWrites.length, oldestWriteAfterReturnMs: (tickWrites[0] ?? Number.NaN) - startCalledAt, afterReturn: recordedAfterReturn.length, stale: stale.length, tickerStats },
      heartbeatAgeAtCheckMs: Date.now() - heartbeat,
    };
    console.log(`fault 2 (Redis down ${OUTAGE_MS / 1000} s, reconnect log every ${RECONNECT_LOG_EVERY_MS / 1000} s): ${JSON.stringify(report)}`);

    // RSS bounded.
    expect(Math.max(...rssDuring) - rssBefore, 'RSS growth during the outage (KiB)').toBeLessThan(RSS_GROWTH_LIMIT_KB);
    expect(rssAfter - rssBefore, 'RSS growth after the return (KiB)').toBeLessThan(RSS_GROWTH_LIMIT_KB);

    // Alive and honest about it while waiting.
    expect(new Set(healthzDuring), '/healthz during the outage').toEqual(new Set([200]));
    expect(new Set(readyzDuring), '/readyz during the outage').toEqual(new Set([503]));

    // No stale state replayed.
    expect(heartbeat, 'heartbeat value written after the restart').toBeGreaterThanOrEqual(startCalledAt);
    expect(rec.status).toBe('online');
    expect(rec.lastSeen, 'registry lastSeen written after the restart').toBeGreaterThanOrEqual(startCalledAt);
    expect(tickWrites.length, 'plugin writes (RPUSH) again after the restart').toBeGreaterThan(0);
    expect(tickWrites.filter((t) => t < startCalledAt), 'plugin writes attempted during the outage that reached the restarted server').toEqual([]);
    expect(stale.map((t) => t.seq), 'ticks attempted during the outage that showed up after it').toEqual([]);
    expect(recordedAfterReturn.length, 'ticks flow again after the return').toBeGreaterThan(0);
    expect(duringOutage, 'events handled while Redis was away').toEqual([]);
    expect(tickerStats?.['failed'] as number, 'ticks attempted during the outage failed at once').toBeGreaterThan((0.8 * OUTAGE_MS) / TICK_MS);
    expect(tickerStats?.['pending'], 'no plugin call left hanging').toBe(0);

    // Clear log lines: it says what happened, once, and reminds once per interval per connection.
    for (const conn of ['command', 'subscriber']) {
      expect(outageLines.some((l) => hasMsg('redis connection lost')(l) && l['conn'] === conn), `'redis connection lost' (${conn})`).toBe(true);
      // The first line and at least one reminder (the last interval may end just after the return).
      expect(byConn(conn).length, `'redis reconnecting' info lines (${conn})`).toBeGreaterThanOrEqual(maxReconnectLines - 2);
      expect(byConn(conn).length, `'redis reconnecting' info lines (${conn})`).toBeLessThanOrEqual(maxReconnectLines);
      const times = byConn(conn).map(logTime);
      for (let i = 1; i < times.length; i++) expect((times[i] as number) - (times[i - 1] as number)).toBeGreaterThanOrEqual(RECONNECT_LOG_EVERY_MS - 1_000);
    }
    expect(outageLines.some(hasMsg('heartbeat failed')), "'heartbeat failed' logged").toBe(true);
    expect(outageLines.some(hasMsg(/event subscription lost/)), "'event subscription lost' logged").toBe(true);
    for (const [k, n] of Object.entries(messageCounts)) expect(n, `log line repeated during the outage: ${k}`).toBeLessThanOrEqual(maxReconnectLines);
    expect(outageLines.length, 'log lines during the outage').toBeLessThanOrEqual(25);

    // A clean stop after all that.
    expect(exit).toEqual({ code: 0, signal: null });
    expectSound(d, file, { alive: false });
  });
});
