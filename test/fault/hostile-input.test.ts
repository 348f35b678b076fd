/**
 * Fault 8, hostile input on an event channel: a 10 MB message, invalid JSON,
 * `__proto__` / `constructor.prototype` keys (plain and \u-escaped),
 * non-object JSON (array, number, string, null), envelopes without a usable
 * event type, and a well-formed event of a type no plugin handles. Pass:
 * nothing reaches a handler (the record file holds only the final valid
 * sentinel), one log line each (AGENTD_ERR_BAD_EVENT with the reason, never
 * the payload), counters move, the daemon stays alive; and the 10 MB message
 * does not leave the process's memory high.
 *
 * Every hostile message that is an object claims `"event": "sentinel"`, the
 * one type the plugin handles, so a check that let it through would show.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { expectSound, mb, processSuite, readRecords, rssKb } from '../helpers/process.ts';
import { keys, metric, waitFor } from '../helpers/util.ts';

/** In every hostile payload; must never show up in a log line. */
const MARK = 'HOSTILE-PAYLOAD-MARK';

interface Hostile {
  readonly name: string;
  readonly payload: string | Buffer;
  /** The reason the daemon must give; undefined: a valid event nobody handles. */
  readonly reason: 'too_large' | 'not_json' | 'not_object' | 'no_event' | 'forbidden_key' | undefined;
}

const TEN_MB = 10 * 1024 * 1024;

const HOSTILE: readonly Hostile[] = [
  { name: '10 MB message', reason: 'too_large', payload: `{"event":"sentinel","data":"${MARK}${'x'.repeat(TEN_MB)}"}` },
  { name: 'invalid JSON', reason: 'not_json', payload: `{"event":"sentinel","data":"${MARK}"` },
  { name: 'invalid UTF-8 / binary', reason: 'not_json', payload: Buffer.from([0xff, 0xfe, 0x00, 0x7b, 0x80]) },
  { name: '__proto__ in data', reason: 'forbidden_key', payload: `{"event":"sentinel","data":{"${MARK}":1,"__proto__":{"polluted":true}}}` },
  { name: '__proto__ at the top', reason: 'forbidden_key', payload: `{"__proto__":{"polluted":true},"event":"sentinel","data":"${MARK}"}` },
  { name: 'constructor.prototype', reason: 'forbidden_key', payload: `{"event":"sentinel","data":{"constructor":{"prototype":{"polluted":true}},"m":"${MARK}"}}` },
  { name: '\\u-escaped __proto__', reason: 'forbidden_key', payload: `{"event":"sentinel","data":{"\\u005f\\u005fproto\\u005f\\u005f":{"polluted":true},"m":"${MARK}"}}` },
  { name: 'JSON array', reason: 'not_object', payload: `["sentinel","${MARK}"]` },
  { name: 'JSON number', reason: 'not_object', payload: '42' },
  { name: 'JSON string', reason: 'not_object', payload: `"${MARK}"` },
  { name: 'JSON null', reason: 'not_object', payload: 'null' },
  { name: 'no event field', reason: 'no_event', payload: `{"data":"${MARK}"}` },
  { name: 'event not a string', reason: 'no_event', payload: `{"event":["sentinel"],"data":"${MARK}"}` },
  { name: 'empty event', reason: 'no_event', payload: `{"event":"","data":"${MARK}"}` },
  { name: 'event type of 300 characters', reason: 'no_event', payload: `{"event":"${'s'.repeat(300)}","data":"${MARK}"}` },
  { name: 'unknown event type', reason: undefined, payload: `{"event":"no_such_type","data":{"uid":"unknown-type","m":"${MARK}"}}` },
];

const suite = processSuite({ redis: { requireControl: true } });

describe('fault 8: hostile input', () => {
  it('nothing reaches a handler, one AGENTD_ERR_BAD_EVENT line each without the payload, counters move, alive, memory released', async () => {
    const d = await suite.start({
      plugins: ['record-types.js'],
      http: true,
      // Every message must reach intake, also on channels no handler names (events.subscribe=auto would not subscribe to them).
      env: { RECORD_TYPES: 'sentinel', AGENTD_EVENT_SUBSCRIBE: 'pattern' },
    });
    const { file } = d;
    const c = suite.cmd;
    const channel = keys.channel('sentinel');
    // The daemon's own agent_online counted first, so the deltas below move only with what the test sends.
    await waitFor('own agent_online counted', async () => metric(await d.scrape(), 'agentd_events_received_total', { event: 'agent_online' }) >= 1, 5_000);
    const before = await d.scrape();
    const rssBefore = rssKb(d.pid);
    const linesBefore = d.logs.length;

    // The 10 MB message first, alone, to see its effect on memory.
    const big = HOSTILE[0] as Hostile;
    expect(await c.publish(channel, big.payload)).toBe(1);
    await d.waitForLog((l) => l['code'] === 'AGENTD_ERR_BAD_EVENT' && l['reason'] === 'too_large', 5_000);
    const rssAfterBig = rssKb(d.pid);

    // The unknown type goes on its own channel: on another type's channel it would be refused as
    // channel_mismatch (security.channelCheck, on by default since issue 12).
    for (const h of HOSTILE.slice(1)) expect(await c.publish(h.name === 'unknown event type' ? keys.channel('no_such_type') : channel, h.payload), h.name).toBe(1);
    await c.publish(channel, JSON.stringify({ event: 'sentinel', data: { uid: 'final' } }));
    await waitFor('the sentinel handled', () => readRecords(file).length > 0, 5_000);
    await sleep(300); // anything that slipped through would be recorded by now

    const after = await d.scrape();
    const lines = d.logs.slice(linesBefore);
    const bad = lines.filter((l) => l['code'] === 'AGENTD_ERR_BAD_EVENT');
    // Memory a few seconds later (V8 may keep some of the heap it grew).
    await sleep(3_000);
    const rssLater = rssKb(d.pid);

    const expectedReasons = HOSTILE.filter((h) => h.reason !== undefined).map((h) => h.reason);
    const counts: Record<string, number> = {};
    for (const r of expectedReasons) counts[r as string] = (counts[r as string] ?? 0) + 1;
    const delta = (name: string, labels: Record<string, string> = {}): number => metric(after, name, labels) - metric(before, name, labels);
    const report = {
      rssMb: { before: mb(rssBefore), afterBig: mb(rssAfterBig), threeSecondsLater: mb(rssLater) },
      badLines: bad.map((l) => ({ reason: l['reason'], bytes: l['bytes'] })),
      droppedInvalid: Object.fromEntries(Object.keys(counts).map((r) => [r, delta('agentd_events_dropped_total', { event: 'invalid', reason: r })])),
      unhandled: delta('agentd_events_unhandled_total'),
    };
    console.log(`fault 8 (hostile input): ${JSON.stringify(report)}`);

    // Nothing but the sentinel reached the handler, and nothing polluted Object.prototype.
    const records = readRecords(file) as unknown as Array<{ event: string; data: { uid?: string }; protoClean: boolean }>;
    expect(records.map((r) => r.data.uid)).toEqual(['final']);
    expect(records[0]?.protoClean, 'Object.prototype not polluted').toBe(true);

    // One line per bad message, in order, with the reason; never the payload.
    expect(bad.map((l) => l['reason'])).toEqual(expectedReasons);
    for (const l of bad) {
      expect(l['level']).toBe('warn');
      expect(l['channel']).toBe(channel);
    }
    expect(bad[0]?.['bytes']).toBe(Buffer.byteLength(big.payload));
    expect(d.logs.filter((l) => JSON.stringify(l).includes(MARK)), 'log lines carrying a payload').toEqual([]);
    // The unknown type: counted as unhandled; nothing else logged about the whole batch.
    expect(lines.filter((l) => l['code'] !== 'AGENTD_ERR_BAD_EVENT' && l['level'] !== 'debug' && l['level'] !== 'trace'), 'other log lines').toEqual([]);

    // Counters.
    for (const [reason, n] of Object.entries(counts)) {
      expect(delta('agentd_events_dropped_total', { event: 'invalid', reason }), `agentd_events_dropped_total{event="invalid",reason="${reason}"}`).toBe(n);
    }
    expect(delta('agentd_events_unhandled_total'), 'agentd_events_unhandled_total').toBe(1);
    expect(delta('agentd_events_received_total', { event: 'sentinel' }), 'valid sentinel events received').toBe(1);

    // Memory: the 10 MB message is not kept.
    expect(rssLater - rssBefore, 'RSS growth that stays after the 10 MB message (KiB)').toBeLessThan(30 * 1024);

    expectSound(d, file);
  });
});
