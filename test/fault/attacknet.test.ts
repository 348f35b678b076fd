/**
 * Attacks on connection health and peer judgement from a misbehaving Redis,
 * with real `agentd run` children and a real redis-server:
 *   - a Redis busy (a long Lua script: BUSY to every command) for longer than
 *     heartbeat.ttl: every heartbeat expires at once when it ends. A watcher
 *     that shared the outage must not report a peer down before the peer had
 *     its chance to beat again (it waits one TTL after its own recovery), and
 *     still reports a real death after that.
 *   - a path that resets both connections every 300 ms for 12 s (a flapping
 *     NAT or link): the per-loss lines are damped once a connection flaps
 *     (redis.flapLosses losses within redis.flapWindowMs, 5 s here), a
 *     reminder comes once per window, no fd is leaked, the daemon is ready
 *     after the path steadies and says so once per connection; a new kind of
 *     error while flapping is still a warn line.
 *   - the server check's own connection answers nothing (replies lost) with
 *     redis.commandTimeoutMs=0 (no command deadline): the check still ends
 *     each attempt at connectTimeoutMs, says so once, and starts once healed.
 *   - with redis.commandTimeoutMs=0, a subscriber found deaf reconnects onto
 *     a path that answers PING but loses the SUBSCRIBE: once the path heals
 *     it is ready again (the SUBSCRIBE wait has a deadline and recycles).
 */
import { readdirSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Redis } from 'ioredis';
import { beforeAll, describe, expect, it } from 'vitest';
import { freePort } from '../helpers/ports.ts';
import type { TestRedis } from '../helpers/redis.ts';
import { expectSound, httpGet, processSuite, type Agent } from '../helpers/process.ts';
import { hasMsg, keys, uniqueId, waitFor } from '../helpers/util.ts';

const TTL_S = 6;
/** Ends 2.5 s before the peer's fourth beat interval (4 × 2.9 s) after its last landed beat. */
const BUSY_S = 4 * 2.9 - 2.5;
/** redis.flapLosses (the default) and redis.flapWindowMs (60 s by default) for the flapping test. */
const FLAP_LOSSES = 3;
const FLAP_WINDOW_MS = 5_000;
const FLAP_FOR_MS = 12_000;

const suite = processSuite({ redis: { requireControl: true }, env: { AGENTD_HEARTBEAT_TTL: String(TTL_S), AGENTD_WATCH_NOTIFICATIONS: 'enable' } });

describe('attacks: a misbehaving Redis', () => {
  let redis: TestRedis;
  let c: Redis;

  beforeAll(() => {
    redis = suite.redis;
    c = redis.client({ connectionName: 'attack-cmd' });
  });

  const start = (id: string, den: string, env: Record<string, string>): Promise<Agent> => suite.spawn({ id, den, env });

  it('Redis busy (Lua script) longer than the TTL: no live peer is reported down when it ends', { timeout: 90_000 }, async () => {
    const den = uniqueId('busyden');
    // The watcher beats and sweeps often; its peer beats at the slowest interval the TTL allows.
    const a = await start(uniqueId('busya'), den, { AGENTD_HEARTBEAT_INTERVAL: '1', AGENTD_SWEEP_INTERVAL: '0.5' });
    const bId = uniqueId('busyb');
    const b = await start(bId, den, { AGENTD_HEARTBEAT_INTERVAL: '2.9', AGENTD_SWEEP_INTERVAL: '5' });
    await Promise.all([a.waitForLog(hasMsg('agentd ready'), 15_000), b.waitForLog(hasMsg('agentd ready'), 15_000)]);
    const downs: string[] = [];
    const sub = redis.client({ connectionName: 'attack-observer' });
    sub.on('message', (_ch: string, m: string) => downs.push(m));
    await sub.subscribe(keys.channel('agent_down'));
    await c.config('SET', 'busy-reply-threshold', '100');

    // Worst phase: the script starts right after a beat of the peer landed and ends 2.5 s before its
    // next beat (B beats every 2.9 s), long after its key expired (TTL 6 s).
    const lastSeen = async (): Promise<number> => Number((JSON.parse((await c.hget(keys.registry, bId)) ?? '{}') as { lastSeen?: number }).lastSeen);
    const seen0 = await lastSeen();
    await waitFor('a beat of the peer', async () => (await lastSeen()) > seen0, 5_000, 10);
    const busyUs = Math.round((BUSY_S * 1000 - (Date.now() - (await lastSeen()))) * 1000);
    // A busy script: every other client gets BUSY until it ends; the server's clock runs on.
    const busy = redis.client({ connectionName: 'attack-busy', commandTimeout: (BUSY_S + 10) * 1000 });
    const now = "local function now() local t = redis.call('TIME') return tonumber(t[1]) * 1000000 + tonumber(t[2]) end";
    const script = `${now} local t = now() + ${busyUs} while now() < t do end return 1`;
    const ran = busy.eval(script, 0);
    await waitFor('beats fail with BUSY', () => a.logs.some(hasMsg(/heartbeat failed/)), 10_000);
    expect(await ran).toBe(1);
    // Every heartbeat key expired while the script ran; both agents beat again within their interval.
    await waitFor('the peer beat again', async () => (await c.exists(keys.heartbeat(bId))) === 1, 10_000, 20);
    await sleep(2_000);
    expect(downs, 'agent_down for a live peer').toEqual([]);
    expect(a.logs.filter(hasMsg('agent down: heartbeat expired'))).toEqual([]);
    expect(a.logs.some(hasMsg(/^own presence writes work again; reaping dead peers again after one heartbeat.ttl/))).toBe(true);
    // The grace ends: a real death after it is reported.
    b.child.kill('SIGKILL');
    await waitFor('the dead peer reported down', () => downs.some((m) => m.includes(bId)), (TTL_S + 5) * 1000);
    expectSound(a, undefined);
  });

  it('connections reset every 300 ms for 12 s: per-loss lines damped, a reminder per flap window, no fd leaked, ready once it steadies', { timeout: 60_000 }, async () => {
    const proxy = await suite.proxy();
    try {
      const httpPort = await freePort();
      const d = await start(uniqueId('flap'), uniqueId('flapden'), { AGENTD_REDIS_URL: proxy.url(), AGENTD_HEARTBEAT_INTERVAL: '1', AGENTD_HTTP_PORT: String(httpPort), AGENTD_REDIS_CONNECT_TIMEOUT_MS: '1000', AGENTD_REDIS_FLAP_WINDOW_MS: String(FLAP_WINDOW_MS) });
      await d.waitForLog(hasMsg('agentd ready'), 15_000);
      const pid = d.child.pid as number;
      const fds = (): number => readdirSync(`/proc/${pid}/fd`).length;
      const fd0 = fds();
      const n0 = d.logs.length;
      const until = Date.now() + FLAP_FOR_MS;
      while (Date.now() < until) {
        for (const c of proxy.open()) c.drop();
        await sleep(300);
      }
      const flapLines = d.logs.slice(n0).filter((l) => l['component'] === 'redis');
      expect(proxy.connections.length, 'connections made while flapping').toBeGreaterThan(24);
      // Per connection: every line of the losses before it counts as flapping (error, lost,
      // reconnecting, ready again), the flapping line, a 'still flapping' reminder per window, a
      // 30 s reconnecting reminder, and up to three kinds of error new to the episode (reset, closed, EPIPE...).
      const reminders = Math.ceil(FLAP_FOR_MS / FLAP_WINDOW_MS);
      const bound = 2 * (4 * (FLAP_LOSSES - 1) + 1 + reminders + 1 + 3);
      expect(flapLines.length, JSON.stringify(flapLines.map((l) => [l['conn'], l['msg']]))).toBeLessThanOrEqual(bound);
      expect(flapLines.filter(hasMsg(/^redis connection flapping/)).length).toBe(2);
      for (const conn of ['command', 'subscriber']) {
        const still = flapLines.filter((l) => hasMsg('redis connection still flapping')(l) && l['conn'] === conn);
        expect(still.length, `'still flapping' reminders (${conn})`).toBeGreaterThanOrEqual(1);
        expect(still.length, `'still flapping' reminders (${conn})`).toBeLessThanOrEqual(reminders);
      }
      // The daemon's own per-loss lines (degraded, ready again, subscription lost / confirmed again)
      // are damped with them: only those of the losses before it counted as flapping remain.
      const all = d.logs.slice(n0).filter((l) => l['level'] !== 'debug' && l['component'] !== 'redis');
      console.log(`flapping ${FLAP_FOR_MS / 1000} s: ${JSON.stringify({ connections: proxy.connections.length, redisLines: flapLines.length, otherLines: all.length, fdBefore: fd0 })}`);
      expect(all.length, JSON.stringify(all.map((l) => l['msg']))).toBeLessThanOrEqual(2 * 4 * (FLAP_LOSSES - 1) + 6);
      // A new kind of error while flapping is still said: a path that now accepts and never answers.
      proxy.setMode({ kind: 'pause' });
      for (const c of proxy.open()) c.drop();
      await d.waitForLog((l) => hasMsg('redis connection error')(l) && l['level'] === 'warn' && /deadline/.test(String(l['err'])), 10_000);
      proxy.setMode({ kind: 'pass' });
      await waitFor('/readyz 200 after the path steadied', async () => (await httpGet(httpPort, '/readyz')).status === 200, 10_000);
      expect(fds(), 'open fds after flapping').toBeLessThanOrEqual(fd0 + 2);
      await waitFor('steady again on both connections', () => d.logs.filter(hasMsg(/^redis connection steady again/)).length === 2, FLAP_WINDOW_MS + 15_000);
      await waitFor('the daemon says it is ready after the flapping', () => d.logs.some((l) => hasMsg('agentd ready again')(l) && l['afterFlapping'] === true), 5_000);
      expectSound(d, undefined);
    } finally {
      await proxy.close();
    }
  });

  it('server check connection deaf with commandTimeoutMs=0: each attempt ends at connectTimeoutMs; starts once healed', { timeout: 60_000 }, async () => {
    const proxy = await suite.proxy();
    try {
      const id = uniqueId('chk');
      proxy.setRule((x) => (x.sent.includes(`agentd:${id}:check`) ? { kind: 'blackhole', direction: 'down' } : undefined));
      const d = await start(id, uniqueId('chkden'), { AGENTD_REDIS_URL: proxy.url(), AGENTD_HEARTBEAT_INTERVAL: '1', AGENTD_REDIS_COMMAND_TIMEOUT_MS: '0', AGENTD_REDIS_CONNECT_TIMEOUT_MS: '1000' });
      const line = await d.waitForLog(hasMsg('redis server check failed; retrying with backoff'), 10_000);
      expect(String(line['err'])).toMatch(/timed out|timeout|deadline/i);
      await waitFor('a second check attempt', () => proxy.connections.filter((x) => x.sent.includes(`agentd:${id}:check`)).length >= 2, 10_000);
      proxy.setRule(undefined);
      await d.waitForLog(hasMsg('agentd ready'), 15_000);
      expect(d.logs.filter(hasMsg('redis server check failed; retrying with backoff'))).toHaveLength(1);
      expectSound(d, undefined);
    } finally {
      await proxy.close();
    }
  });

  it('commandTimeoutMs=0: a SUBSCRIBE lost on a fresh subscriber connection does not leave it not ready after healing', { timeout: 60_000 }, async () => {
    const proxy = await suite.proxy();
    try {
      const id = uniqueId('subto');
      const httpPort = await freePort();
      const d = await start(id, uniqueId('subtoden'), {
        AGENTD_REDIS_URL: proxy.url(),
        AGENTD_HEARTBEAT_INTERVAL: '1',
        AGENTD_REDIS_COMMAND_TIMEOUT_MS: '0',
        AGENTD_EVENT_PROBE_INTERVAL: '1',
        AGENTD_EVENT_PROBE_TIMEOUT_MS: '500',
        AGENTD_REDIS_RECONNECT_MAX_DELAY_MS: '500',
        AGENTD_HTTP_PORT: String(httpPort),
      });
      await d.waitForLog(hasMsg('agentd ready'), 15_000);
      const isSub = (x: { sent: string }): boolean => x.sent.includes(`agentd:${id}:sub`);
      const first = proxy.open().find(isSub);
      // The subscriber goes deaf; its next connections answer the handshake, PING and PSUBSCRIBE, then lose the SUBSCRIBE.
      const subscribes = (x: { sent: string }): number => (x.sent.match(/subscribe/gi) ?? []).length;
      proxy.setRule((x) => (isSub(x) && (x === first || subscribes(x) >= 2) ? { kind: 'blackhole' } : undefined));
      await d.waitForLog(hasMsg('agentd degraded'), 10_000);
      await waitFor('a new subscriber connection swallowed its SUBSCRIBE', () => proxy.open().some((x) => isSub(x) && x !== first && subscribes(x) >= 2), 10_000);
      await sleep(2_000);
      proxy.setRule(undefined);
      await waitFor('/readyz 200 after healing', async () => (await httpGet(httpPort, '/readyz')).status === 200, 10_000);
      expectSound(d, undefined);
    } finally {
      await proxy.close();
    }
  });
});
