/**
 * Intake isolation (issue 9, item 2): whatever throws while one message is
 * taken in is caught, counted once and logged for that message, and the next
 * message is handled as usual.
 */
import { describe, expect, it } from 'vitest';
import { Dispatcher } from '../../src/bus/dispatcher.ts';
import { Intake } from '../../src/bus/intake.ts';
import { EventCounters } from '../../src/bus/counters.ts';
import { definePlugin } from '../../src/plugins/types.ts';
import { captureLogger, makeDaemon, redisSuite } from '../helpers/inproc.ts';
import { gate, waitFor } from '../helpers/util.ts';

const suite = redisSuite();
const send = (type: string, payload: string) => suite.cmd.publish(`agent:events:${type}`, payload);

describe('intake isolation', () => {
  it("a throwing 'eventDropped' listener of embedding code: the bad message counted once, logged, the daemon carries on", async () => {
    const seen: unknown[] = [];
    const t = makeDaemon(suite.redis.url, {}, [definePlugin({ name: 'rec', handlers: { good: (e) => void seen.push(e.data) } })]);
    t.daemon.on('eventDropped', () => {
      throw new Error('listener bug');
    });
    await suite.start(t);
    await waitFor('own agent_online', () => t.daemon.stats().unhandled >= 1);
    const before = t.daemon.stats();
    await send('good', 'not json at all');
    await send('good', JSON.stringify({ event: 'good', data: 1 }));
    await waitFor('the good event after the bad one', () => seen.length === 1);
    const after = t.daemon.stats();
    expect(after.invalid.not_json - before.invalid.not_json).toBe(1);
    expect(after.invalid.intake_error).toBe(0);
    expect(after.received - before.received).toBe(2);
    const line = t.lines.find((l) => l['code'] === 'AGENTD_ERR_INTAKE');
    expect(line).toMatchObject({ level: 'error', countedAs: 'not_json', err: 'listener bug', component: 'intake', channel: 'agent:events:good' });
  });

  it("a throwing 'eventDropped' listener on a queue drop: the drop counted, the queue goes on", async () => {
    const g = gate();
    const seen: unknown[] = [];
    const t = makeDaemon(suite.redis.url, { queue: { concurrency: 1, max: 1 } }, [
      definePlugin({
        name: 'rec',
        handlers: {
          slow: async (e) => {
            await g.promise;
            seen.push(e.data);
          },
        },
      }),
    ]);
    t.daemon.on('eventDropped', (d) => {
      if (d.reason === 'queue_full') throw new Error('listener bug');
    });
    await suite.start(t);
    await waitFor('own agent_online', () => t.daemon.stats().unhandled >= 1);
    for (let i = 1; i <= 3; i++) await send('slow', JSON.stringify({ event: 'slow', data: i }));
    await waitFor('the third event dropped', () => t.daemon.stats().dropped.queue_full === 1);
    g.open();
    await waitFor('the first two handled', () => seen.length === 2);
    await send('slow', JSON.stringify({ event: 'slow', data: 4 }));
    await waitFor('the one after', () => seen.length === 3);
    // Which of 2 and 3 was dropped depends on whether 1 and 2 arrived in one socket read.
    expect(seen).toHaveLength(3);
    expect([seen[0], seen[2]]).toEqual([1, 4]);
    const s = t.daemon.stats();
    expect(s.invalid.intake_error).toBe(0);
    expect(s.received).toBe(s.dispatched + s.unhandled + s.dropped.queue_full);
    expect(t.lines.filter((l) => l.msg === "a 'dropped' listener failed").map((l) => l['err'])).toEqual(['listener bug']);
  });

  it('a throw before the message is counted anywhere is counted as intake_error; one after dispatch is not counted twice', () => {
    const { logger, lines } = captureLogger('debug');
    const counters = new EventCounters();
    const dispatcher = new Dispatcher({ concurrency: 1, maxWaiting: 10, overflow: 'drop-newest', handlerTimeoutMs: 1_000, log: logger, counters });
    const dropped: string[] = [];
    const intake = new Intake({
      probeChannel: 'agentd:probe:x',
      maxBytes: 1024,
      maxDepth: 64,
      counters,
      // Embedding code's listener, before dispatch.
      onMembership: (event) => {
        if ((event.data as { boom?: boolean } | null)?.boom) throw new Error('listener broke');
      },
      onDropped: (d) => void dropped.push(d.reason),
      // A dispatcher that counts, then throws (a bug after the message was counted).
      dispatcher: {
        dispatch: (event, bytes, type) => {
          const outcome = dispatcher.dispatch(event, bytes, type);
          if (event.event === 'boom_after') throw new Error('dispatch broke late');
          return outcome;
        },
      },
      log: logger,
    });
    dispatcher.setBindings([{ plugin: 'p', on: '*', context: () => ({ abort() {} }), handler: () => undefined }]);
    const msg = (type: string, data: unknown = null): [string, Buffer] => [`agent:events:${type}`, Buffer.from(JSON.stringify({ event: type, data }))];
    expect(() => intake.onMessage(...msg('agent_online', { boom: true }))).not.toThrow();
    expect(() => intake.onMessage(...msg('boom_after'))).not.toThrow();
    expect(() => intake.onMessage(...msg('fine'))).not.toThrow();
    expect(() => intake.onMessage('agentd:probe:x', Buffer.from('token'))).not.toThrow();
    // The probe is the subscription's, not an event: not counted.
    expect(counters.received).toBe(3);
    expect(counters.invalid.intake_error).toBe(1);
    expect(dropped).toEqual(['intake_error']);
    expect(counters.dispatched).toBe(2);
    expect(counters.of('other').dispatched).toBe(2);
    const errors = lines.filter((l) => l['code'] === 'AGENTD_ERR_INTAKE');
    expect(errors.map((l) => [l['countedAs'], l['err']])).toEqual([
      ['intake_error', 'listener broke'],
      ['dispatch', 'dispatch broke late'],
    ]);
    dispatcher.abort();
  });
});
