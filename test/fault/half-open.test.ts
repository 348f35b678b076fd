/**
 * Faults 14 and 15: half-open connections and connects that never finish,
 * injected with a TCP proxy (test/helpers/proxy.ts) between a real
 * `agentd run` and a real redis-server.
 *
 * - Subscriber blackhole: the subscriber's connection stays open and forwards
 *   nothing. Pass: degraded and /readyz 503 naming the probe within
 *   probeInterval + 2 × probeTimeoutMs (the PUBLISH answer, then the arrival),
 *   one log line for it, that connection recycled (the command connection
 *   untouched), ready again within 2 s of the path healing, events flow.
 * - Command blackhole (requests lost): the connection is recycled within
 *   min(probeInterval, interval) + commandTimeoutMs; ready again after healing.
 * - A path that accepts TCP and never answers: every attempt ends at
 *   connectTimeoutMs and is retried (plain and TLS), ready once it answers.
 */
import { execFileSync } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import type { ProxiedConnection, TcpProxy } from '../helpers/proxy.ts';
import { KEEPALIVE_MS } from '../../src/redis/connection.ts';
import { expectSound, HALF_OPEN, halfOpenEnv, httpGet, processSuite, readRecords } from '../helpers/process.ts';
import { hasMsg, keys, seedMessage, waitFor } from '../helpers/util.ts';

const {
  intervalS: INTERVAL_S,
  probeIntervalS: PROBE_INTERVAL_S,
  probeTimeoutMs: PROBE_TIMEOUT_MS,
  connectTimeoutMs: CONNECT_TIMEOUT_MS,
  commandTimeoutMs: COMMAND_TIMEOUT_MS,
  reconnectMaxMs: RECONNECT_MAX_MS,
} = HALF_OPEN;
/** Worst case of the periodic probe: a full interval, the PUBLISH answer's wait, then the arrival's. */
const SUB_NOTICE_BOUND_MS = PROBE_INTERVAL_S * 1000 + 2 * PROBE_TIMEOUT_MS;
const HEAL_BOUND_MS = 2_000;
/** Time for a socket the daemon destroyed to be seen closed by the proxy (same machine, loaded). */
const CLOSE_SEEN_MS = 250;
/** Resolution of the /readyz polling (not slack on the bounds). */
const POLL_MS = 20;

const suite = processSuite({ redis: { requireControl: true }, env: halfOpenEnv() });

describe('faults 14/15: half-open connections through a TCP proxy', () => {
  let proxy: TcpProxy;

  /** A daemon (with the recorder and an HTTP port) whose every connection goes through a fresh proxy. */
  async function startDaemon(extra: Record<string, string> = {}) {
    proxy = await suite.proxy();
    const d = await suite.spawn({ plugins: ['recorder.js'], http: true, redisUrl: proxy.url(), env: extra });
    return { d, id: d.id, den: d.den, file: d.file, httpPort: d.httpPort };
  }

  async function readyz(port: number): Promise<{ status: number; body: string }> {
    return httpGet(port, '/readyz').catch(() => ({ status: 0, body: '' }));
  }

  /** Polls /readyz until `pred`; returns when it held (unix ms). */
  async function whenReadyz(port: number, pred: (status: number, body: string) => boolean, timeoutMs: number): Promise<number> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const r = await readyz(port);
      if (pred(r.status, r.body)) return Date.now();
      if (Date.now() > deadline) throw new Error(`/readyz did not change within ${timeoutMs} ms (last ${r.status} ${r.body})`);
      await sleep(POLL_MS);
    }
  }

  const only = (cs: ProxiedConnection[], what: string): ProxiedConnection => {
    expect(cs.length, `open ${what} connections through the proxy`).toBe(1);
    return cs[0] as ProxiedConnection;
  };

  it('subscriber blackholed: degraded within the probe bound, one line, recycled; ready within 2 s of healing', { timeout: 60_000 }, async () => {
    const s = await startDaemon();
    await s.d.waitForLog(hasMsg('agentd ready'), 15_000);
    expect((await readyz(s.httpPort)).status).toBe(200);
    const sub = only(proxy.open(`agentd:${s.id}:sub`), 'subscriber');
    const cmd = only(proxy.open(`agentd:${s.id}:cmd`), 'command');
    const pub = suite.redis.client();

    // The fault: the subscriber's connection forwards nothing any more (both ways, bytes lost);
    // new subscriber connections are held (accepted, nothing forwarded) until the path heals.
    const linesBefore = s.d.logs.length;
    proxy.setRule((c) => (c.id === sub.id ? { kind: 'blackhole' } : c.sent.includes(`agentd:${s.id}:sub`) ? { kind: 'pause' } : undefined));
    const faultAt = Date.now();
    const degraded = await s.d.waitForLog((l) => hasMsg('agentd degraded')(l) && s.d.logs.indexOf(l) >= linesBefore, SUB_NOTICE_BOUND_MS + 5_000);
    const noticedMs = Date.parse(String(degraded['time'])) - faultAt;
    expect(String(degraded['reason'])).toMatch(/probe/);
    expect(noticedMs, `noticed after ${noticedMs} ms (bound ${SUB_NOTICE_BOUND_MS} ms)`).toBeLessThanOrEqual(SUB_NOTICE_BOUND_MS);
    const r = await readyz(s.httpPort);
    expect(r.status).toBe(503);
    expect(r.body).toMatch(/probe|subscription/);
    await waitFor('the deaf subscriber connection recycled', () => sub.closed, 3_000);

    // Held for a while: still one line for it, no flood of retries; the command side untouched.
    await sleep(6_000);
    const during = s.d.logs.slice(linesBefore);
    expect(during.filter(hasMsg(/subscription probe/)).length, 'probe failure logged once').toBe(1);
    expect(during.filter((l) => l['level'] === 'warn' || l['level'] === 'error').length, `warn lines during the fault: ${JSON.stringify(during.map((l) => l['msg']))}`).toBeLessThanOrEqual(6);
    expect(cmd.closed, 'command connection untouched').toBe(false);
    expect((await readyz(s.httpPort)).status).toBe(503);
    expect(proxy.connections.filter((c) => c.sent.includes(`agentd:${s.id}:sub`)).length, 'subscriber reconnect attempts during the fault').toBeGreaterThan(1);

    // Heal.
    proxy.setRule(undefined);
    const healedAt = Date.now();
    const readyAt = await whenReadyz(s.httpPort, (st) => st === 200, HEAL_BOUND_MS + 5_000);
    expect(readyAt - healedAt, `ready ${readyAt - healedAt} ms after healing`).toBeLessThanOrEqual(HEAL_BOUND_MS + POLL_MS);
    console.log(`fault 14 (subscriber blackhole, probe ${PROBE_INTERVAL_S} s / ${PROBE_TIMEOUT_MS} ms): ${JSON.stringify({ noticedMs, boundMs: SUB_NOTICE_BOUND_MS, readyAfterHealMs: readyAt - healedAt, healBoundMs: HEAL_BOUND_MS })}`);
    await pub.publish(keys.channel('after_heal'), seedMessage('after_heal', { uid: 'h1' }));
    await waitFor('event after healing handled', () => readRecords(s.file).some((x) => x.event === 'after_heal'), 5_000);
    expectSound(s.d, s.file);
  });

  it('command connection loses its requests: recycled within min(probeInterval, interval) + commandTimeoutMs; ready after healing', { timeout: 60_000 }, async () => {
    const s = await startDaemon();
    await s.d.waitForLog(hasMsg('agentd ready'), 15_000);
    const cmd = only(proxy.open(`agentd:${s.id}:cmd`), 'command');
    const sub = only(proxy.open(`agentd:${s.id}:sub`), 'subscriber');
    const c = suite.redis.client();

    proxy.setRule((x) => (x.id === cmd.id ? { kind: 'blackhole', direction: 'up' } : x.sent.includes(`agentd:${s.id}:cmd`) ? { kind: 'pause' } : undefined));
    const faultAt = Date.now();
    await waitFor('the half-open command connection recycled', () => cmd.closed, 10_000, 10);
    const recycledMs = (cmd.closedAt ?? 0) - faultAt;
    const bound = Math.min(PROBE_INTERVAL_S, INTERVAL_S) * 1000 + COMMAND_TIMEOUT_MS;
    // The next command (a probe PUBLISH or a beat) is sent within min(probeInterval, interval); the
    // socket timeout fires commandTimeoutMs later. Allowance: the close reaching the proxy.
    expect(recycledMs, `recycled after ${recycledMs} ms (bound ${bound} ms + ${CLOSE_SEEN_MS} ms)`).toBeLessThanOrEqual(bound + CLOSE_SEEN_MS);
    await whenReadyz(s.httpPort, (st) => st === 503, 5_000);
    expect(sub.closed, 'subscriber connection untouched').toBe(false);
    await sleep(3_000);

    proxy.setRule(undefined);
    const healedAt = Date.now();
    const readyAt = await whenReadyz(s.httpPort, (st) => st === 200, 10_000);
    console.log(`fault 15 (command blackhole, commandTimeoutMs ${COMMAND_TIMEOUT_MS}): ${JSON.stringify({ recycledMs, boundMs: bound, readyAfterHealMs: readyAt - healedAt })}`);
    const beat = Number(await c.get(keys.heartbeat(s.id)));
    await waitFor('a beat written after healing', async () => Number(await c.get(keys.heartbeat(s.id))) >= healedAt, 5_000);
    expect(beat).toBeGreaterThan(0);
    expectSound(s.d, s.file);
  });

  it('a path that accepts TCP and never answers: each attempt ends at connectTimeoutMs and is retried; ready once it answers', { timeout: 60_000 }, async () => {
    const s = await startDaemon();
    proxy.setMode({ kind: 'pause' });
    // Everything through the proxy is held from the first byte.
    await sleep(4 * (CONNECT_TIMEOUT_MS + RECONNECT_MAX_MS));
    const attempts = proxy.connections.length;
    // Two connections (command, subscriber), each retried after every deadline: far more than 2.
    expect(attempts, 'connection attempts while the path hangs').toBeGreaterThanOrEqual(6);
    const longest = Math.max(...proxy.connections.filter((c) => c.closed).map((c) => (c.closedAt ?? 0) - c.openedAt));
    expect(longest, 'no attempt outlives the connect deadline by much').toBeLessThanOrEqual(CONNECT_TIMEOUT_MS + 2 * COMMAND_TIMEOUT_MS);
    const errors = s.d.logs.filter(hasMsg('redis connection error'));
    expect(errors.some((l) => /connect deadline|Socket timeout/.test(String(l['err']))), 'the deadline is named').toBe(true);
    // One line per distinct error and connection, not one per attempt.
    expect(errors.length, JSON.stringify(errors.map((l) => [l['conn'], l['err']]))).toBeLessThanOrEqual(4);
    // Ready means answered: nothing on this path ever answered.
    expect(s.d.logs.filter(hasMsg(/redis connection ready/)), 'no "ready" while nothing answers').toEqual([]);

    proxy.setMode({ kind: 'pass' });
    await s.d.waitForLog(hasMsg('agentd ready'), 10_000);
    expectSound(s.d, s.file);
  });

  it('latency below the bounds (100 ms each way) is not a fault: ready throughout, nothing recycled', { timeout: 30_000 }, async () => {
    const s = await startDaemon();
    await s.d.waitForLog(hasMsg('agentd ready'), 15_000);
    const before = proxy.open().map((c) => c.id);
    const linesBefore = s.d.logs.length;
    proxy.setMode({ kind: 'latency', ms: 100 });
    // Several probe periods and beats.
    const until = Date.now() + 5 * PROBE_INTERVAL_S * 1000;
    while (Date.now() < until) {
      expect((await readyz(s.httpPort)).status).toBe(200);
      await sleep(200);
    }
    expect(s.d.logs.slice(linesBefore).filter((l) => l['level'] === 'warn' || l['level'] === 'error')).toEqual([]);
    expect(proxy.open().map((c) => c.id)).toEqual(before);
    expectSound(s.d, s.file);
  });

  it('connections reset (RST) by the path: reconnects and is ready again', { timeout: 30_000 }, async () => {
    const s = await startDaemon();
    await s.d.waitForLog(hasMsg('agentd ready'), 15_000);
    const linesBefore = s.d.logs.length;
    for (const c of proxy.open()) c.drop();
    await s.d.waitForLog((l) => hasMsg('agentd degraded')(l) && s.d.logs.indexOf(l) >= linesBefore, 5_000);
    await s.d.waitForLog((l) => hasMsg('agentd ready again')(l) && s.d.logs.indexOf(l) >= linesBefore, 10_000);
    expect((await readyz(s.httpPort)).status).toBe(200);
    expectSound(s.d, s.file);
  });

  it('TCP keepalive is on for both connections, first probe within KEEPALIVE_MS of idle', { timeout: 30_000 }, async (ctx) => {
    let ssOut: string;
    try {
      ssOut = execFileSync('ss', ['-V'], { stdio: 'pipe' }).toString();
    } catch {
      ctx.skip();
      return;
    }
    expect(ssOut).toMatch(/ss/);
    const s = await startDaemon();
    await s.d.waitForLog(hasMsg('agentd ready'), 15_000);
    // The daemon's sockets are the ones whose peer is the proxy's port.
    // A socket with bytes in flight shows its retransmit timer instead: ask until both are idle.
    const lines = await waitFor('both sockets idle with a keepalive timer', () => {
      const out = execFileSync('ss', ['-tnoH', 'state', 'established', `( dport = :${proxy.port} )`]).toString().trim().split('\n');
      return out.length === 2 && out.every((l) => l.includes('timer:(keepalive')) ? out : undefined;
    }, 5_000, 20);
    for (const line of lines) {
      const m = /timer:\(keepalive,([\d.]+)(ms|sec|min)?/.exec(line);
      expect(m, `keepalive timer on: ${line}`).not.toBeNull();
      // ss prints e.g. "8.212ms" for 8.2 s (its own format): the number before the dot is seconds.
      const seconds = Number((m?.[1] ?? '').split('.')[0]);
      expect(seconds).toBeLessThanOrEqual(KEEPALIVE_MS / 1000);
    }
  });

  it('TLS handshake that never finishes is cut at connectTimeoutMs and retried', { timeout: 30_000 }, async () => {
    proxy = await suite.proxy();
    proxy.setMode({ kind: 'pause' });
    const d = await suite.spawn({ redisUrl: `rediss://127.0.0.1:${proxy.port}` });
    await sleep(4 * (CONNECT_TIMEOUT_MS + RECONNECT_MAX_MS));
    expect(proxy.connections.length, 'TLS attempts while the handshake hangs').toBeGreaterThanOrEqual(6);
    const err = d.logs.find(hasMsg('redis connection error'));
    expect(String(err?.['err'])).toMatch(/ETIMEDOUT|deadline/);
  });
});
