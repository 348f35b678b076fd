import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AgentEvent } from '../../src/bus/envelope.ts';
import { definePlugin } from '../../src/plugins/types.ts';
import { makeDaemon, type TestDaemon } from '../helpers/inproc.ts';
import { waitFor } from '../helpers/util.ts';
import { startRedis, type TestRedis } from '../helpers/redis.ts';

let redis: TestRedis;
let t: TestDaemon;
const seen: AgentEvent[] = [];
const unhandled: unknown[] = [];
const onUnhandled = (reason: unknown): void => void unhandled.push(reason);

beforeAll(async () => {
  process.on('unhandledRejection', onUnhandled);
  redis = await startRedis({ requireControl: true });
  t = makeDaemon(redis.url, { heartbeat: { ttl: 60, interval: 20 }, redis: { reconnectMaxDelayMs: 200 } }, [
    definePlugin({ name: 'rec', handlers: { '*': (e) => void seen.push(e) } }),
  ]);
  await t.daemon.start();
});
afterAll(async () => {
  await t.daemon.close({ drainTimeoutMs: 100 });
  await redis.stop();
  process.off('unhandledRejection', onUnhandled);
});

describe('Redis restart', () => {
  it('degrades while Redis is gone, then re-registers, re-subscribes and reports ready again', async () => {
    const { id, den } = t.config.agent;
    const states: string[] = [];
    const membership: unknown[] = [];
    t.daemon.on('membership', (m) => membership.push(m));
    t.daemon.on('degraded', () => states.push('degraded'));
    t.daemon.on('ready', ({ again }) => states.push(again ? 'ready-again' : 'ready'));

    await redis.kill('SIGKILL');
    await waitFor('the daemon to notice', () => t.daemon.state === 'degraded');
    // While Redis is down, publishing from a plugin fails fast instead of queueing for later.
    await expect(t.daemon.publish('during_outage', {})).rejects.toThrow();
    await new Promise((r) => setTimeout(r, 500));
    await redis.start(); // same port, empty dataset
    const back = Date.now();

    await waitFor('ready again', () => t.daemon.state === 'ready', 5_000);
    const client = redis.client();
    // Presence is re-asserted at once, not at the next 20 s beat.
    await waitFor('den membership', async () => (await client.sismember(`den:${den}:online_agents`, id)) === 1, 3_000);
    expect(Date.now() - back).toBeLessThan(2_500);
    expect(await client.pttl(`agent:${id}:heartbeat`)).toBeGreaterThan(50_000);
    expect(JSON.parse((await client.hget('global:agent_registry', id)) ?? '{}')).toMatchObject({ status: 'online' });

    // agent_online {rejoined: true} went out (our own subscriber may not have been back yet to see it).
    await waitFor('agent_online rejoined', () => membership.length === 1);
    expect(membership).toEqual([{ type: 'agent_online', agent: id, den, rejoined: true }]);
    await client.publish('agent:events:after_restart', JSON.stringify({ event: 'after_restart', data: { n: 1 } }));
    await waitFor('an event published after the restart', () => seen.some((e) => e.event === 'after_restart'));
    expect(seen.some((e) => e.event === 'during_outage')).toBe(false);
    expect(states).toEqual(['degraded', 'ready-again']);
    expect(t.lines.some((l) => l.msg === 'event subscription confirmed again; events published during the gap were missed')).toBe(true);
    expect(unhandled).toEqual([]);
  });
});
