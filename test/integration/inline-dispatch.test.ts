/**
 * Attacks on the pub/sub hot path of issue 13: handlers that have only ever
 * returned synchronously are called inline, from the socket read; events are
 * frozen only when more than one handler gets them; one set of counters feeds
 * stats() and /metrics. A careless or hostile plugin author tries to break
 * the time slicing, the accounting, the isolation and the metrics labels.
 * Real Redis, in-process daemons; nothing here waits on a fixed sleep or
 * asserts on wall-clock time.
 */
import { describe, expect, it } from 'vitest';
import type { AgentEvent } from '../../src/bus/envelope.ts';
import type { HandlerFailedInfo } from '../../src/bus/dispatcher.ts';
import { definePlugin } from '../../src/plugins/types.ts';
import { makeDaemon, redisSuite } from '../helpers/inproc.ts';
import { hasMsg, parseMetrics, waitFor } from '../helpers/util.ts';

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
    await send('other', 1);
    await send('zzz-unknown', 2);
    await waitFor('both read', () => others === 1 && t.daemon.stats().unhandled >= 1, 5_000);
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
