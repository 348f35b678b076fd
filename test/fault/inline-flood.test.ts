/**
 * Issue 13 attack, real processes: a synchronous handler (test/fixtures/plugins/sync-work.js)
 * is called inline from the socket read while nothing waits. Under a flood it must not starve
 * the heartbeat, the HTTP endpoint or the drain.
 *
 * 1. Each call blocks 5–50 ms, 4,000 events arrive in pipelines, queue.max 150: a peer watching
 *    with ttl 2 s / interval 0.5 s must never see the heartbeat key expire (sampled all along),
 *    /metrics answers all through, the loop-delay warning (half of ttl − interval) never fires,
 *    and every event is handled or counted as dropped.
 * 2. SIGTERM while a flood is being read (it goes on until the exit): what was queued before the unsubscribe is
 *    handled exactly once, nothing is dropped at shutdown, exit 0.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { expectSound, peerHealthEnv, processSuite, readRecords, scrape } from '../helpers/process.ts';
import { collect, hasMsg, keys, metric, uniqueId, waitFor } from '../helpers/util.ts';

const TTL_S = 2;
const INTERVAL_S = 0.5;

const suite = processSuite({ redis: { requireControl: true }, env: peerHealthEnv({ ttl: TTL_S, interval: INTERVAL_S, sweep: 0.5, notifications: 'enable' }) });

interface Stats {
  received: number;
  dispatched: number;
  unhandled: number;
  completed: number;
  failed: number;
  dropped: { queue_full: number; evicted: number; shutdown: number };
  invalid: Record<string, number>;
}

describe('inline dispatch under a flood, real processes', () => {
  it('4,000 events at a synchronous 5–50 ms handler: the heartbeat key never expires, /metrics answers, drops counted', { timeout: 90_000 }, async () => {
    const EVENTS = 4_000;
    const den = uniqueId('ifden');
    const d = await suite.spawn({
      den,
      plugins: ['sync-work.js'],
      http: true,
      env: { SYNC_SPIN_MIN_MS: '5', SYNC_SPIN_MAX_MS: '50', AGENTD_QUEUE_MAX: '150' },
    });
    const watcher = await suite.spawn({ den, id: uniqueId('ifwatch') });
    const membership = await collect(suite.redis.client({ connectionName: 'inline-flood-observer' }), 'agent:events:agent_*');
    await Promise.all([d.ready(), watcher.ready()]);
    const c = suite.cmd;
    const monitor = suite.redis.client({ connectionName: 'inline-flood-pttl' });

    let flooding = true;
    let scrapes = 0;
    let scrapeFailures = 0;
    let worstLoopDelay = 0;
    const scraper = (async () => {
      while (flooding) {
        try {
          const m = await scrape(d.httpPort);
          scrapes++;
          worstLoopDelay = Math.max(worstLoopDelay, metric(m, 'agentd_event_loop_delay_seconds'));
        } catch {
          scrapeFailures++;
        }
      }
    })();
    const pttls: number[] = [];
    const sampler = (async () => {
      while (flooding) {
        pttls.push(await monitor.pttl(keys.heartbeat(d.id)));
        await sleep(10); // pacing, not synchronisation: ~100 samples a second
      }
    })();

    try {
      for (let start = 0; start < EVENTS; start += 500) {
        const pipe = c.pipeline();
        for (let i = start; i < start + 500; i++) pipe.publish(keys.channel('work'), JSON.stringify({ event: 'work', data: { uid: `${d.id}-${i}`, i } }));
        await pipe.exec();
      }
      await waitFor(
        'every event read and the queue empty',
        async () => {
          const m = await scrape(d.httpPort);
          return metric(m, 'agentd_events_received_total', { event: 'work' }) === EVENTS && metric(m, 'agentd_queue_waiting') === 0 && metric(m, 'agentd_queue_running') === 0;
        },
        60_000,
        100,
      );
    } finally {
      flooding = false;
      await Promise.all([scraper, sampler]);
    }

    const m = await scrape(d.httpPort);
    const handled = readRecords(d.file).filter((r) => r.event === 'work').length;
    const dropped = metric(m, 'agentd_events_dropped_total', { event: 'work' });
    const downs = membership.filter((x) => x.json?.['event'] === 'agent_down');
    const report = { handled, dropped, scrapes, scrapeFailures, worstLoopDelayMs: Math.round(worstLoopDelay * 1000), minPttlMs: Math.min(...pttls), samples: pttls.length, agentDown: downs.length };
    console.log(`inline flood (sync 5–50 ms): ${JSON.stringify(report)}`);

    expect(handled + dropped, 'handled + dropped = published').toBe(EVENTS);
    expect(metric(m, 'agentd_handler_calls_total', { plugin: 'sync-work', event: 'work', outcome: 'ok' })).toBe(handled);
    expect(scrapeFailures, '/metrics answered every scrape').toBe(0);
    expect(scrapes).toBeGreaterThan(0);
    // The heartbeat key never ran out (-2: gone, -1: no expiry).
    expect(pttls.filter((p) => p <= 0), 'pttl samples at or below 0').toEqual([]);
    expect(d.logs.filter(hasMsg(/heartbeat is late|event loop was blocked/)), 'late-heartbeat and blocked-loop warnings').toEqual([]);
    expect(downs, 'agent_down events').toEqual([]);
    expect(await c.sismember(keys.den(den), d.id)).toBe(1);
    expectSound(d, d.file);
    expectSound(watcher, undefined);
  });

  it('SIGTERM while a flood is read by a synchronous handler: everything queued is handled once, nothing dropped at shutdown, exit 0', { timeout: 60_000 }, async () => {
    // At most 300 calls waiting (well under a second of work) and a drain timeout that a loaded machine cannot miss.
    const d = await suite.start({ plugins: ['sync-work.js'], env: { SYNC_SPIN_MIN_MS: '0', SYNC_SPIN_MAX_MS: '1', AGENTD_QUEUE_MAX: '300', AGENTD_DRAIN_TIMEOUT_MS: '30000' } });
    const c = suite.cmd;
    // The flood goes on until the daemon has exited: SIGTERM arrives while it is being read.
    let published = 0;
    let exited = false;
    void d.exited.then(() => (exited = true));
    const flood = (async () => {
      while (!exited) {
        const pipe = c.pipeline();
        for (let i = published; i < published + 200; i++) pipe.publish(keys.channel('work'), JSON.stringify({ event: 'work', data: { uid: `${d.id}-${i}`, i } }));
        await pipe.exec();
        published += 200;
      }
    })();
    await waitFor('the first events handled', () => readRecords(d.file).length >= 100, 10_000);
    d.signal('SIGTERM');
    const [exit] = await Promise.all([d.exited, flood]);
    const stopped = d.logs.find(hasMsg('agentd stopped'));
    const stats = stopped?.['stats'] as Stats | undefined;
    const handled = readRecords(d.file).filter((r) => r.event === 'work');
    console.log(`inline flood SIGTERM: published ${published}, handled ${handled.length}, stats ${JSON.stringify(stats)}`);

    expect(exit).toEqual({ code: 0, signal: null });
    expect(stopped?.['drained']).toBe(true);
    expect(stats).toBeDefined();
    // queue_full drops while the flood outruns the handler are fine; none at shutdown: the drain finished the queue.
    expect(stats!.dropped.shutdown, 'dropped at shutdown').toBe(0);
    expect(stats!.dropped.evicted).toBe(0);
    expect(stats!.failed).toBe(0);
    // Own membership events have no handler here: unhandled. Every work event read was handled.
    expect(stats!.received).toBe(stats!.dispatched + stats!.unhandled + stats!.dropped.queue_full + Object.values(stats!.invalid).reduce((a, b) => a + b, 0));
    expect(stats!.completed).toBe(stats!.dispatched);
    expect(handled.length).toBe(stats!.dispatched);
    expect(handled.length, 'stopped while the flood went on').toBeLessThan(published);
    expectSound(d, d.file, { alive: false });
  });
});
