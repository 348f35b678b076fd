/**
 * Fault 7, slow consumer: the server's pubsub output-buffer limit is lowered
 * to 256 KB hard / 128 KB for 2 s, the handler takes 50 ms with one slot and a
 * queue of 100, and a pipelined publisher floods 50,000 events of ~1 KB
 * (~50 MB). Pass: the queue never exceeds its bound, drops are counted (and
 * add up: received = handled + dropped, nothing waiting at the end), and the
 * daemon keeps its connection — or, if Redis cut it off, it reconnected and
 * reported the gap ('event subscription confirmed again', gapMs).
 *
 * Redis 7.0 has no INFO counter for output-buffer disconnections (7.2 added
 * client_output_buffer_limit_disconnections), so a cut is detected from the
 * subscriber's CLIENT LIST id, the server log and the daemon's own log.
 */
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { expectSound, mb, processSuite, recordedUids, rssKb, scrape } from '../helpers/process.ts';
import { hasMsg, keys, metric, parseClientList, waitFor } from '../helpers/util.ts';

const EVENTS = 50_000;
const CHUNK = 2_000;
const QUEUE_MAX = 100;
/** ~1 KB of base64: ordinary text. (A run of one letter is a different test: see the report on parseEnvelope's pre-check.) */
const PAD = randomBytes(750).toString('base64');

const suite = processSuite({ redis: { requireControl: true, args: ['--client-output-buffer-limit', 'pubsub 256kb 128kb 2'] } });

describe('fault 7: slow consumer under a low pubsub output-buffer limit', () => {
  it('50,000 × 1 KB at a 50 ms handler: queue within its bound, drops counted and adding up, connection kept or the gap reported', { timeout: 120_000 }, async () => {
    const d = await suite.start({
      plugins: ['recorder.js'],
      http: true,
      env: { RECORD_DELAY_MS: '50', AGENTD_QUEUE_CONCURRENCY: '1', AGENTD_QUEUE_MAX: String(QUEUE_MAX) },
    });
    const { id, file, httpPort } = d;
    const c = suite.cmd;
    const limit = (await c.config('GET', 'client-output-buffer-limit')) as string[];
    expect(limit[1]).toContain('pubsub 262144 131072 2');
    const subClient = async (): Promise<Record<string, string> | undefined> =>
      parseClientList((await c.client('LIST')) as string).find((x) => x['name'] === `agentd:${id}:sub`);
    const subBefore = await subClient();
    expect(subBefore, `CLIENT LIST has agentd:${id}:sub`).toBeDefined();
    // The daemon's own agent_online counted first, so the deltas below move only with the flood.
    await waitFor('own agent_online counted', async () => metric(await scrape(httpPort), 'agentd_events_received_total', { event: 'agent_online' }) >= 1, 5_000);
    const before = await scrape(httpPort);
    const rssBefore = rssKb(d.pid);

    // Scrape /metrics and CLIENT LIST all through the flood and the drain.
    let flooding = true;
    const waitingSeen: number[] = [];
    const omemSeen: number[] = [];
    let scrapes = 0;
    const scraper = (async () => {
      while (flooding) {
        const m = await scrape(httpPort).catch(() => undefined);
        if (m !== undefined) {
          scrapes++;
          waitingSeen.push(metric(m, 'agentd_queue_waiting'));
        }
        await sleep(25);
      }
    })();
    const monitor = suite.redis.client({ connectionName: 'fault7-monitor' });
    const watcher = (async () => {
      while (flooding) {
        const list = (await monitor.client('LIST').catch(() => '')) as string;
        const sub = parseClientList(list).find((x) => x['name'] === `agentd:${id}:sub`);
        if (sub) omemSeen.push(Number(sub['omem'] ?? 0));
        await sleep(20);
      }
    })();

    let delivered = 0; // sum of PUBLISH replies: copies Redis put in the daemon's output buffer
    let floodMs = 0;
    try {
      // The flood: pipelined chunks, each event a unique uid and ~1 KB.
      const t0 = Date.now();
      for (let start = 0; start < EVENTS; start += CHUNK) {
        const pipe = c.pipeline();
        for (let i = start; i < Math.min(EVENTS, start + CHUNK); i++) {
          pipe.publish(keys.channel('flood'), `{"event":"flood","data":{"uid":"${id}-${i}","pad":"${PAD}"}}`);
        }
        for (const [err, n] of (await pipe.exec()) ?? []) if (err === null) delivered += n as number;
      }
      floodMs = Date.now() - t0;
      // Everything read: the received count stops moving.
      let received = -1;
      await waitFor(
        'received count settled',
        async () => {
          const now = metric(await scrape(httpPort), 'agentd_events_received_total', { event: 'other' });
          const settled = now === received;
          received = now;
          return settled;
        },
        30_000,
        500,
      );
      expect(Math.max(...waitingSeen), 'agentd_queue_waiting never above queue.max (during the flood)').toBeLessThanOrEqual(QUEUE_MAX);
      // Then the queue drains: at most 100 waiting × 50 ms.
      await waitFor(
        'queue drained',
        async () => {
          const m = await scrape(httpPort);
          return metric(m, 'agentd_queue_waiting') === 0 && metric(m, 'agentd_queue_running') === 0;
        },
        20_000,
        100,
      );
    } finally {
      flooding = false;
      await Promise.allSettled([scraper, watcher]);
    }
    const rssAfter = rssKb(d.pid);

    const after = await scrape(httpPort);
    const delta = (name: string, labels: Record<string, string> = {}): number => metric(after, name, labels) - metric(before, name, labels);
    const receivedFlood = delta('agentd_events_received_total', { event: 'other' });
    const dispatched = delta('agentd_events_dispatched_total', { event: 'other' });
    const dropped = delta('agentd_events_dropped_total', { event: 'other', reason: 'queue_full' });
    const handled = recordedUids(file, (r) => r.event === 'flood').length;
    const subAfter = await subClient();
    const serverLog = await ((suite.redis as unknown as { log?: () => Promise<string> }).log?.() ?? Promise.resolve(''));
    const cutLines = serverLog.split('\n').filter((l) => /output buffer limits/.test(l));
    const lost = d.logs.filter(hasMsg(/event subscription lost/));
    const again = d.logs.filter(hasMsg(/event subscription confirmed again/));
    const cut = subAfter?.['id'] !== subBefore?.['id'] || cutLines.length > 0 || lost.length > 0;
    const report = {
      outcome: cut ? 'CUT OFF by the server, reconnected' : 'connection KEPT',
      published: EVENTS,
      deliveredPerRedis: delivered,
      floodMs,
      received: receivedFlood,
      dispatched,
      handled,
      droppedQueueFull: dropped,
      maxQueueWaiting: Math.max(...waitingSeen),
      scrapes,
      maxSubscriberOmemKb: Math.round(Math.max(0, ...omemSeen) / 1024),
      subClientId: { before: subBefore?.['id'], after: subAfter?.['id'] },
      serverCutLines: cutLines.length,
      gapsReported: again.map((l) => l['gapMs']),
      rssMb: { before: mb(rssBefore), after: mb(rssAfter) },
      dropLogLines: d.logs.filter(hasMsg(/handler queue full/)).length,
    };
    console.log(`fault 7 (slow consumer): ${JSON.stringify(report)}`);

    // The queue never exceeded its bound, and drops are counted and add up.
    expect(scrapes, 'metrics scraped during the flood').toBeGreaterThan(5);
    expect(Math.max(...waitingSeen), 'agentd_queue_waiting never above queue.max (flood and drain)').toBeLessThanOrEqual(QUEUE_MAX);
    expect(dropped, 'queue_full drops counted').toBeGreaterThan(0);
    expect(dispatched + dropped, 'every event received was either queued or dropped').toBe(receivedFlood);
    expect(handled, 'every queued event was handled (nothing waiting at the end)').toBe(dispatched);
    expect(d.logs.filter(hasMsg(/handler queue full/)).length, 'drops are logged, but not one line per drop').toBeLessThan(20);

    // Connection kept, or cut and reported.
    expect(subAfter, 'the daemon has its subscriber connection at the end').toBeDefined();
    if (!cut) {
      expect(receivedFlood, 'connection kept: every published event was read').toBe(EVENTS);
      expect(delivered).toBe(EVENTS);
    } else {
      expect(again.length, "cut off: 'event subscription confirmed again' logged").toBeGreaterThanOrEqual(1);
      for (const l of again) expect(l['gapMs'] as number, 'the gap is reported').toBeGreaterThan(0);
      expect(receivedFlood).toBeLessThan(EVENTS);
    }
    // Still delivering.
    await c.publish(keys.channel('flood'), JSON.stringify({ event: 'flood', data: { uid: `${id}-final` } }));
    await waitFor('an event after the flood handled', () => recordedUids(file).includes(`${id}-final`), 5_000);
    expect(rssAfter - rssBefore, 'RSS growth after the flood (KiB)').toBeLessThan(100 * 1024);
    expectSound(d, file);
  });
});
