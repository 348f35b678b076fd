/**
 * Fan-out only where needed (docs/plugins.md, "What a daemon subscribes
 * to"): with no '*' handler and the default events.patterns, a daemon
 * SUBSCRIBEs to exactly the channels of the types it handles plus agentd's
 * membership types, so Redis never sends it the rest; a '*' handler, explicit
 * patterns or events.subscribe = pattern keep the PSUBSCRIBE.
 */
import { describe, expect, it } from 'vitest';
import { exactEventChannels } from '../../src/bus/channels.ts';
import { definePlugin, type AgentEvent } from '../../src/index.ts';
import { makeDaemon, redisSuite } from '../helpers/inproc.ts';
import { waitFor } from '../helpers/util.ts';

const suite = redisSuite({ requireControl: true });
const send = (type: string, data: unknown) => suite.cmd.publish(`agent:events:${type}`, JSON.stringify({ event: type, data }));

/** The daemon's subscriber connection in CLIENT LIST: its sub and psub counts. */
async function subscriberOf(name: string): Promise<{ sub: number; psub: number }> {
  const list = (await suite.cmd.client('LIST')) as string;
  const line = list.split('\n').find((l) => l.includes(`name=${name}`) && /\bpsub=\d/.test(l) && !/\bsub=0 psub=0\b/.test(l));
  expect(line, `a subscriber connection named ${name}`).toBeDefined();
  return { sub: Number(/\bsub=(\d+)/.exec(line!)?.[1]), psub: Number(/\bpsub=(\d+)/.exec(line!)?.[1]) };
}

describe('exactEventChannels', () => {
  const auto = { subscribe: 'auto' as const, patterns: ['agent:events:*'] };
  it('lists the handled types and the membership types, sorted, once each', () => {
    expect(exactEventChannels(auto, [{ on: 'b' }, { on: 'a' }, { on: 'agent_down' }, { on: 'a' }])).toEqual([
      'agent:events:a',
      'agent:events:agent_down',
      'agent:events:agent_offline',
      'agent:events:agent_online',
      'agent:events:b',
    ]);
  });
  it('keeps the patterns for a * handler, explicit patterns, or subscribe = pattern', () => {
    expect(exactEventChannels(auto, [{ on: 'a' }, { on: '*' }])).toBeUndefined();
    expect(exactEventChannels({ subscribe: 'auto', patterns: ['agent:events:a*'] }, [{ on: 'a' }])).toBeUndefined();
    expect(exactEventChannels({ subscribe: 'auto', patterns: ['agent:events:*', 'other:*'] }, [{ on: 'a' }])).toBeUndefined();
    expect(exactEventChannels({ subscribe: 'pattern', patterns: ['agent:events:*'] }, [{ on: 'a' }])).toBeUndefined();
  });
});

describe('what a daemon subscribes to', () => {
  it('typed handlers only: exactly their channels; other types never reach the daemon', async () => {
    const seen: AgentEvent[] = [];
    const t = await suite.start(
      makeDaemon(suite.redis.url, { watch: { notifications: 'off' } }, [definePlugin({ name: 'typed', handlers: { alpha: (e) => void seen.push(e), beta: (e) => void seen.push(e) } })]),
    );
    const s = await subscriberOf(`agentd:${t.config.agent.id}:sub`);
    // probe + alpha + beta + agent_online/offline/down + the durable doorbells (inbox, den tasks); no pattern at all.
    expect(s).toEqual({ sub: 8, psub: 0 });
    const { received, unhandled } = t.daemon.stats();
    expect(await send('gamma', 1), 'receivers of a type nobody handles').toBe(0);
    expect(await send('alpha', 2)).toBe(1);
    await waitFor('alpha', () => seen.length === 1);
    expect(seen[0]).toMatchObject({ event: 'alpha', data: 2 });
    expect(t.daemon.stats().received).toBe(received + 1);
    expect(t.daemon.stats().unhandled, 'gamma never arrived, so it was not counted as unhandled').toBe(unhandled);

    // Subscribed again, to the same channels, after Redis drops the subscriber connection.
    await suite.cmd.call('CLIENT', ['KILL', 'TYPE', 'pubsub']);
    await waitFor('ready again', () => t.daemon.state === 'ready' && seen.length === 1, 10_000);
    await waitFor('resubscribed', async () => (await subscriberOf(`agentd:${t.config.agent.id}:sub`).catch(() => ({ sub: 0 }))).sub === 8, 10_000);
    await send('beta', 3);
    await waitFor('beta after the reconnect', () => seen.length === 2);
    expect(seen[1]).toMatchObject({ event: 'beta', data: 3 });
  });

  it('a slow plugin setup (the subscriber ready long before): still exact channels only, each event handled once', async () => {
    const seen: AgentEvent[] = [];
    const t = await suite.start(
      makeDaemon(suite.redis.url, { watch: { notifications: 'off' } }, [
        definePlugin({ name: 'slow', setup: () => new Promise<void>((r) => setTimeout(r, 400)), handlers: { alpha: (e) => void seen.push(e) } }),
      ]),
    );
    expect(await subscriberOf(`agentd:${t.config.agent.id}:sub`)).toEqual({ sub: 7, psub: 0 });
    expect(await send('alpha', 1)).toBe(1);
    await waitFor('alpha', () => seen.length === 1);
    await new Promise((r) => setTimeout(r, 300));
    expect(seen).toHaveLength(1);
  });

  it('a * handler keeps the pattern: every type arrives', async () => {
    const seen: string[] = [];
    const t = await suite.start(
      makeDaemon(suite.redis.url, { watch: { notifications: 'off' } }, [
        definePlugin({ name: 'typed', handlers: { alpha: () => void seen.push('typed:alpha') } }),
        definePlugin({ name: 'all', handlers: { '*': (e) => void seen.push(`all:${e.event}`) } }),
      ]),
    );
    expect(await subscriberOf(`agentd:${t.config.agent.id}:sub`)).toEqual({ sub: 3, psub: 1 });
    await send('gamma', 1);
    await waitFor('gamma through the pattern', () => seen.includes('all:gamma'));
  });

  it('explicit patterns and events.subscribe = pattern keep the pattern', async () => {
    const a = await suite.start(makeDaemon(suite.redis.url, { watch: { notifications: 'off' }, events: { patterns: ['agent:events:g*'] } }, [definePlugin({ name: 'p', handlers: { gamma: () => undefined } })]));
    expect(await subscriberOf(`agentd:${a.config.agent.id}:sub`)).toEqual({ sub: 3, psub: 1 });
    const b = await suite.start(makeDaemon(suite.redis.url, { watch: { notifications: 'off' }, events: { subscribe: 'pattern' } }, [definePlugin({ name: 'p', handlers: { gamma: () => undefined } })]));
    expect(await subscriberOf(`agentd:${b.config.agent.id}:sub`)).toEqual({ sub: 3, psub: 1 });
    await send('delta', 1);
    await waitFor('delta through the pattern, unhandled', () => b.daemon.stats().unhandled >= 1);
  });
});
