/**
 * Faults 14/15 at kernel level: redis-server runs in its own network
 * namespace behind a veth pair, and iptables DROP rules inside that namespace
 * make packets vanish (no RST, no FIN: what a dead NAT mapping or a broken
 * path does). Needs root (CAP_NET_ADMIN) and iptables; without them the suite
 * is skipped (reported as skipped, not passed). `tc netem` would do as well
 * but needs the sch_netem module, which this machine lacks.
 *
 * - The subscriber's flow only (matched by its source port, both ways): the
 *   probe notices within probeInterval + 2 × probeTimeoutMs, the connection is
 *   recycled; the new connection has a new port, so it works at once, as it
 *   would after a NAT lost its mapping.
 * - Every packet to and from Redis: degraded within
 *   min(probeInterval, interval) + commandTimeoutMs (the command connection's
 *   socket timeout); attempts die at connectTimeoutMs; after the rules go,
 *   ready within connectTimeoutMs + reconnectMaxDelayMs + 2 s.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomInt } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { freePort } from '../helpers/ports.ts';
import { trackChild } from '../helpers/reaper.ts';
import { expectSound, HALF_OPEN, halfOpenEnv, httpGet, processSuite } from '../helpers/process.ts';
import { hasMsg, keys, waitFor } from '../helpers/util.ts';

const tag = `${process.pid % 10_000}${randomInt(100, 999)}`;
const NS = `agentd-t${tag}`;
const VETH_HOST = `vah${tag}`;
const VETH_NS = `van${tag}`;
const OCTET = randomInt(1, 250);
const HOST_IP = `10.231.${OCTET}.1`;
const NS_IP = `10.231.${OCTET}.2`;

function sh(cmd: string, ...args: string[]): string {
  return execFileSync(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], timeout: 10_000 }).toString();
}
const inNs = (...args: string[]): string => sh('ip', 'netns', 'exec', NS, ...args);

/** Whether this machine lets us make a namespace and DROP packets in it. */
function netnsAvailable(): boolean {
  const probe = `agentd-p${tag}`;
  try {
    sh('ip', 'netns', 'add', probe);
    try {
      sh('ip', 'netns', 'exec', probe, 'iptables', '-L', 'INPUT', '-n');
      return true;
    } finally {
      sh('ip', 'netns', 'del', probe);
    }
  } catch {
    return false;
  }
}

const available = netnsAvailable();

/** The Redis runs in the namespace: the suite gives only the daemons and a temp folder. */
const suite = processSuite({ redis: false, env: halfOpenEnv() });

describe.skipIf(!available)('faults 14/15 at kernel level: iptables DROP in a network namespace', () => {
  let redisProc: ChildProcess | undefined;
  let port = 0;
  let admin: Redis;
  const rules: string[][] = [];

  const drop = (...rule: string[]): void => {
    inNs('iptables', '-I', ...rule, '-j', 'DROP');
    rules.push(rule);
  };
  const clearRules = (): void => {
    for (const rule of rules.splice(0)) {
      try {
        inNs('iptables', '-D', ...rule, '-j', 'DROP');
      } catch {
        // already gone
      }
    }
  };

  beforeAll(async () => {
    const tmp = suite.tmp;
    sh('ip', 'netns', 'add', NS);
    sh('ip', 'link', 'add', VETH_HOST, 'type', 'veth', 'peer', 'name', VETH_NS);
    sh('ip', 'link', 'set', VETH_NS, 'netns', NS);
    sh('ip', 'addr', 'add', `${HOST_IP}/30`, 'dev', VETH_HOST);
    sh('ip', 'link', 'set', VETH_HOST, 'up');
    inNs('ip', 'addr', 'add', `${NS_IP}/30`, 'dev', VETH_NS);
    inNs('ip', 'link', 'set', VETH_NS, 'up');
    inNs('ip', 'link', 'set', 'lo', 'up');
    port = await freePort();
    redisProc = spawn('ip', ['netns', 'exec', NS, 'redis-server', '--bind', NS_IP, '--port', String(port), '--save', '', '--appendonly', 'no', '--dir', tmp, '--protected-mode', 'no'], {
      stdio: 'ignore',
    });
    trackChild(redisProc);
    admin = new Redis({ host: NS_IP, port, lazyConnect: true, maxRetriesPerRequest: 1 });
    admin.on('error', () => undefined);
    await waitFor('redis in the namespace answers', async () => {
      if (admin.status === 'wait') await admin.connect();
      return (await admin.ping()) === 'PONG';
    }, 10_000, 100);
  });

  afterEach(async () => {
    clearRules();
  });

  afterAll(async () => {
    clearRules();
    admin?.disconnect();
    redisProc?.kill('SIGKILL');
    for (const args of [
      ['link', 'del', VETH_HOST],
      ['netns', 'del', NS],
    ]) {
      try {
        sh('ip', ...args);
      } catch {
        // not made
      }
    }
  });

  async function start() {
    const d = await suite.spawn({
      redisUrl: `redis://${NS_IP}:${port}/0`,
      http: true,
      // A test namespace address, not loopback: plain redis:// must be allowed explicitly (redis.tls.required).
      env: { AGENTD_REDIS_TLS_REQUIRED: 'false' },
    });
    const { id, httpPort } = d;
    await d.waitForLog(hasMsg('agentd ready'), 15_000);
    return { d, id, httpPort };
  }

  /**
   * The daemon's local port of one of its connections, from CLIENT LIST: the newest one, since
   * the server still lists a connection whose packets were dropped (no FIN reached it).
   */
  async function localPort(id: string, role: 'cmd' | 'sub'): Promise<string> {
    const line = String(await admin.call('CLIENT', 'LIST'))
      .split('\n')
      .filter((l) => l.includes(`name=agentd:${id}:${role}`))
      .at(-1);
    const p = /addr=[^ ]*:(\d+)/.exec(line ?? '')?.[1];
    if (p === undefined) throw new Error(`no ${role} connection of ${id} in CLIENT LIST`);
    return p;
  }

  it('the subscriber flow dropped both ways: noticed within the probe bound, recycled, ready on a new port', { timeout: 60_000 }, async () => {
    const s = await start();
    const subPort = await localPort(s.id, 'sub');
    const cmdPort = await localPort(s.id, 'cmd');
    const linesBefore = s.d.logs.length;
    drop('INPUT', '-p', 'tcp', '--dport', String(port), '--sport', subPort);
    drop('OUTPUT', '-p', 'tcp', '--sport', String(port), '--dport', subPort);
    const at = Date.now();
    const degraded = await s.d.waitForLog((l) => hasMsg('agentd degraded')(l) && s.d.logs.indexOf(l) >= linesBefore, 15_000);
    const noticedMs = Date.parse(String(degraded['time'])) - at;
    const bound = HALF_OPEN.probeIntervalS * 1000 + 2 * HALF_OPEN.probeTimeoutMs;
    expect(String(degraded['reason'])).toMatch(/probe/);
    expect(noticedMs, `noticed after ${noticedMs} ms (bound ${bound} ms)`).toBeLessThanOrEqual(bound);
    await waitFor('ready again on a new subscriber connection', async () => (await httpGet(s.httpPort, '/readyz')).status === 200, 10_000);
    expect(await localPort(s.id, 'sub')).not.toBe(subPort);
    expect(await localPort(s.id, 'cmd'), 'command connection untouched').toBe(cmdPort);
    expect(s.d.logs.slice(linesBefore).filter(hasMsg(/subscription probe/)).length).toBe(1);
    console.log(`netns: subscriber flow dropped: ${JSON.stringify({ noticedMs, boundMs: bound })}`);
    expectSound(s.d, undefined);
  });

  it('every packet to Redis dropped: degraded within the bound, attempts bounded; ready soon after the rules go', { timeout: 60_000 }, async () => {
    const s = await start();
    const linesBefore = s.d.logs.length;
    drop('INPUT', '-p', 'tcp', '--dport', String(port));
    const at = Date.now();
    const degraded = await s.d.waitForLog((l) => hasMsg('agentd degraded')(l) && s.d.logs.indexOf(l) >= linesBefore, 15_000);
    const noticedMs = Date.parse(String(degraded['time'])) - at;
    const bound = Math.min(HALF_OPEN.probeIntervalS, HALF_OPEN.intervalS) * 1000 + HALF_OPEN.commandTimeoutMs;
    expect(noticedMs, `noticed after ${noticedMs} ms (bound ${bound} ms)`).toBeLessThanOrEqual(bound);
    await s.d.waitForLog((l) => hasMsg('redis connection lost')(l) && l['conn'] === 'command', 5_000);
    await sleep(5_000);
    expect((await httpGet(s.httpPort, '/readyz')).status).toBe(503);
    const during = s.d.logs.slice(linesBefore);
    expect(during.filter((l) => l['level'] === 'warn' || l['level'] === 'error').length, JSON.stringify(during.map((l) => l['msg']))).toBeLessThanOrEqual(12);

    clearRules();
    const healedAt = Date.now();
    await waitFor('/readyz 200 after the rules went', async () => (await httpGet(s.httpPort, '/readyz')).status === 200, 15_000, 20);
    const healMs = Date.now() - healedAt;
    const healBound = HALF_OPEN.connectTimeoutMs + HALF_OPEN.reconnectMaxMs + 2_000;
    expect(healMs, `ready ${healMs} ms after healing (bound ${healBound} ms)`).toBeLessThanOrEqual(healBound);
    console.log(`netns: all packets dropped: ${JSON.stringify({ noticedMs, boundMs: bound, readyAfterHealMs: healMs, healBoundMs: healBound })}`);
    expect(Number(await admin.get(keys.heartbeat(s.id)))).toBeGreaterThanOrEqual(healedAt - 1_000);
    expectSound(s.d, undefined);
  });
});
