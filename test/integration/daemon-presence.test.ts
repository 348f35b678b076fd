import { hostname } from 'node:os';
import { describe, expect, it } from 'vitest';
import type { MembershipChange } from '../../src/presence/presence.ts';
import { definePlugin } from '../../src/plugins/types.ts';
import { AgentdError } from '../../src/errors.ts';
import { freePort } from '../helpers/ports.ts';
import { makeDaemon, redisSuite, type TestDaemon } from '../helpers/inproc.ts';
import { collect, dataOf, gate, PACKAGE_VERSION, waitFor } from '../helpers/util.ts';

const suite = redisSuite();
const started = (t: TestDaemon) => suite.start(t);

const FAST = { heartbeat: { ttl: 2, interval: 0.3 } } as const;

describe('presence', () => {
  it('writes heartbeat, den membership and registry record at start, and refreshes them', async () => {
    const t0 = Date.now();
    const t = await started(makeDaemon(suite.redis.url, FAST));
    const { id, den } = t.config.agent;
    expect(await suite.cmd.smembers(`den:${den}:online_agents`)).toEqual([id]);
    const ttl = await suite.cmd.pttl(`agent:${id}:heartbeat`);
    expect(ttl).toBeGreaterThan(0);
    expect(ttl).toBeLessThanOrEqual(2_000);
    const first = Number(await suite.cmd.get(`agent:${id}:heartbeat`));
    expect(first).toBeGreaterThanOrEqual(t0);
    expect(first).toBeLessThanOrEqual(Date.now());
    const record = JSON.parse((await suite.cmd.hget('global:agent_registry', id)) ?? '{}') as Record<string, unknown>;
    expect(record).toMatchObject({ id, den, host: hostname(), pid: process.pid, status: 'online' });
    expect(record['version']).toBe(PACKAGE_VERSION);
    expect(record['startedAt']).toBeGreaterThanOrEqual(t0);

    // Across several beats the value moves forward and the TTL never runs low.
    let minTtl = Infinity;
    const end = Date.now() + 1_500;
    while (Date.now() < end) {
      minTtl = Math.min(minTtl, await suite.cmd.pttl(`agent:${id}:heartbeat`));
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(minTtl).toBeGreaterThan(1_000);
    expect(Number(await suite.cmd.get(`agent:${id}:heartbeat`))).toBeGreaterThan(first);
    const later = JSON.parse((await suite.cmd.hget('global:agent_registry', id)) ?? '{}') as { lastSeen: number };
    expect(later.lastSeen).toBeGreaterThan(first);
  });

  it('publishes agent_online at start with the contract fields', async () => {
    const watcher = suite.redis.client();
    const got = await collect(watcher, 'agent:events:agent_online');
    const t = await started(makeDaemon(suite.redis.url, FAST));
    await waitFor('agent_online', () => got.some((g) => dataOf(g)['agent'] === t.config.agent.id));
    const msg = got.find((g) => dataOf(g)['agent'] === t.config.agent.id)!.json!;
    expect(msg).toMatchObject({
      event: 'agent_online',
      data: { agent: t.config.agent.id, den: t.config.agent.den, host: hostname() },
      source: t.config.agent.id,
      den: t.config.agent.den,
    });
    expect(msg['data']).not.toHaveProperty('rejoined');
    expect(typeof msg['id']).toBe('string');
    expect(typeof msg['ts']).toBe('number');
  });

  it('rejoins its den on the next beat after being removed, announcing rejoined: true', async () => {
    const t = await started(makeDaemon(suite.redis.url, FAST));
    const changes: MembershipChange[] = [];
    t.daemon.on('membership', (m) => changes.push(m));
    const watcher = suite.redis.client();
    const got = await collect(watcher, 'agent:events:agent_online');
    const { id, den } = t.config.agent;
    await suite.cmd.srem(`den:${den}:online_agents`, id);
    await suite.cmd.del(`agent:${id}:heartbeat`);
    await waitFor('the agent to re-add itself', async () => (await suite.cmd.sismember(`den:${den}:online_agents`, id)) === 1, 2_000);
    expect(await suite.cmd.exists(`agent:${id}:heartbeat`)).toBe(1);
    await waitFor('agent_online rejoined', () => got.some((g) => dataOf(g)['agent'] === id));
    expect(got.find((g) => dataOf(g)['agent'] === id)!.json?.['data']).toMatchObject({ agent: id, rejoined: true });
    expect(changes).toEqual([{ type: 'agent_online', agent: id, den, rejoined: true }]);
  });

  it('leaves on close: out of the den, registry offline, heartbeat deleted, agent_offline published', async () => {
    const t = await started(makeDaemon(suite.redis.url, FAST));
    const watcher = suite.redis.client();
    const got = await collect(watcher, 'agent:events:agent_offline');
    const { id, den } = t.config.agent;
    const first = t.daemon.close();
    expect(t.daemon.close()).toBe(first); // idempotent: the same promise
    const result = await first;
    expect(result).toEqual({ drained: true, errors: [] });
    expect(t.daemon.state).toBe('closed');
    expect(await suite.cmd.sismember(`den:${den}:online_agents`, id)).toBe(0);
    expect(await suite.cmd.exists(`agent:${id}:heartbeat`)).toBe(0);
    const record = JSON.parse((await suite.cmd.hget('global:agent_registry', id)) ?? '{}') as Record<string, unknown>;
    expect(record).toMatchObject({ id, den, host: hostname(), status: 'offline' });
    await waitFor('agent_offline', () => got.length === 1);
    expect(got[0]!.json).toMatchObject({ event: 'agent_offline', data: { agent: id, den, host: hostname(), reason: 'shutdown' } });
    // No connection of this daemon is left on the server.
    const clients = await suite.cmd.client('LIST');
    expect(String(clients)).not.toContain(`agentd:${id}:`);
  });

  it('on drain timeout reports what was left, aborts running handlers, and still leaves', async () => {
    const aborted = gate();
    const t = await started(
      makeDaemon(suite.redis.url, { ...FAST, queue: { concurrency: 1 } }, [
        definePlugin({
          name: 'stuck',
          handlers: {
            job: (_e, ctx) =>
              new Promise<void>(() => {
                ctx.signal.addEventListener('abort', () => aborted.open());
              }),
          },
        }),
      ]),
    );
    for (let i = 0; i < 3; i++) await suite.cmd.publish('agent:events:job', JSON.stringify({ event: 'job', data: i }));
    await waitFor('one running, two waiting', () => t.daemon.stats().running === 1 && t.daemon.stats().waiting === 2);
    const result = await t.daemon.close({ drainTimeoutMs: 200 });
    expect(result.drained).toBe(false);
    expect(result.left?.waiting).toBe(2);
    expect(result.left?.running).toEqual([expect.objectContaining({ plugin: 'stuck', event: 'job' })]);
    await aborted.promise;
    expect(t.lines.some((l) => l.msg?.startsWith('drain timeout'))).toBe(true);
    expect(await suite.cmd.sismember(`den:${t.config.agent.den}:online_agents`, t.config.agent.id)).toBe(0);
  });

  it('can be closed while still waiting for Redis', async () => {
    const port = await freePort();
    const t = makeDaemon(`redis://127.0.0.1:${port}/0`, { redis: { reconnectMaxDelayMs: 50 } });
    const start = t.daemon.start();
    await waitFor('a reconnect attempt', () => t.lines.some((l) => l.msg === 'redis reconnecting'));
    const closing = t.daemon.close();
    await expect(start).rejects.toBeInstanceOf(AgentdError);
    await expect(start).rejects.toMatchObject({ code: 'AGENTD_ERR_CLOSED' });
    expect((await closing).drained).toBe(true);
    expect(t.daemon.state).toBe('closed');
  });
});
