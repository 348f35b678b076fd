/**
 * Attacks on the pub/sub hot path of issue 13: handlers that have only ever
 * returned synchronously are called inline, from the socket read; events are
 * frozen only when more than one handler gets them; one set of counters feeds
 * stats() and /metrics. A careless or hostile plugin author tries to break
 * the time slicing, the accounting, the isolation and the metrics labels.
 * Real Redis, in-process daemons; nothing here waits on a fixed sleep or
 * asserts on wall-clock time.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { AgentEvent } from '../../src/bus/envelope.ts';
import { Dispatcher, type Binding, type HandlerFailedInfo } from '../../src/bus/dispatcher.ts';
import type { AgentDaemon, DaemonStats } from '../../src/daemon.ts';
import { definePlugin } from '../../src/plugins/types.ts';
import { captureLogger, makeDaemon, redisSuite } from '../helpers/inproc.ts';
import { collect, gate, hasMsg, metric, parseMetrics, waitFor } from '../helpers/util.ts';

const suite = redisSuite();
const send = (type: string, data: unknown) => suite.cmd.publish(`agent:events:${type}`, JSON.stringify({ event: type, data }));

describe('inline dispatch: a careless plugin author', () => {
  it('a handler whose return value throws when asked for `then`: counted as its failure, the next handler of the event still runs', async () => {
    const seen: unknown[] = [];
    const failed: HandlerFailedInfo[] = [];
    const t = await suite.start(
      makeDaemon(suite.redis.url, {}, [
        // A getter that throws (or a revoked Proxy): looking at the result is part of the call.
        definePlugin({ name: 'odd', handlers: { x: () => ({ get then(): never { throw new Error('then getter exploded'); } }) } }),
        definePlugin({ name: 'fine', handlers: { x: (e) => void seen.push(e.data) } }),
      ]),
    );
    t.daemon.on('handlerFailed', (f) => failed.push(f));
    await send('x', 1);
    await send('x', 2);
    await waitFor('both events at the second plugin', () => seen.length === 2, 5_000);
    expect(seen).toEqual([1, 2]);
    expect(failed.map((f) => [f.plugin, f.event, f.reason])).toEqual([
      ['odd', 'x', 'error'],
      ['odd', 'x', 'error'],
    ]);
    const s = t.daemon.stats();
    expect(s.failed).toBe(2);
    expect(s.invalid.intake_error).toBe(0);
    expect(t.lines.filter(hasMsg(/could not be taken in|dispatch worker failed/))).toEqual([]);
  });

  it('a thenable whose then() throws on the first (inline) call: counted as a failed call, not a worker crash', async () => {
    const failed: HandlerFailedInfo[] = [];
    let calls = 0;
    const t = await suite.start(
      makeDaemon(suite.redis.url, {}, [
        definePlugin({
          name: 'odd',
          handlers: {
            x: () => {
              calls++;
              return { then(): never { throw new Error('then() exploded'); } };
            },
          },
        }),
      ]),
    );
    t.daemon.on('handlerFailed', (f) => failed.push(f));
    await send('x', 1);
    await waitFor('the call counted', () => t.daemon.stats().failed + t.daemon.stats().completed >= 1 || t.lines.some(hasMsg(/dispatch worker failed/)), 5_000);
    await send('x', 2);
    await waitFor('both calls counted', () => t.daemon.stats().failed + t.daemon.stats().completed >= 2, 5_000);
    expect(calls).toBe(2);
    expect(failed.map((f) => [f.plugin, f.event, f.reason])).toEqual([
      ['odd', 'x', 'error'],
      ['odd', 'x', 'error'],
    ]);
    const text = await t.daemon.metrics.registry.metrics();
    const errors = parseMetrics(text).filter((m) => m.name === 'agentd_handler_calls_total' && m.labels['plugin'] === 'odd' && m.labels['outcome'] === 'error');
    expect(errors.map((m) => m.value)).toEqual([2]);
    expect(t.lines.filter(hasMsg(/dispatch worker failed/))).toEqual([]);
    expect(t.daemon.stats().running).toBe(0);
  });

  it('three plugins blocking the thread on one event: a timer that falls due runs between any two blocks', async () => {
    // The inline path calls an event's handlers one after another from the socket read: they must not
    // add up to one long block (SLICE_MS in the dispatcher, docs/plugins.md).
    const BLOCK_MS = 150;
    const marks: string[] = [];
    const spin = (name: string) => () => {
      marks.push(`start:${name}`);
      const end = performance.now() + BLOCK_MS;
      while (performance.now() < end);
      marks.push(`end:${name}`);
    };
    await suite.start(
      makeDaemon(suite.redis.url, {}, ['a', 'b', 'c'].map((name) => definePlugin({ name, handlers: { spin: spin(name) } }))),
    );
    const timer = setInterval(() => marks.push('tick'), 5);
    try {
      await send('spin', 1);
      await waitFor('the three blocking calls', () => marks.filter((m) => m.startsWith('end:')).length === 3, 10_000);
    } finally {
      clearInterval(timer);
    }
    const calls = marks.filter((m) => m !== 'tick');
    expect(calls).toEqual(['start:a', 'end:a', 'start:b', 'end:b', 'start:c', 'end:c']);
    // Between the end of one block and the start of the next, the due timer ran.
    for (const name of ['b', 'c']) {
      const start = marks.indexOf(`start:${name}`);
      const prevEnd = marks.slice(0, start).findLastIndex((m) => m.startsWith('end:'));
      expect(marks.slice(prevEnd + 1, start), `timer ticks before ${name}`).toContain('tick');
    }
  });

  it('a handler that renames its own event while it hangs: the drain report and the metrics name the type it was given', async () => {
    const t = await suite.start(
      makeDaemon(suite.redis.url, {}, [
        definePlugin({
          name: 'renamer',
          handlers: {
            hang: async (event, ctx) => {
              // Only one handler gets it, so it is not frozen: it is this handler's own to change.
              (event as { event: string }).event = 'renamed';
              await new Promise((r) => ctx.signal.addEventListener('abort', r));
            },
          },
        }),
      ]),
    );
    await send('hang', 1);
    await waitFor('the call running', () => t.daemon.stats().running === 1, 5_000);
    const result = await t.daemon.close({ drainTimeoutMs: 50 });
    expect(result.drained).toBe(false);
    expect(result.left?.running.map((r) => [r.plugin, r.event])).toEqual([['renamer', 'hang']]);
    const text = await t.daemon.metrics.registry.metrics();
    const aborted = parseMetrics(text).filter((m) => m.name === 'agentd_handler_calls_total' && m.labels['plugin'] === 'renamer');
    expect(aborted.map((m) => [m.labels['event'], m.labels['outcome'], m.value])).toEqual([['hang', 'aborted', 1]]);
  });

  it("a handler for an event type named 'other': each series of /metrics appears once", async () => {
    let others = 0;
    const t = await suite.start(
      makeDaemon(suite.redis.url, { events: { subscribe: 'pattern' } }, [definePlugin({ name: 'p', handlers: { other: () => void others++ } })]),
    );
    await waitFor('own agent_online read', () => t.daemon.stats().received >= 1);
    const before = t.daemon.stats();
    await send('other', 1);
    await send('zzz-unknown', 2);
    await waitFor('both read', () => others === 1 && t.daemon.stats().unhandled === before.unhandled + 1, 5_000);
    const samples = parseMetrics(await t.daemon.metrics.registry.metrics());
    const seen = new Map<string, number>();
    for (const s of samples) {
      const key = `${s.name}${JSON.stringify(Object.entries(s.labels).sort())}`;
      seen.set(key, (seen.get(key) ?? 0) + 1);
    }
    expect([...seen].filter(([, n]) => n > 1).map(([k]) => k), 'series exported twice').toEqual([]);
    // Both land under the one "other" label: the known type and the unknown one cannot be told apart there.
    const received = samples.filter((s) => s.name === 'agentd_events_received_total' && s.labels['event'] === 'other');
    expect(received.map((s) => s.value)).toEqual([2]);
  });
});

const sum = (r: Readonly<Record<string, number>>): number => Object.values(r).reduce((a, b) => a + b, 0);
/** Every message read ends up in one place: dispatched, unhandled, invalid, or dropped at dispatch (queue_full, shutdown). */
const accounted = (s: DaemonStats): number => s.dispatched + s.unhandled + sum(s.invalid) + s.dropped.queue_full + s.dropped.shutdown;
const spinFor = (ms: number): void => {
  const end = performance.now() + ms;
  while (performance.now() < end);
};

describe('inline dispatch: what must keep holding', () => {
  it('a synchronous handler that closes the daemon and publishes from inside its call: close drains, the publish lands, every message accounted for', async () => {
    let daemon: AgentDaemon | undefined;
    let closing: ReturnType<AgentDaemon['close']> | undefined;
    let after = 0;
    const observer = await collect(suite.redis.client(), 'agent:events:echo');
    const t = makeDaemon(suite.redis.url, {}, [
      definePlugin({
        name: 'closer',
        handlers: {
          stop: (_e, ctx) => {
            // Re-entrant from the socket read: close() and publish() are started, not awaited.
            void ctx.publish('echo', { from: 'inside' });
            closing = daemon!.close();
          },
          after: () => void after++,
        },
      }),
    ]);
    daemon = t.daemon;
    await suite.start(t);
    await waitFor('own agent_online read', () => t.daemon.stats().received >= 1);
    const pipe = suite.cmd.pipeline();
    pipe.publish('agent:events:stop', JSON.stringify({ event: 'stop', data: 1 }));
    for (let i = 0; i < 50; i++) pipe.publish('agent:events:after', JSON.stringify({ event: 'after', data: i }));
    await pipe.exec();
    await waitFor('close() called from the handler', () => closing !== undefined, 5_000);
    const result = await closing!;
    expect(result).toEqual({ drained: true, errors: [] });
    await waitFor('the echo published from inside the call', () => observer.length === 1, 5_000);
    const s = t.daemon.stats();
    // What was read before the unsubscribe was handled; nothing is left half-counted.
    expect(s.received, 'received = dispatched + unhandled + invalid + dropped').toBe(accounted(s));
    expect(s.completed).toBe(s.dispatched);
    expect(after, 'afters handled').toBe(s.dispatched - 1); // dispatched: stop and the afters (own agent_online is unhandled here)
    expect(t.daemon.state).toBe('closed');
  });

  it.each([
    ['drop-oldest, queue.max 20', { max: 20, overflow: 'drop-oldest' as const }, 20],
    ['drop-newest, queue.maxBytes 8 KiB', { maxBytes: 8_192, overflow: 'drop-newest' as const }, 8],
  ])('a flood at a 1 ms synchronous handler, %s: the queue stays within its bound, every drop is counted', async (_name, queue, bound) => {
    const N = 600;
    let handled = 0;
    let mostWaiting = 0;
    let daemon: AgentDaemon | undefined;
    const t = await suite.start(
      makeDaemon(suite.redis.url, { queue: { concurrency: 1, ...queue } }, [
        definePlugin({
          name: 'slow',
          handlers: {
            flood: () => {
              mostWaiting = Math.max(mostWaiting, daemon!.stats().waiting);
              spinFor(1);
              handled++;
            },
          },
        }),
      ]),
    );
    daemon = t.daemon;
    await waitFor('own agent_online read', () => t.daemon.stats().received >= 1);
    const before = t.daemon.stats();
    const pad = 'x'.repeat(900);
    const pipe = suite.cmd.pipeline();
    for (let i = 0; i < N; i++) pipe.publish('agent:events:flood', JSON.stringify({ event: 'flood', data: { i, pad } }));
    await pipe.exec();
    await waitFor('every message read and the queue empty', () => {
      const s = t.daemon.stats();
      return s.received - before.received === N && s.waiting === 0 && s.running === 0;
    }, 30_000);
    const s = t.daemon.stats();
    const dropped = (k: keyof DaemonStats['dropped']): number => s.dropped[k] - before.dropped[k];
    console.log(`inline flood (${_name}): ${JSON.stringify({ handled, mostWaiting, dropped: { queue_full: dropped('queue_full'), evicted: dropped('evicted') } })}`);
    expect(mostWaiting, 'waiting calls seen by the handler').toBeLessThanOrEqual(bound);
    expect(dropped('queue_full') + dropped('evicted'), 'some calls dropped').toBeGreaterThan(0);
    expect(handled + dropped('queue_full') + dropped('evicted'), 'handled + dropped = published').toBe(N);
    expect(s.dispatched - before.dispatched, 'dispatched = handled + evicted').toBe(handled + dropped('evicted'));
    expect(s.received, 'received = dispatched + unhandled + invalid + dropped').toBe(accounted(s));
    const m = await t.daemon.metrics.registry.metrics();
    expect(metric(m, 'agentd_events_dropped_total', { event: 'flood' })).toBe(dropped('queue_full') + dropped('evicted'));
    expect(metric(m, 'agentd_handler_calls_total', { plugin: 'slow', event: 'flood', outcome: 'ok' })).toBe(handled);
  });

  it('fuzzed batches at sync, async, throwing, rejecting and flip-flopping handlers of two plugins: every call settles once, every message counted once', async () => {
    let flips = 0;
    const t = await suite.start(
      makeDaemon(suite.redis.url, { queue: { max: 100_000 } }, [
        definePlugin({
          name: 'mixed',
          handlers: {
            s: () => undefined,
            a: async () => undefined,
            t: () => {
              throw new Error('sync throw');
            },
            r: async () => {
              throw new Error('async reject');
            },
            // Sync on odd calls, a promise on even ones (rejecting every fourth).
            f: () => (++flips % 2 === 1 ? undefined : flips % 4 === 0 ? Promise.reject(new Error('flip')) : Promise.resolve()),
          },
        }),
        definePlugin({ name: 'second', handlers: { s: (e) => void (e.data as unknown), t: () => undefined, f: async () => undefined } }),
      ]),
    );
    const { daemon } = t;
    await waitFor('own agent_online read', () => daemon.stats().received >= 1 && daemon.stats().running === 0);
    // Calls per event type (both plugins), and how many of them fail.
    const calls: Record<string, number> = { s: 2, a: 1, t: 2, r: 1, f: 2, none: 0 };
    const types = fc.constantFrom('s', 'a', 't', 'r', 'f', 'none');
    await fc.assert(
      fc.asyncProperty(fc.array(types, { minLength: 1, maxLength: 40 }), async (batch) => {
        const before = daemon.stats();
        const pipe = suite.cmd.pipeline();
        for (const type of batch) pipe.publish(`agent:events:${type}`, JSON.stringify({ event: type, data: { type } }));
        await pipe.exec();
        // 'none' has no handler and (exact channels) is not even subscribed: only the others arrive.
        const arriving = batch.filter((x) => x !== 'none').length;
        const expectedCalls = batch.reduce((n, x) => n + (calls[x] ?? 0), 0);
        await waitFor('every call settled', () => {
          const s = daemon.stats();
          return s.received - before.received === arriving && s.completed + s.failed - before.completed - before.failed === expectedCalls && s.running === 0 && s.waiting === 0;
        }, 10_000);
        const s = daemon.stats();
        expect(s.received - before.received).toBe(arriving);
        expect(accounted(s) - accounted(before), 'received = dispatched + unhandled + invalid + dropped').toBe(arriving);
        expect(s.dispatched - before.dispatched).toBe(arriving);
        expect(s.completed + s.failed - before.completed - before.failed, 'calls settled').toBe(expectedCalls);
        expect(sum(s.dropped)).toBe(0);
        expect(s.timedOut).toBe(0);
        expect(s.invalid.intake_error).toBe(0);
      }),
      { numRuns: 40 },
    );
    expect(t.lines.filter(hasMsg(/could not be taken in|dispatch worker failed|listener failed/))).toEqual([]);
  });

  it.each([
    ['exact channels (messageBuffer)', 'auto' as const],
    ['a pattern (pmessageBuffer)', 'pattern' as const],
  ])('channel names of equal length alternating within one socket read, %s: each event on its own channel, none refused', async (_name, subscribe) => {
    const got: Array<[string, string]> = [];
    const t = await suite.start(
      makeDaemon(suite.redis.url, { events: { subscribe } }, [
        definePlugin({ name: 'p', handlers: { ab: (e) => void got.push([e.event, e.channel]), ac: (e) => void got.push([e.event, e.channel]), bb: (e) => void got.push([e.event, e.channel]) } }),
      ]),
    );
    const order = Array.from({ length: 300 }, (_, i) => ['ab', 'ac', 'bb', 'ab', 'ab'][i % 5]!);
    const pipe = suite.cmd.pipeline();
    for (const type of order) pipe.publish(`agent:events:${type}`, JSON.stringify({ event: type, data: null }));
    await pipe.exec();
    await waitFor('all 300', () => got.length === order.length, 10_000);
    expect(got.filter(([type, channel]) => channel !== `agent:events:${type}`)).toEqual([]);
    expect(got.map(([type]) => type)).toEqual(order);
    expect(t.daemon.stats().invalid.channel_mismatch).toBe(0);
  });

  it('hostile messages on the probe and doorbell channels (PUBSUB CHANNELS shows them): not events, the daemon stays ready and confirmed', async () => {
    const seen: AgentEvent[] = [];
    const t = await suite.start(makeDaemon(suite.redis.url, { events: { probeInterval: 0.2, probeTimeoutMs: 500 } }, [definePlugin({ name: 'p', handlers: { job: (e) => void seen.push(e) } })]));
    const { daemon } = t;
    const channels = ((await suite.cmd.pubsub('CHANNELS', '*')) as string[]).filter((c) => c.includes(t.config.agent.id) || c.includes(t.config.agent.den));
    const probe = channels.filter((c) => c.startsWith('agentd:probe:'));
    const doorbells = channels.filter((c) => c.startsWith('inbox:') || c.startsWith('den:'));
    expect(probe).toHaveLength(1);
    expect(doorbells.length).toBeGreaterThanOrEqual(2);
    await waitFor('own agent_online read', () => daemon.stats().received >= 1);
    const before = daemon.stats();
    // A spy on the probe channel sees each probe the daemon publishes (and the junk).
    let probesSeen = 0;
    const spy = suite.redis.client();
    spy.on('message', () => void probesSeen++);
    await spy.subscribe(probe[0]!);
    const junk = ['not json', 'pending', '', JSON.stringify({ event: 'job', data: 'forged' }), 'x'.repeat(200_000), '0123456789abcdef'];
    const pipe = suite.cmd.pipeline();
    for (let round = 0; round < 20; round++) for (const c of [...probe, ...doorbells]) for (const j of junk) pipe.publish(c, j);
    await pipe.exec();
    // A real event after the junk: read behind it, so every junk message was read by then.
    await suite.cmd.publish('agent:events:job', JSON.stringify({ event: 'job', data: 'real' }));
    await waitFor('the real event', () => seen.length === 1, 10_000);
    expect(seen.map((e) => e.data)).toEqual(['real']);
    expect(daemon.stats().received - before.received, 'only the real event counts as received').toBe(1);
    expect(sum(daemon.stats().invalid)).toBe(sum(before.invalid));
    // Probes keep coming back through the junk: three more rounds (each one sent after the last came back).
    const afterJunk = probesSeen;
    await waitFor('three probe rounds after the junk', () => probesSeen >= afterJunk + 3, 5_000);
    expect(t.lines.filter(hasMsg(/probe|subscription lost|confirmed again/)), 'lost probes or resubscriptions').toEqual([]);
    expect(daemon.readiness()).toMatchObject({ ready: true });
  });

  it('registry.resetMetrics() by embedding code: handler calls after it are counted again, in the same run of one plugin and type', async () => {
    let n = 0;
    const t = await suite.start(makeDaemon(suite.redis.url, {}, [definePlugin({ name: 'p', handlers: { tick: () => void n++ } })]));
    const registry = t.daemon.metrics.registry;
    const calls = async (): Promise<number> => metric(await registry.metrics(), 'agentd_handler_calls_total', { plugin: 'p', event: 'tick', outcome: 'ok' });
    const observed = async (): Promise<number> => metric(await registry.metrics(), 'agentd_handler_duration_seconds_count', { plugin: 'p' });
    for (let i = 0; i < 3; i++) await suite.cmd.publish('agent:events:tick', JSON.stringify({ event: 'tick', data: i }));
    await waitFor('three handled', () => n === 3);
    expect(await calls()).toBe(3);
    registry.resetMetrics();
    expect(await calls()).toBe(0);
    for (let i = 0; i < 2; i++) await suite.cmd.publish('agent:events:tick', JSON.stringify({ event: 'tick', data: i }));
    await waitFor('two more handled', () => n === 5);
    expect(await calls(), 'calls counted after the reset').toBe(2);
    expect(await observed(), 'durations observed after the reset').toBe(2);
  });

  it('metrics built on first use: what was counted before the registry existed is in its first scrape', async () => {
    let n = 0;
    const t = await suite.start(makeDaemon(suite.redis.url, {}, [definePlugin({ name: 'p', handlers: { early: () => void n++ } })]));
    for (let i = 0; i < 5; i++) await suite.cmd.publish('agent:events:early', JSON.stringify({ event: 'early', data: i }));
    await waitFor('five handled', () => n === 5);
    // No http endpoint here: nothing has asked for the registry yet.
    const m = await t.daemon.metrics.registry.metrics();
    expect(metric(m, 'agentd_events_received_total', { event: 'early' })).toBe(5);
    expect(metric(m, 'agentd_events_dispatched_total', { event: 'early' })).toBe(5);
    expect(metric(m, 'agentd_handler_calls_total', { plugin: 'p', event: 'early', outcome: 'ok' })).toBe(5);
    expect(metric(m, 'agentd_handler_duration_seconds_count', { plugin: 'p' })).toBe(5);
    expect(metric(m, 'agentd_agent_info', { agent: t.config.agent.id })).toBe(1);
    expect(metric(m, 'agentd_ready')).toBe(1);
    // And the same registry keeps counting.
    await suite.cmd.publish('agent:events:early', JSON.stringify({ event: 'early', data: 5 }));
    await waitFor('sixth handled', () => n === 6);
    expect(metric(await t.daemon.metrics.registry.metrics(), 'agentd_events_received_total', { event: 'early' })).toBe(6);
  });
});

describe('inline dispatch: the concurrency bound', () => {
  it('queue.concurrency 1: a first promise adopted while a worker pauses between bursts does not run beside the next queued call', async () => {
    // The dispatcher alone, driven step by step: the moment is when a worker has run synchronous
    // calls back to back for BURST_MS (5 ms), emptied the queue and waits for the next turn; an
    // event read then runs inline, and a handler returning its first promise is adopted by a
    // worker of its own. The call queued behind it must wait for that promise, not run on the
    // pausing worker.
    const { logger } = captureLogger('warn');
    const dispatcher = new Dispatcher({ concurrency: 1, maxWaiting: 1_000, overflow: 'drop-newest', handlerTimeoutMs: 10_000, log: logger });
    const ev = (type: string): AgentEvent => ({ event: type, data: null, channel: `agent:events:${type}` });
    const spin = (ms: number): void => {
      const end = performance.now() + ms;
      while (performance.now() < end);
    };
    const hold = gate();
    let running = 0;
    let most = 0;
    let bursts = 0;
    let bRan = false;
    const enter = (): void => void (most = Math.max(most, ++running));
    const bind = (on: string, handler: (e: AgentEvent) => unknown): Binding => ({ plugin: on, on, context: () => ({ abort: () => undefined }), handler });
    dispatcher.setBindings([
      // Uses up the slice (20 ms), so the next event is queued for a worker.
      bind('blocker', () => {
        enter();
        spin(25);
        running--;
      }),
      // Longer than a burst, shorter than the slice: the worker pauses for one turn right after it,
      // and two events are read in that pause.
      bind('burst', () => {
        enter();
        spin(8);
        running--;
        bursts++;
        queueMicrotask(() => {
          dispatcher.dispatch(ev('slow'));
          dispatcher.dispatch(ev('b'));
        });
      }),
      bind('slow', async () => {
        enter();
        await hold.promise;
        running--;
      }),
      bind('b', () => {
        enter();
        bRan = true;
        running--;
      }),
    ]);
    dispatcher.dispatch(ev('blocker'));
    dispatcher.dispatch(ev('burst'));
    await waitFor('the slow call running', () => bursts === 1 && running === 1, 5_000, 1);
    // Give a wrongly started b every chance to run: a few turns of the loop.
    for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
    const ranBeside = bRan;
    hold.open();
    await waitFor('b ran after the slow call', () => bRan, 5_000, 1);
    const drained = await dispatcher.drain(1_000);
    expect(drained.drained).toBe(true);
    expect(ranBeside, 'b ran while the slow call held the only slot').toBe(false);
    expect(most, 'calls running at once').toBe(1);
    expect(dispatcher.counts.completed).toBe(4);
  });

  it('queue.concurrency 1: two handlers of one event that both return their first promise inline run one after the other', async () => {
    const { logger } = captureLogger('warn');
    const dispatcher = new Dispatcher({ concurrency: 1, maxWaiting: 1_000, overflow: 'drop-newest', handlerTimeoutMs: 10_000, log: logger });
    const hold = gate();
    let running = 0;
    let most = 0;
    const order: string[] = [];
    const asyncHandler = (name: string) => async (): Promise<void> => {
      most = Math.max(most, ++running);
      order.push(`${name} start`);
      await hold.promise;
      order.push(`${name} end`);
      running--;
    };
    dispatcher.setBindings([
      { plugin: 'first', on: 'job', context: () => ({ abort: () => undefined }), handler: asyncHandler('first') },
      { plugin: 'second', on: 'job', context: () => ({ abort: () => undefined }), handler: asyncHandler('second') },
    ]);
    dispatcher.dispatch({ event: 'job', data: null, channel: 'agent:events:job' });
    await waitFor('the first call running', () => running === 1, 5_000, 1);
    for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
    expect(order, 'the second waits for the only slot').toEqual(['first start']);
    hold.open();
    const drained = await dispatcher.drain(2_000);
    expect(drained.drained).toBe(true);
    expect(most, 'calls running at once').toBe(1);
    expect(order).toEqual(['first start', 'first end', 'second start', 'second end']);
    expect(dispatcher.counts.completed).toBe(2);
  });
});
