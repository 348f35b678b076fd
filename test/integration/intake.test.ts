/**
 * Intake isolation (issue 9, item 2): whatever throws while one message is
 * taken in is caught, counted once and logged for that message, and the next
 * message is handled as usual.
 */
import { describe, expect, it } from 'vitest';
import { Dispatcher } from '../../src/bus/dispatcher.ts';
import { Intake, type IntakeMetrics } from '../../src/bus/intake.ts';
import { definePlugin } from '../../src/plugins/types.ts';
import { captureLogger, makeDaemon, redisSuite, until } from '../helpers/inproc.ts';

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
    await until(() => t.daemon.stats().unhandled >= 1, 'own agent_online');
    const before = t.daemon.stats();
    await send('good', 'not json at all');
    await send('good', JSON.stringify({ event: 'good', data: 1 }));
    await until(() => seen.length === 1, 'the good event after the bad one');
    const after = t.daemon.stats();
    expect(after.invalid.not_json - before.invalid.not_json).toBe(1);
    expect(after.invalid.intake_error).toBe(0);
    expect(after.received - before.received).toBe(2);
    const line = t.lines.find((l) => l['code'] === 'AGENTD_ERR_INTAKE');
    expect(line).toMatchObject({ level: 'error', countedAs: 'not_json', err: 'listener bug', component: 'intake', channel: 'agent:events:good' });
  });

  it('a throw before the message is counted anywhere is counted as intake_error; one after dispatch is not counted twice', () => {
    const { logger, lines } = captureLogger('debug');
    const dispatcher = new Dispatcher({ concurrency: 1, maxWaiting: 10, overflow: 'drop-newest', handlerTimeoutMs: 1_000, log: logger });
    const counted: string[] = [];
    const metrics: IntakeMetrics = {
      received: (type) => {
        if (type === 'boom_before') throw new Error('counter broke');
      },
      agentDown: () => {},
      dispatched: (type) => {
        if (type === 'boom_after') throw new Error('counter broke late');
      },
      unhandled: () => {},
      dropped: (_type, reason) => void counted.push(reason),
    };
    const intake = new Intake({ probeChannel: 'agentd:probe:x', maxBytes: 1024, maxDepth: 64, dispatcher, metrics, log: logger });
    dispatcher.setBindings([{ plugin: 'p', on: '*', context: () => ({ abort() {} }), handler: () => undefined }]);
    const msg = (type: string): [Buffer, Buffer] => [Buffer.from(`agent:events:${type}`), Buffer.from(JSON.stringify({ event: type, data: null }))];
    expect(() => intake.onMessage(...msg('boom_before'))).not.toThrow();
    expect(() => intake.onMessage(...msg('boom_after'))).not.toThrow();
    expect(() => intake.onMessage(...msg('fine'))).not.toThrow();
    expect(intake.counts.received).toBe(3);
    expect(intake.counts.invalid.intake_error).toBe(1);
    expect(counted).toEqual(['intake_error']);
    expect(dispatcher.counts.dispatched).toBe(2);
    const errors = lines.filter((l) => l['code'] === 'AGENTD_ERR_INTAKE');
    expect(errors.map((l) => [l['countedAs'], l['err']])).toEqual([
      ['intake_error', 'counter broke'],
      ['dispatch', 'counter broke late'],
    ]);
    dispatcher.abort();
  });
});
