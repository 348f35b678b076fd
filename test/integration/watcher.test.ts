import { describe, expect, it } from 'vitest';
import type { AgentDown } from '../../src/presence/watcher.ts';
import { reapAgent } from '../../src/redis/scripts.ts';
import { makeDaemon, redisSuite, type TestDaemon } from '../helpers/inproc.ts';
import { collect, type Collected, uniqueId, waitFor } from '../helpers/util.ts';

const suite = redisSuite({ requireControl: true });
const started = (t: TestDaemon) => suite.start(t);

/** Writes what a dead agent leaves behind: den membership and a registry record, heartbeat gone or about to go. */
async function ghost(den: string, opts: { heartbeatPx?: number; record?: boolean } = {}): Promise<string> {
  const id = uniqueId('ghost');
  if (opts.heartbeatPx) await suite.cmd.set(`agent:${id}:heartbeat`, String(Date.now()), 'PX', opts.heartbeatPx);
  await suite.cmd.sadd(`den:${den}:online_agents`, id);
  if (opts.record !== false) {
    await suite.cmd.hset('global:agent_registry', id, JSON.stringify({ id, den, host: 'ghost-host', pid: 1, version: 'x', startedAt: 1, status: 'online', lastSeen: 1234, extra: { kept: true } }));
  }
  return id;
}

const downs = async () => (await collect(suite.redis.client(), 'agent:events:agent_down')) as Array<Collected & { json: { data: AgentDown } & Record<string, unknown> }>;

describe('reap script', () => {
  it('lets exactly one of 50 concurrent callers reap, publish, and mark the record down', async () => {
    const den = uniqueId('den');
    const id = await ghost(den);
    const seen = await downs();
    const clients = Array.from({ length: 50 }, () => suite.redis.client());
    const outcomes = await Promise.all(
      clients.map((c, i) => reapAgent(c, { id, den, now: 5000 + i, watcher: { id: `w${i}`, den }, via: 'sweep' })),
    );
    expect(outcomes.filter((o) => o.reaped)).toHaveLength(1);
    expect(outcomes.filter((o) => !o.reaped && o.reason === 'absent')).toHaveLength(49);
    await waitFor('agent_down', () => seen.length === 1);
    await new Promise((r) => setTimeout(r, 200));
    expect(seen).toHaveLength(1);
    expect(seen[0]!.json).toMatchObject({ event: 'agent_down', data: { agent: id, den, host: 'ghost-host', lastSeen: 1234, via: 'sweep' } });
    const record = JSON.parse((await suite.cmd.hget('global:agent_registry', id))!) as Record<string, unknown>;
    expect(record).toMatchObject({ id, den, host: 'ghost-host', status: 'down', extra: { kept: true } });
    expect(record['downAt']).toBeGreaterThanOrEqual(5000);
    expect(await suite.cmd.sismember(`den:${den}:online_agents`, id)).toBe(0);
  });

  it('does nothing to an agent whose heartbeat is back, or that already left', async () => {
    const den = uniqueId('den');
    const alive = await ghost(den, { heartbeatPx: 60_000 });
    expect(await reapAgent(suite.cmd, { id: alive, den, now: 1, watcher: { id: 'w', den }, via: 'sweep' })).toEqual({ reaped: false, reason: 'alive' });
    expect(await suite.cmd.sismember(`den:${den}:online_agents`, alive)).toBe(1);
    expect(await reapAgent(suite.cmd, { id: uniqueId('never'), den, now: 1, watcher: { id: 'w', den }, via: 'sweep' })).toEqual({ reaped: false, reason: 'absent' });
  });
});

describe('reap script: the second signal (registry lastSeen)', () => {
  const put = async (den: string, record: Record<string, unknown>): Promise<string> => {
    const id = uniqueId('deleted');
    await suite.cmd.sadd(`den:${den}:online_agents`, id);
    await suite.cmd.hset('global:agent_registry', id, JSON.stringify({ id, den, ...record }));
    return id;
  };

  it('a heartbeat key that is gone while lastSeen is younger than the TTL is not a death', async () => {
    const den = uniqueId('den');
    const id = await put(den, { lastSeen: 10_000 });
    const r = { id, den, watcher: { id: 'w', den }, via: 'sweep' as const, minAgeMs: 2_000 };
    expect(await reapAgent(suite.cmd, { ...r, now: 11_999 })).toEqual({ reaped: false, reason: 'fresh' });
    expect(await suite.cmd.sismember(`den:${den}:online_agents`, id)).toBe(1);
    expect(await reapAgent(suite.cmd, { ...r, now: 12_000 })).toMatchObject({ reaped: true, record: 'marked' });
  });

  it('uses the record\'s own heartbeatTtl when it is shorter than the watcher\'s, never when longer', async () => {
    const den = uniqueId('den');
    const short = await put(den, { lastSeen: 10_000, heartbeatTtl: 1 });
    const long = await put(den, { lastSeen: 10_000, heartbeatTtl: 3_600 });
    const r = { den, watcher: { id: 'w', den }, via: 'sweep' as const, minAgeMs: 2_000, now: 11_500 };
    expect(await reapAgent(suite.cmd, { ...r, id: short })).toMatchObject({ reaped: true });
    expect(await reapAgent(suite.cmd, { ...r, id: long })).toEqual({ reaped: false, reason: 'fresh' });
    expect(await reapAgent(suite.cmd, { ...r, id: long, now: 12_000 })).toMatchObject({ reaped: true });
  });
});

describe('peer watcher', () => {
  it('ten watchers in one den report one death once', async () => {
    const den = uniqueId('den');
    const seen = await downs();
    const watchers = await Promise.all(
      Array.from({ length: 10 }, () => started(makeDaemon(suite.redis.url, { agent: { den }, heartbeat: { ttl: 2, interval: 0.5 }, watch: { sweepInterval: 0.1, notifications: 'off' } }))),
    );
    const id = await ghost(den);
    await waitFor('agent_down', () => seen.length >= 1, 3_000);
    await new Promise((r) => setTimeout(r, 500)); // several more sweeps by every watcher
    expect(seen.map((s) => s.json.data.agent)).toEqual([id]);
    const reapers = watchers.filter((w) => w.daemon.stats().reaped === 1);
    expect(reapers).toHaveLength(1);
    expect(seen[0]!.json.data.detectedBy).toBe(reapers[0]!.config.agent.id);
    // The live watchers themselves are all still members.
    expect((await suite.cmd.smembers(`den:${den}:online_agents`)).sort()).toEqual(watchers.map((w) => w.config.agent.id).sort());
  });

  it('uses expiry notifications when they are on: detection well before the next sweep', async () => {
    await suite.cmd.config('SET', 'notify-keyspace-events', '');
    const den = uniqueId('den');
    const seen = await downs();
    const w = await started(makeDaemon(suite.redis.url, { agent: { den }, watch: { sweepInterval: 30, notifications: 'enable' } }));
    const flags = ((await suite.cmd.config('GET', 'notify-keyspace-events')) as string[])[1] ?? '';
    // Keyspace notifications (K), which name the key in the channel: only heartbeat keys' reach the daemon.
    expect(flags).toContain('K');
    expect(flags).toContain('x');
    const id = await ghost(den, { heartbeatPx: 300 });
    const t0 = Date.now();
    await waitFor('agent_down via expiry', () => seen.length === 1, 3_000);
    expect(Date.now() - t0).toBeLessThan(2_000);
    expect(seen[0]!.json.data).toEqual({ agent: id, den, host: 'ghost-host', lastSeen: 1234, detectedBy: w.config.agent.id, via: 'expiry' });
    await suite.cmd.config('SET', 'notify-keyspace-events', '');
  });

  it('falls back to the sweep when notifications are off, and reaps agents with no registry record', async () => {
    await suite.cmd.config('SET', 'notify-keyspace-events', '');
    const den = uniqueId('den');
    const seen = await downs();
    const w = await started(makeDaemon(suite.redis.url, { agent: { den }, heartbeat: { ttl: 2, interval: 0.5 }, watch: { sweepInterval: 0.2, notifications: 'listen' } }));
    const id = await ghost(den, { heartbeatPx: 200, record: false });
    const t0 = Date.now();
    // No record, so no lastSeen: the watcher must itself see the key missing for a TTL first.
    await waitFor('agent_down via sweep', () => seen.length === 1, 2_000 + 2 * 200 + 2_000);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(2_000);
    expect(seen[0]!.json.data).toEqual({ agent: id, den, host: null, lastSeen: null, detectedBy: w.config.agent.id, via: 'sweep' });
  });

  it('never reports a graceful stop as a death', async () => {
    const den = uniqueId('den');
    const seen = await downs();
    const fast = { agent: { den }, heartbeat: { ttl: 1, interval: 0.2 }, watch: { sweepInterval: 0.1 } } as const;
    await started(makeDaemon(suite.redis.url, fast));
    const leaving = makeDaemon(suite.redis.url, fast);
    await leaving.daemon.start();
    await leaving.daemon.close();
    await new Promise((r) => setTimeout(r, 1_500)); // past the TTL, many sweeps
    expect(seen).toEqual([]);
  });

  it('watches only its own den by default, every den with "*"', async () => {
    const mine = uniqueId('den');
    const other = uniqueId('den');
    const seen = await downs();
    await started(makeDaemon(suite.redis.url, { agent: { den: mine }, watch: { sweepInterval: 0.1, notifications: 'off' } }));
    const id = await ghost(other);
    await new Promise((r) => setTimeout(r, 400));
    expect(seen).toEqual([]);
    await started(makeDaemon(suite.redis.url, { agent: { den: mine }, watch: { sweepInterval: 0.1, notifications: 'off', dens: ['*'] } }));
    await waitFor('agent_down from the all-dens watcher', () => seen.length === 1, 3_000);
    expect(seen[0]!.json.data).toMatchObject({ agent: id, den: other });
  });

  it('does not watch at all when turned off', async () => {
    const den = uniqueId('den');
    const seen = await downs();
    const t = await started(makeDaemon(suite.redis.url, { agent: { den }, watch: { enabled: false, sweepInterval: 0.1 } }));
    await ghost(den);
    await new Promise((r) => setTimeout(r, 400));
    expect(seen).toEqual([]);
    expect(t.daemon.stats().reaped).toBe(0);
  });
});
