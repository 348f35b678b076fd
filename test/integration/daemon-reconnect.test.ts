/**
 * A Redis restart as the embedding API sees it: the daemon's states and events, and a
 * plugin's publish during the outage. Presence, the subscription and their 2 s deadline
 * after a restart are fault 1's, with a real process: test/fault/redis-crash.test.ts.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AgentEvent } from '../../src/bus/envelope.ts';
import { definePlugin } from '../../src/plugins/types.ts';
import { makeDaemon, redisSuite } from '../helpers/inproc.ts';
import { waitFor } from '../helpers/util.ts';

const suite = redisSuite({ requireControl: true });
const unhandled: unknown[] = [];
const onUnhandled = (reason: unknown): void => void unhandled.push(reason);

beforeAll(() => {
  process.on('unhandledRejection', onUnhandled);
});
afterAll(() => {
  process.off('unhandledRejection', onUnhandled);
});

describe('Redis restart', () => {
  it('degraded while Redis is gone (a publish fails at once), then ready again with agent_online {rejoined} and events flowing', async () => {
    const seen: AgentEvent[] = [];
    const t = await suite.start(
      makeDaemon(suite.redis.url, { heartbeat: { ttl: 60, interval: 20 }, redis: { reconnectMaxDelayMs: 200 } }, [
        definePlugin({ name: 'rec', handlers: { '*': (e) => void seen.push(e) } }),
      ]),
    );
    const { id, den } = t.config.agent;
    const states: string[] = [];
    const membership: unknown[] = [];
    t.daemon.on('membership', (m) => membership.push(m));
    t.daemon.on('degraded', () => states.push('degraded'));
    t.daemon.on('ready', ({ again }) => states.push(again ? 'ready-again' : 'ready'));

    await suite.redis.kill('SIGKILL');
    await waitFor('the daemon to notice', () => t.daemon.state === 'degraded');
    // While Redis is down, publishing from a plugin fails fast instead of queueing for later.
    await expect(t.daemon.publish('during_outage', {})).rejects.toThrow();
    await new Promise((r) => setTimeout(r, 500));
    await suite.redis.start(); // same port, empty dataset

    await waitFor('ready again', () => t.daemon.state === 'ready', 5_000);
    // agent_online {rejoined: true} went out (our own subscriber may not have been back yet to see it).
    await waitFor('agent_online rejoined', () => membership.length === 1);
    expect(membership).toEqual([{ type: 'agent_online', agent: id, den, rejoined: true }]);
    const client = suite.redis.client();
    await client.publish('agent:events:after_restart', JSON.stringify({ event: 'after_restart', data: { n: 1 } }));
    await waitFor('an event published after the restart', () => seen.some((e) => e.event === 'after_restart'));
    expect(seen.some((e) => e.event === 'during_outage')).toBe(false);
    expect(states).toEqual(['degraded', 'ready-again']);
    expect(unhandled).toEqual([]);
  });
});
