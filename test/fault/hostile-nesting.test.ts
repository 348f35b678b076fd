/**
 * Fault 13, hostile nesting: one PUBLISH of `{"event":"sentinel","data":[[[…]]]}`
 * nested 5,000 deep (about 10 KB), and one nested 400,000 deep (about 800 KB,
 * under events.maxBytes), at a real `agentd run` child process. Pass: the
 * daemon stays alive, counts each under `too_deep` (one AGENTD_ERR_BAD_EVENT
 * line each, metric `agentd_events_dropped_total{event="invalid",reason="too_deep"}`),
 * nothing reaches the handler, and the next good event is handled.
 */
import { describe, expect, it } from 'vitest';
import { expectSound, isAlive, processSuite, readRecords } from '../helpers/process.ts';
import { keys, metric, waitFor } from '../helpers/util.ts';

const nested = (depth: number): string => `{"event":"sentinel","data":${'['.repeat(depth)}${']'.repeat(depth)}}`;

const suite = processSuite();

describe('fault 13: hostile nesting', () => {
  it('a 5,000-deep and a 400,000-deep message: alive, counted as too_deep, the next event handled', async () => {
    const d = await suite.start({ plugins: ['record-types.js'], env: { RECORD_TYPES: 'sentinel' }, http: true });
    const { file } = d;
    const c = suite.cmd;
    const channel = keys.channel('sentinel');

    const small = nested(5_000);
    expect(small.length).toBeLessThan(11_000);
    expect(await c.publish(channel, small)).toBe(1);
    await c.publish(channel, JSON.stringify({ event: 'sentinel', data: { uid: 'after-5000' } }));
    await waitFor('the event after the 5,000-deep one handled', () => readRecords(file).length === 1, 5_000);

    const big = nested(400_000);
    expect(Buffer.byteLength(big)).toBeLessThan(1_048_576);
    expect(await c.publish(channel, big)).toBe(1);
    await c.publish(channel, JSON.stringify({ event: 'sentinel', data: { uid: 'after-400000' } }));
    await waitFor('the event after the 400,000-deep one handled', () => readRecords(file).length === 2, 10_000);

    expect(isAlive(d), 'daemon alive').toBe(true);
    const records = readRecords(file) as unknown as Array<{ data: { uid?: string } }>;
    expect(records.map((r) => r.data.uid)).toEqual(['after-5000', 'after-400000']);
    const bad = d.logs.filter((l) => l['code'] === 'AGENTD_ERR_BAD_EVENT');
    expect(bad.map((l) => [l['reason'], l['bytes']])).toEqual([
      ['too_deep', Buffer.byteLength(small)],
      ['too_deep', Buffer.byteLength(big)],
    ]);
    const m = await d.scrape();
    expect(metric(m, 'agentd_events_dropped_total', { event: 'invalid', reason: 'too_deep' })).toBe(2);
    expect(metric(m, 'agentd_events_received_total', { event: 'sentinel' })).toBe(2);
    expectSound(d, file);
  });
});
