/**
 * A flood of large events behind a slow handler. The queue was bounded by
 * count only (queue.max, 10,000 calls), each call keeping its event (up to
 * events.maxBytes, 1 MiB) alive: a few hundred large messages from any
 * publisher outgrew the unit's MemoryMax=512M and the kernel killed the
 * daemon (no leave: peers reported it down). Pass, with the default
 * queue.maxBytes: the waiting events never hold more than it, the rest is
 * dropped and counted, and every message is accounted for.
 */
import { describe, expect, it } from 'vitest';
import { schema } from '../../src/config/schema.ts';
import { expectNoFatal, isAlive, mb, processSuite, rssKb } from '../helpers/process.ts';
import { keys, metric, waitFor } from '../helpers/util.ts';

const EVENTS = 200;
const SIZE = 1_000_000;

const suite = processSuite({ redis: { requireControl: true } });

describe('a flood of large events behind a slow handler', () => {
  it(`${EVENTS} events of ${SIZE} bytes: the waiting ones stay within queue.maxBytes, the rest counted`, async () => {
    const d = await suite.start({
      plugins: ['recorder.js'],
      http: true,
      env: { RECORD_DELAY_MS: '120000', AGENTD_HANDLER_TIMEOUT_MS: '120000', AGENTD_QUEUE_CONCURRENCY: '1' },
    });
    const rssBefore = rssKb(d.pid);
    const c = suite.cmd;
    const payload = JSON.stringify({ event: 'big', data: 'x'.repeat(SIZE - 30) });
    // Paced in batches: Redis itself cuts off a subscriber more than 32 MB behind (client-output-buffer-limit pubsub).
    for (let i = 0; i < EVENTS; i += 10) {
      for (let j = 0; j < 10; j++) await c.publish(keys.channel('big'), payload);
      await waitFor('the batch read', async () => metric(await d.scrape(), 'agentd_events_received_total', { event: 'other' }) >= i + 10, 10_000);
    }
    const accounted = (m: string): number =>
      metric(m, 'agentd_events_dispatched_total') + metric(m, 'agentd_events_dropped_total', { reason: 'queue_full' });
    const m = await waitFor('every event dispatched or dropped', async () => {
      const text = await d.scrape();
      return accounted(text) >= EVENTS ? text : undefined;
    }, 20_000);
    const maxWaiting = Math.floor(schema.queue.maxBytes.default / payload.length);
    console.log(`large events: waiting ${metric(m, 'agentd_queue_waiting')} (bound ${maxWaiting}), dropped ${metric(m, 'agentd_events_dropped_total', { reason: 'queue_full' })}, rss ${mb(rssBefore)} -> ${mb(rssKb(d.pid))} MB`);
    expect(metric(m, 'agentd_queue_waiting')).toBeLessThanOrEqual(maxWaiting);
    expect(metric(m, 'agentd_events_dropped_total', { reason: 'queue_full' })).toBeGreaterThanOrEqual(EVENTS - maxWaiting - 1);
    expect(isAlive(d)).toBe(true);
    expectNoFatal(d);
  });
});
