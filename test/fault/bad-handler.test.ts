/**
 * Fault 9, bad handlers: one throws, one rejects, one never settles (handler
 * time limit 300 ms), one spins the CPU for 1 s — all behind a single queue
 * slot (queue.concurrency 1), with well-behaved `after` events queued between
 * them, and a second daemon in the same den watching with ttl 2 s / interval
 * 0.5 s. Pass: errors isolated and logged (AGENTD_ERR_HANDLER_FAILED /
 * AGENTD_ERR_HANDLER_TIMEOUT with plugin and event), the time limit aborts
 * the hanging call's signal and frees the slot (the `after` events behind it
 * are handled), and no false death: no agent_down for the busy agent.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { expectSound, peerHealthEnv, processSuite, readRecords } from '../helpers/process.ts';
import { collect, hasMsg, keys, logTime, metric, uniqueId, waitFor } from '../helpers/util.ts';

const HANDLER_TIMEOUT_MS = 300;
const TTL_S = 2;
const INTERVAL_S = 0.5;
const SWEEP_S = 0.5;

interface Line {
  event: string;
  type?: string;
  uid?: string;
  reason?: string;
  data?: { uid?: string };
  at: number;
}

const suite = processSuite({ redis: { requireControl: true }, env: peerHealthEnv({ ttl: TTL_S, interval: INTERVAL_S, sweep: SWEEP_S, notifications: 'enable' }) });

describe('fault 9: bad handlers', () => {
  it('throw, reject, never-resolve and a 1 s spin: isolated and logged, the slot freed at the time limit, no false death', async () => {
    const den = uniqueId('f9den');
    const d = await suite.spawn({
      den,
      plugins: ['bad-handlers.js', 'spin.js', 'record-types.js'],
      http: true,
      env: { RECORD_TYPES: 'after', SPIN_MS: '1000', AGENTD_HANDLER_TIMEOUT_MS: String(HANDLER_TIMEOUT_MS), AGENTD_QUEUE_CONCURRENCY: '1' },
    });
    const { id, file } = d;
    const watcher = await suite.spawn({ den, id: uniqueId('f9watch') });
    const watcherId = watcher.id;
    const c = suite.cmd;
    const membership = await collect(suite.redis.client({ connectionName: 'fault9-observer' }), 'agent:events:agent_*');
    await Promise.all([d.waitForLog(hasMsg('agentd ready'), 15_000), watcher.waitForLog(hasMsg('agentd ready'), 15_000)]);
    await sleep(1_000);

    // One pipeline, in this order, behind one slot.
    const order: Array<[type: string, uid: string]> = [
      ['throw', 't1'],
      ['after', 'a1'],
      ['reject', 'r1'],
      ['after', 'a2'],
      ['hang', 'h1'],
      ['after', 'a3'],
      ['after', 'a4'],
      ['spin', 's1'],
      ['after', 'a5'],
    ];
    const pipe = c.pipeline();
    for (const [type, uid] of order) pipe.publish(keys.channel(type), JSON.stringify({ event: type, data: { uid: `${id}-${uid}`, den } }));
    const t0 = Date.now();
    await pipe.exec();
    await waitFor('all five after events handled', () => readRecords(file).filter((r) => r.event === 'after').length === 5, 10_000);
    const spinDone = await d.waitForLog(hasMsg('spin done'), 5_000);
    // The spin ends ~1 s after it started; wait out 2 × ttl from the end of the spin for a (false) agent_down.
    await sleep(Math.max(0, logTime(spinDone) + 2 * TTL_S * 1000 - Date.now()));

    const lines = readRecords(file) as unknown as Line[];
    const started = (type: string): Line | undefined => lines.find((l) => l.event === 'bad-started' && l.type === type);
    const after = (n: number): Line | undefined => lines.find((l) => l.event === 'after' && l.data?.uid === `${id}-a${n}`);
    const hangStart = started('hang');
    const aborted = lines.filter((l) => l.event === 'hang-aborted');
    const failed = d.logs.filter((l) => l['code'] === 'AGENTD_ERR_HANDLER_FAILED');
    const timedOut = d.logs.filter((l) => l['code'] === 'AGENTD_ERR_HANDLER_TIMEOUT');
    const m = await d.scrape();
    const calls = (event: string, outcome: string): number => metric(m, 'agentd_handler_calls_total', { plugin: 'bad', event, outcome });
    const downs = membership.filter((x) => x.json?.['event'] === 'agent_down');
    const report = {
      slotFreedAfterMs: (after(3)?.at ?? Number.NaN) - (hangStart?.at ?? Number.NaN),
      spunMs: spinDone['spunMs'],
      loopWarnings: d.logs.filter((l) => l['level'] === 'warn' && l['component'] === 'presence').map((l) => l['msg']),
      allDoneMs: Math.max(...lines.map((l) => l.at)) - t0,
      agentDown: downs.length,
    };
    console.log(`fault 9 (bad handlers): ${JSON.stringify(report)}`);

    // Errors isolated and logged with plugin and event.
    expect(failed.map((l) => [l['plugin'], l['event']])).toEqual([
      ['bad', 'throw'],
      ['bad', 'reject'],
    ]);
    for (const l of failed) {
      expect(l['level']).toBe('error');
      expect(String(l['err'])).toMatch(/boom from the (throw|reject) handler/);
    }
    expect(timedOut.map((l) => [l['plugin'], l['event'], l['timeoutMs']])).toEqual([['bad', 'hang', HANDLER_TIMEOUT_MS]]);
    expect(calls('throw', 'error')).toBe(1);
    expect(calls('reject', 'error')).toBe(1);
    expect(calls('hang', 'timeout')).toBe(1);

    // The time limit aborted the hanging call's signal and freed the only slot.
    expect(aborted).toHaveLength(1);
    expect(aborted[0]).toMatchObject({ uid: `${id}-h1`, reason: 'TimeoutError' });
    const freedMs = (after(3)?.at as number) - (hangStart?.at as number);
    expect(freedMs, 'the next call starts at the time limit').toBeGreaterThanOrEqual(HANDLER_TIMEOUT_MS - 5);
    expect(freedMs, 'the next call starts soon after the time limit').toBeLessThan(HANDLER_TIMEOUT_MS + 250);

    // FIFO behind one slot: every event handled once, in order.
    expect(lines.filter((l) => l.event === 'bad-started').map((l) => l.type)).toEqual(['throw', 'reject', 'hang']);
    expect(lines.filter((l) => l.event === 'after').map((l) => l.data?.uid)).toEqual([1, 2, 3, 4, 5].map((n) => `${id}-a${n}`));
    expect(after(5)?.at as number, 'a5 ran after the spin').toBeGreaterThanOrEqual(logTime(spinDone));
    expect(spinDone['spunMs'] as number).toBeGreaterThanOrEqual(1_000);

    // No false death: neither agent reported down, both still in the den and beating.
    expect(downs, 'agent_down events').toEqual([]);
    expect(membership.filter((x) => (x.json?.['data'] as { rejoined?: boolean } | undefined)?.rejoined === true), 'rejoins').toEqual([]);
    expect(await c.sismember(keys.den(den), id)).toBe(1);
    expect(await c.pttl(keys.heartbeat(id))).toBeGreaterThan(0);
    expect(watcher.logs.filter(hasMsg(/agent down/))).toEqual([]);

    expectSound(d, file);
    expectSound(watcher, undefined);
  });
});
