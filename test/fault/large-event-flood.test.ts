/**
 * A flood of large events behind a slow handler. The queue was bounded by
 * count only (queue.max, 10,000 calls), each call keeping its event (up to
 * events.maxBytes, 1 MiB) alive: a few hundred large messages from any
 * publisher outgrew the unit's MemoryMax=512M and the kernel killed the
 * daemon (no leave: peers reported it down). Pass, with the default
 * queue.maxBytes: the waiting events never hold more than it, the rest is
 * dropped and counted, and every message is accounted for.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { schema } from '../../src/config/schema.ts';
import { spawnAgentd, type DaemonProcess } from '../helpers/daemon.ts';
import { freePort } from '../helpers/ports.ts';
import { startRedis, type TestRedis } from '../helpers/redis.ts';
import { expectNoFatal, isAlive, mb, RECORDER, rssKb, scrape } from '../helpers/process.ts';
import { hasMsg, keys, metric, uniqueId, waitFor } from '../helpers/util.ts';

const EVENTS = 200;
const SIZE = 1_000_000;

describe('a flood of large events behind a slow handler', () => {
  let redis: TestRedis;
  let tmp: string;
  let d: DaemonProcess | undefined;

  beforeAll(async () => {
    redis = await startRedis({ requireControl: true });
    tmp = await mkdtemp(join(tmpdir(), 'agentd-large-'));
  });

  afterAll(async () => {
    await d?.stop();
    await redis?.stop();
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  it(`${EVENTS} events of ${SIZE} bytes: the waiting ones stay within queue.maxBytes, the rest counted`, async () => {
    const port = await freePort();
    d = spawnAgentd(['run'], {
      env: {
        AGENTD_REDIS_URL: redis.url,
        AGENTD_AGENT_ID: uniqueId('large'),
        AGENTD_DEN: uniqueId('largeden'),
        AGENTD_HTTP_PORT: String(port),
        AGENTD_PLUGINS: RECORDER,
        RECORD_FILE: join(tmp, 'r.jsonl'),
        RECORD_DELAY_MS: '120000',
        AGENTD_HANDLER_TIMEOUT_MS: '120000',
        AGENTD_QUEUE_CONCURRENCY: '1',
      },
    });
    await d.waitForLog(hasMsg('agentd ready'), 15_000);
    const rssBefore = rssKb(d.pid);
    const c: Redis = redis.client({ connectionName: 'large-cmd' });
    const payload = JSON.stringify({ event: 'big', data: 'x'.repeat(SIZE - 30) });
    // Paced in batches: Redis itself cuts off a subscriber more than 32 MB behind (client-output-buffer-limit pubsub).
    for (let i = 0; i < EVENTS; i += 10) {
      for (let j = 0; j < 10; j++) await c.publish(keys.channel('big'), payload);
      await waitFor('the batch read', async () => metric(await scrape(port), 'agentd_events_received_total', { event: 'other' }) >= i + 10, 10_000);
    }
    const accounted = (m: string): number =>
      metric(m, 'agentd_events_dispatched_total') + metric(m, 'agentd_events_dropped_total', { reason: 'queue_full' });
    const m = await waitFor('every event dispatched or dropped', async () => {
      const text = await scrape(port);
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
