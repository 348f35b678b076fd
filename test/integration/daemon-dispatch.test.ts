import { describe, expect, it } from 'vitest';
import type { AgentEvent } from '../../src/bus/envelope.ts';
import type { AgentDaemon, EventDroppedInfo } from '../../src/daemon.ts';
import type { HandlerFailedInfo } from '../../src/bus/dispatcher.ts';
import { definePlugin, type PluginContext } from '../../src/plugins/types.ts';
import { makeDaemon, redisSuite, type TestDaemon } from '../helpers/inproc.ts';
import { gate, waitFor } from '../helpers/util.ts';

const suite = redisSuite();
const started = (t: TestDaemon) => suite.start(t);

const send = (type: string, data: unknown, extra: Record<string, unknown> = {}) =>
  suite.cmd.publish(`agent:events:${type}`, JSON.stringify({ event: type, data, ...extra }));

describe('dispatch', () => {
  it('delivers a seed-format message from a plain client to the plugin handler', async () => {
    const seen: Array<{ event: AgentEvent; ctx: PluginContext }> = [];
    const t = await started(
      makeDaemon(suite.redis.url, {}, [
        { plugin: definePlugin({ name: 'rec', handlers: { new_message: (event, ctx) => void seen.push({ event, ctx }) } }), options: { k: 'v' } },
      ]),
    );
    await send('new_message', { user_id: 'usr-123', text: 'Hello!' });
    await waitFor('the handler to run', () => seen.length === 1);
    const { event, ctx } = seen[0]!;
    expect(event).toEqual({ event: 'new_message', data: { user_id: 'usr-123', text: 'Hello!' }, channel: 'agent:events:new_message' });
    expect(ctx.agent).toEqual({ id: t.config.agent.id, den: t.config.agent.den });
    expect(ctx.options).toEqual({ k: 'v' });
    expect(ctx.signal.aborted).toBe(false);
    expect(await ctx.redis.ping()).toBe('PONG');
  });

  it('a handler cannot change what another plugin sees: a shared event is deeply frozen, a single handler gets its own', async () => {
    const seen: Array<{ plugin: string; data: unknown; error?: string }> = [];
    const tamper = (plugin: string) => (event: AgentEvent) => {
      const data = event.data as { n: number; inner: { list: number[]; extra?: number } };
      try {
        data.n = 99;
        data.inner.list.push(4);
        data.inner.extra = 1;
        seen.push({ plugin, data: structuredClone(data) });
      } catch (err) {
        seen.push({ plugin, data: structuredClone(data), error: (err as Error).name });
      }
    };
    const t = await started(
      makeDaemon(suite.redis.url, {}, [
        definePlugin({ name: 'first', handlers: { shared: tamper('first'), own: tamper('first') } }),
        definePlugin({ name: 'second', handlers: { shared: tamper('second') } }),
      ]),
    );
    const original = { n: 1, inner: { list: [1, 2, 3] } };
    await send('shared', original);
    await send('own', original);
    await waitFor('three handler calls', () => seen.length === 3);
    const shared = seen.slice(0, 2).sort((a, b) => a.plugin.localeCompare(b.plugin));
    // Each write to the shared event throws (ESM is strict mode): both handlers see the publisher's data.
    expect(shared).toEqual([
      { plugin: 'first', data: original, error: 'TypeError' },
      { plugin: 'second', data: original, error: 'TypeError' },
    ]);
    // The event only one handler gets is that handler's to use as it likes; nobody else sees it.
    expect(seen[2]).toEqual({ plugin: 'first', data: { n: 99, inner: { list: [1, 2, 3, 4], extra: 1 } } });
    expect(t.daemon.stats().failed).toBe(0);
  });

  it('calls the handlers for the type and the "*" handlers, and counts events nobody handles', async () => {
    const calls: string[] = [];
    const t = await started(
      makeDaemon(suite.redis.url, {}, [
        definePlugin({ name: 'typed', handlers: { alpha: () => void calls.push('typed:alpha') } }),
        definePlugin({ name: 'all', handlers: { '*': (e) => void calls.push(`all:${e.event}`) } }),
      ]),
    );
    await waitFor('own agent_online', () => calls.includes('all:agent_online'));
    calls.length = 0;
    await send('alpha', 1);
    await send('beta', 2);
    await waitFor('three handler calls', () => calls.length === 3);
    expect(calls.sort()).toEqual(['all:alpha', 'all:beta', 'typed:alpha']);

    let online = 0;
    let alphas = 0;
    const t2 = await started(
      // PSUBSCRIBE, so gamma (no handler) arrives and is counted as unhandled.
      makeDaemon(suite.redis.url, { events: { subscribe: 'pattern' } }, [definePlugin({ name: 'only-alpha', handlers: { alpha: () => void alphas++, agent_online: () => void online++ } })]),
    );
    await waitFor('own agent_online', () => online === 1);
    const before = t2.daemon.stats().unhandled;
    await send('gamma', 3);
    await send('alpha', 4);
    await waitFor('the alpha sent after gamma', () => alphas === 1);
    expect(t2.daemon.stats().unhandled).toBe(before + 1);
    expect(t.daemon.stats().failed).toBe(0);
  });

  it('drop-newest: holds the queue bound and counts every drop', async () => {
    const hold = gate();
    const ran: number[] = [];
    const t = await started(
      makeDaemon(suite.redis.url, { queue: { concurrency: 1, max: 5 } }, [
        definePlugin({
          name: 'slow',
          handlers: {
            work: async (e) => {
              ran.push(e.data as number);
              await hold.promise;
            },
          },
        }),
      ]),
    );
    const dropped: EventDroppedInfo[] = [];
    t.daemon.on('eventDropped', (d) => dropped.push(d));
    let maxWaiting = 0;
    for (let i = 0; i < 20; i++) await send('work', i);
    // Every work event is either running, waiting or dropped.
    await waitFor('all 20 messages to arrive', () => {
      const s = t.daemon.stats();
      maxWaiting = Math.max(maxWaiting, s.waiting);
      return s.running + s.waiting + s.dropped.queue_full === 20;
    });
    const s = t.daemon.stats();
    expect(s.waiting).toBe(5);
    expect(s.running).toBe(1);
    expect(maxWaiting).toBeLessThanOrEqual(5);
    expect(s.dropped.queue_full).toBe(14);
    expect(dropped).toHaveLength(14);
    expect(dropped.every((d) => d.reason === 'queue_full' && d.event === 'work')).toBe(true);
    hold.open();
    await waitFor('the kept events to run', () => t.daemon.stats().completed >= 6);
    expect(ran).toEqual([0, 1, 2, 3, 4, 5]);
    // One line at the first drop, the rest summed in one line (written at the latest when draining).
    await t.daemon.close();
    const dropLines = t.lines.filter((l) => l.msg === 'handler queue full: dropping events');
    expect(dropLines.map((l) => l['dropped'])).toEqual([1, 13]);
  });

  it('drop-oldest: evicts the longest-waiting calls and keeps the newest', async () => {
    const hold = gate();
    const ran: number[] = [];
    const t = await started(
      makeDaemon(suite.redis.url, { queue: { concurrency: 1, max: 5, overflow: 'drop-oldest' } }, [
        definePlugin({
          name: 'slow',
          handlers: {
            work: async (e) => {
              ran.push(e.data as number);
              await hold.promise;
            },
          },
        }),
      ]),
    );
    for (let i = 0; i < 20; i++) await send('work', i);
    await waitFor('all 20 messages to arrive', () => {
      const s = t.daemon.stats();
      return s.running + s.waiting + s.dropped.evicted === 20;
    });
    expect(t.daemon.stats().waiting).toBe(5);
    expect(t.daemon.stats().dropped.evicted).toBe(14);
    hold.open();
    await waitFor('six calls', () => ran.length === 6);
    await new Promise((r) => setTimeout(r, 100));
    expect(ran).toEqual([0, 15, 16, 17, 18, 19]);
    expect(t.daemon.stats().completed).toBe(6);
    expect(t.daemon.stats().failed).toBe(0);
  });

  it('times a handler out: aborts its signal, frees its slot, and logs plugin and event', async () => {
    const reasons: unknown[] = [];
    const order: string[] = [];
    const t = await started(
      makeDaemon(suite.redis.url, { queue: { concurrency: 1, handlerTimeoutMs: 200 } }, [
        definePlugin({
          name: 'sleepy',
          handlers: {
            hang: (_e, ctx) =>
              new Promise<void>((resolve) => {
                order.push('hang:start');
                ctx.signal.addEventListener('abort', () => {
                  reasons.push(ctx.signal.reason);
                  resolve();
                });
              }),
            forever: () => new Promise<void>(() => order.push('forever:start')),
            after: () => void order.push('after'),
          },
        }),
      ]),
    );
    const failed: HandlerFailedInfo[] = [];
    t.daemon.on('handlerFailed', (f) => failed.push(f));
    await send('hang', null);
    await send('forever', null);
    await send('after', null);
    await waitFor('the third event to get a slot', () => order.includes('after'), 3_000);
    expect(order).toEqual(['hang:start', 'forever:start', 'after']);
    expect((reasons[0] as Error).name).toBe('TimeoutError');
    expect(t.daemon.stats().timedOut).toBe(2);
    expect(failed.map((f) => [f.plugin, f.event, f.reason])).toEqual([
      ['sleepy', 'hang', 'timeout'],
      ['sleepy', 'forever', 'timeout'],
    ]);
    const lines = t.lines.filter((l) => l['code'] === 'AGENTD_ERR_HANDLER_TIMEOUT');
    expect(lines.map((l) => [l['plugin'], l['event']])).toEqual([
      ['sleepy', 'hang'],
      ['sleepy', 'forever'],
    ]);
  });

  it('isolates thrown errors and rejections: other plugins and later events are unaffected', async () => {
    const good: string[] = [];
    const t = await started(
      makeDaemon(suite.redis.url, {}, [
        definePlugin({
          name: 'bad',
          handlers: {
            boom: () => {
              throw new Error('sync boom');
            },
            reject: async () => {
              throw new Error('async boom');
            },
          },
        }),
        definePlugin({ name: 'good', handlers: { boom: () => void good.push('boom'), reject: () => void good.push('reject'), later: () => void good.push('later') } }),
      ]),
    );
    await send('boom', null);
    await send('reject', null);
    await send('later', null);
    await waitFor('all calls to settle', () => good.length === 3 && t.daemon.stats().failed === 2);
    expect(good).toEqual(['boom', 'reject', 'later']);
    const errors = t.lines.filter((l) => l['code'] === 'AGENTD_ERR_HANDLER_FAILED');
    expect(errors.map((l) => [l['plugin'], l['event'], l['err']])).toEqual([
      ['bad', 'boom', 'sync boom'],
      ['bad', 'reject', 'async boom'],
    ]);
    expect(t.daemon.state).toBe('ready');
  });

  it('drops each kind of bad input before any handler, with one log line and a counter', async () => {
    const seen: AgentEvent[] = [];
    const t = await started(makeDaemon(suite.redis.url, { events: { maxBytes: 1024 } }, [definePlugin({ name: 'all', handlers: { '*': (e) => void seen.push(e) } })]));
    await waitFor('own agent_online', () => seen.length === 1);
    const dropped: EventDroppedInfo[] = [];
    t.daemon.on('eventDropped', (d) => dropped.push(d));
    const ch = 'agent:events:x';
    const secret = 'PAYLOAD-MARKER';
    await suite.cmd.publish(ch, `not json ${secret}`);
    await suite.cmd.publish(ch, JSON.stringify([secret]));
    await suite.cmd.publish(ch, JSON.stringify({ data: secret }));
    await suite.cmd.publish(ch, JSON.stringify({ event: 'x', data: secret.repeat(200) }));
    await suite.cmd.publish(ch, `{"event":"x","data":{"__proto__":{"polluted":"${secret}"}}}`);
    await send('valid', 'ok');
    await waitFor('the valid event', () => seen.length === 2);
    expect(seen[1]!.event).toBe('valid');
    expect(dropped.map((d) => d.reason)).toEqual(['not_json', 'not_object', 'no_event', 'too_large', 'forbidden_key']);
    expect(t.daemon.stats().invalid).toEqual({
      not_json: 1, not_object: 1, no_event: 1, too_large: 1, forbidden_key: 1, too_deep: 0, intake_error: 0,
      // The trust checks (issue 12): none of these messages is refused by them (signing off, types on their own channels).
      channel_mismatch: 0, unsigned: 0, bad_signature: 0, unknown_key: 0, stale: 0, replayed: 0,
    });
    const lines = t.lines.filter((l) => l['code'] === 'AGENTD_ERR_BAD_EVENT');
    expect(lines).toHaveLength(5);
    for (const l of lines) {
      expect(l['channel']).toBe(ch);
      expect(JSON.stringify(l)).not.toContain(secret);
    }
    expect(({} as Record<string, unknown>)['polluted']).toBeUndefined();
  });

  it('gives every handler the same frozen event: one cannot change what another sees', async () => {
    const seenByB: unknown[] = [];
    const errors: string[] = [];
    await started(
      makeDaemon(suite.redis.url, { queue: { concurrency: 1 } }, [
        definePlugin({
          name: 'a',
          handlers: {
            e: (ev) => {
              try {
                (ev.data as { n: number }).n = 99;
              } catch (err) {
                errors.push((err as Error).name);
              }
            },
          },
        }),
        definePlugin({ name: 'b', handlers: { e: (ev) => void seenByB.push(structuredClone(ev.data)) } }),
      ]),
    );
    await send('e', { n: 1 });
    await waitFor('plugin b', () => seenByB.length === 1);
    expect(errors).toEqual(['TypeError']);
    expect(seenByB).toEqual([{ n: 1 }]);
  });

  it('ctx.publish sends an envelope with metadata that other agents receive', async () => {
    const got: AgentEvent[] = [];
    const a = await started(makeDaemon(suite.redis.url, {}, [definePlugin({ name: 'listener', handlers: { pong: (e) => void got.push(e) } })]));
    let publishFrom: PluginContext | undefined;
    const b = await started(
      makeDaemon(suite.redis.url, {}, [definePlugin({ name: 'speaker', setup: (ctx) => void (publishFrom = ctx), handlers: {} })]),
    );
    const receivers = await publishFrom!.publish('pong', { n: 1 });
    // a handles pong; b handles nothing, so it subscribed only to agentd's own membership channels.
    expect(receivers).toBe(1);
    await waitFor('the pong', () => got.length === 1);
    expect(got[0]).toMatchObject({ event: 'pong', data: { n: 1 }, source: b.config.agent.id, den: b.config.agent.den });
    expect(got[0]!.id).toMatch(/^[0-9a-f-]{36}$/);
    expect(Math.abs(Date.now() - (got[0]!.ts ?? 0))).toBeLessThan(5_000);
    expect(a.daemon.stats().failed).toBe(0);
  });
});
