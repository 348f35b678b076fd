/**
 * Attacks on the fleet-scale promises (issue 11, docs/peer-health.md) with real
 * processes: an operator who leaves a sweeper lease without an expiry, and a
 * reconnect storm (CLIENT KILL every second). Neither may stop a death from
 * being reported, and neither may report one twice or bury a live agent.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { peerHealthEnv, processSuite, type Agent } from '../helpers/process.ts';
import { startSentinelTopology, type SentinelTopology } from '../helpers/sentinel.ts';
import { hasMsg, keys, uniqueId, waitFor } from '../helpers/util.ts';

const TTL = 3;
const INTERVAL = 0.5;
const SWEEP = 0.5;
const LEASE_MS = 3 * SWEEP * 1000;
/** Sweep-only bound with a dead sweeper: max(ttl, lease) + sweepInterval (+10 % jitter twice), plus 1 s for process noise. */
const BOUND_MS = Math.max(TTL * 1000, LEASE_MS) + 1.2 * SWEEP * 1000 + 1000;

const suite = processSuite({ redis: { requireControl: true }, env: peerHealthEnv({ ttl: TTL, interval: INTERVAL, sweep: SWEEP, notifications: 'off' }) });

describe('attacks on the sweeper lease and the reap grace (daemons as child processes)', () => {
  let c: Redis;
  let observer: Redis;
  const downs: Array<{ agent: string; at: number }> = [];

  beforeAll(async () => {
    c = suite.redis.client({ connectionName: 'attack-cmd' });
    await c.config('SET', 'notify-keyspace-events', '');
    observer = suite.redis.client({ connectionName: 'attack-observer' });
    observer.on('message', (_channel: string, message: string) => {
      const env = JSON.parse(message) as { data: { agent: string } };
      downs.push({ agent: env.data.agent, at: Date.now() });
    });
    await observer.subscribe(keys.channel('agent_down'));
  });

  async function startGroup(n: number, env: Record<string, string> = {}, den = uniqueId('den')): Promise<{ den: string; agents: Agent[] }> {
    const { agents } = await suite.group(n, { den, env });
    return { den, agents };
  }

  const downsOf = (id: string) => downs.filter((d) => d.agent === id);

  it.each([
    ['without an expiry', [] as string[]],
    ['for a day', ['PX', '86400000']],
  ])('a lease key an operator left %s, naming no live member, does not stop the den from being swept', async (_what, expiry) => {
    const { den, agents } = await startGroup(3);
    await waitFor('a sweeper lease', () => c.get(`den:${den}:sweeper`), 5_000);
    // A careless operator (or a restore of a dump) leaves a lease whose holder never renews it and never lets it lapse.
    await c.call('SET', `den:${den}:sweeper`, 'operator 0000', ...expiry);
    const victim = agents[0]!;
    const faultAt = Date.now();
    victim.signal('SIGKILL');
    const down = await waitFor(`agent_down of ${victim.id}`, () => downsOf(victim.id)[0], BOUND_MS + 5_000, 10);
    expect(down.at - faultAt).toBeLessThan(BOUND_MS);
    await sleep(2_000);
    expect(downsOf(victim.id)).toHaveLength(1);
    for (const a of agents.slice(1)) expect(downsOf(a.id)).toEqual([]);
  });

  it('the lease holder cut off (packets dropped) while it believes it holds: another member takes over; each death once', async () => {
    const proxy = await suite.proxy();
    try {
      const { den, agents: [holder] } = await startGroup(1, { AGENTD_REDIS_URL: proxy.url() });
      await waitFor('the proxied member holds the lease', async () => (await c.get(`den:${den}:sweeper`))?.startsWith(`${holder!.id} `), 5_000);
      const { agents: [victim, survivor] } = await startGroup(2, {}, den);
      // Packets dropped and retransmitted once healed (a blackhole whose bytes are discarded for good desyncs
      // the RESP stream if healed before commandTimeoutMs recycles the connection: not a TCP path).
      proxy.setMode({ kind: 'pause' });
      const faultAt = Date.now();
      victim!.signal('SIGKILL');
      const down = await waitFor(`agent_down of ${victim!.id}`, () => downsOf(victim!.id)[0], BOUND_MS + 5_000, 10);
      expect(down.at - faultAt).toBeLessThan(BOUND_MS);
      expect((await c.get(`den:${den}:sweeper`))?.startsWith(`${survivor!.id} `)).toBe(true);
      // Healed: the old holder finds the lease is another's; nothing is reported twice, the survivor never.
      proxy.setMode({ kind: 'pass' });
      await holder!.waitForLog(hasMsg('heartbeat restored'), 30_000);
      await sleep(3 * LEASE_MS);
      expect(downsOf(victim!.id)).toHaveLength(1);
      expect(downsOf(holder!.id).length).toBeLessThanOrEqual(1);
      expect(downsOf(survivor!.id)).toEqual([]);
      expect((await c.get(`den:${den}:sweeper`))?.startsWith(`${survivor!.id} `)).toBe(true);
    } finally {
      await proxy.close();
    }
  });

  it('a middlebox that discarded bytes for a moment (shorter than commandTimeoutMs): the daemon beats again, not out of step for ever', async () => {
    const proxy = await suite.proxy();
    try {
      const { agents: [a] } = await startGroup(1, { AGENTD_REDIS_URL: proxy.url(), AGENTD_REDIS_COMMAND_TIMEOUT_MS: '2000' });
      proxy.setMode({ kind: 'blackhole' });
      await a!.waitForLog(hasMsg('heartbeat failed'), 5_000);
      await sleep(500);
      // Healed before the commandTimeoutMs of no byte back: the requests lost in between are never answered.
      proxy.setMode({ kind: 'pass' });
      await a!.waitForLog(hasMsg('heartbeat restored'), 2_000 + 2 * 1_000 + 3_000);
    } finally {
      await proxy.close();
    }
  });

  it('a reconnect storm (CLIENT KILL every second) delays deaths by a bounded time, never forever', async () => {
    const { agents } = await startGroup(3);
    let storming = true;
    const storm = (async () => {
      while (storming) {
        await c.call('CLIENT', 'KILL', 'TYPE', 'normal', 'SKIPME', 'yes').catch(() => undefined);
        await sleep(1_000);
      }
    })();
    try {
      await sleep(2_000);
      const victim = agents[0]!;
      victim.signal('SIGKILL');
      const faultAt = Date.now();
      const down = await waitFor(`agent_down of ${victim.id} during the storm`, () => downsOf(victim.id)[0], 20_000, 20);
      // The grace of a storm lasts at most max(ttl, interval + reconnectMaxDelayMs) from its first reconnect (2 s before the kill).
      expect(down.at - faultAt, `reported ${down.at - faultAt} ms after the kill`).toBeLessThan(BOUND_MS + Math.max(TTL * 1000, INTERVAL * 1000 + 1_000));
      await sleep(2_000);
      expect(downsOf(victim.id)).toHaveLength(1);
      for (const a of agents.slice(1)) expect(downsOf(a.id)).toEqual([]);
    } finally {
      storming = false;
      await storm;
    }
  });
});

describe('a wrong Sentinel master name (real Sentinels)', () => {
  let topo: SentinelTopology;
  beforeAll(async () => {
    topo = await startSentinelTopology({ downAfterMs: 1000, failoverTimeoutMs: 3000 });
  }, 60_000);
  afterAll(async () => {
    await topo?.stop();
  });

  it('says once per connection which name no Sentinel knows, and names the Sentinels as the target', async () => {
    const d = await suite.spawn({
      env: { AGENTD_REDIS_SENTINELS: topo.sentinels.join(','), AGENTD_REDIS_SENTINEL_NAME: 'no-such-master', AGENTD_LOG_LEVEL: 'info' },
    });
    try {
      await d.waitForLog(hasMsg('redis connection error'), 10_000);
      // Several retries (1 s apart at most) happen meanwhile; each connection says it once.
      await sleep(4_000);
      const errors = d.logs.filter(hasMsg('redis connection error'));
      expect(errors.map((l) => l.conn).sort()).toEqual(['command', 'subscriber']);
      for (const l of errors) expect(String(l.err)).toContain('"no-such-master"');
      const target = d.logs.find(hasMsg('redis target'));
      expect(target?.sentinels).toEqual([...topo.sentinels]);
      expect(target?.sentinelName).toBe('no-such-master');
    } finally {
      await d.stop();
    }
  }, 30_000);
});
