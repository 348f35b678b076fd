/**
 * A client PUBLISHes on the watcher's keyspace channel itself
 * (`__keyspace@0__:agent:<live>:heartbeat` → `expired`): anyone may publish on
 * any channel, so a notification proves nothing. Each one used to cost a
 * registry read on the shared command connection (83,517 HGETs for 100,000
 * spoofs; the watcher's RSS grew to 330 MB and its own beat timed out behind
 * them). Pass: every notification is counted, the registry is read far less
 * than once per notification (a burst is one check), the live agent is not
 * reported down, and a real death is still reported once.
 */
import type { Redis } from 'ioredis';
import { beforeAll, describe, expect, it } from 'vitest';
import { freePort } from '../helpers/ports.ts';
import { expectNoFatal, isAlive, processSuite, scrape, type Agent } from '../helpers/process.ts';
import { collect, type Collected, hasMsg, keys, metric, uniqueId, waitFor } from '../helpers/util.ts';

const TTL_S = 2;
const SPOOFS = 20_000;

async function registryReads(c: Redis): Promise<number> {
  const stats = await c.info('commandstats');
  let n = 0;
  for (const m of stats.matchAll(/^cmdstat_(?:hget|hmget):calls=(\d+)/gm)) n += Number(m[1]);
  return n;
}

const suite = processSuite({
  redis: { requireControl: true },
  env: { AGENTD_HEARTBEAT_TTL: String(TTL_S), AGENTD_HEARTBEAT_INTERVAL: '0.5', AGENTD_SWEEP_INTERVAL: '5', AGENTD_WATCH_NOTIFICATIONS: 'enable' },
});

describe('spoofed keyspace expiry notifications', () => {
  let c: Redis;
  let downs: Collected[];
  const den = uniqueId('spoofden');
  const spawn = (id: string, extra: Record<string, string> = {}): Promise<Agent> => suite.spawn({ id, den, env: extra });

  beforeAll(async () => {
    c = suite.redis.client({ connectionName: 'spoof-cmd' });
    downs = await collect(suite.redis.client({ connectionName: 'spoof-down' }), keys.channel('agent_down'));
  });

  it(`${SPOOFS} spoofed expiries of a live agent: counted, coalesced, nobody reported down`, async () => {
    const live = uniqueId('live');
    const port = await freePort();
    const watcher = await spawn(uniqueId('watch'), { AGENTD_HTTP_PORT: String(port) });
    const a = await spawn(live);
    await Promise.all([watcher.waitForLog(hasMsg('agentd ready'), 15_000), a.waitForLog(hasMsg('agentd ready'), 15_000)]);
    const before = await scrape(port);
    const readsBefore = await registryReads(c);
    for (let i = 0; i < SPOOFS; i += 1_000) {
      const p = c.pipeline();
      for (let j = 0; j < 1_000; j++) p.publish(`__keyspace@0__:${keys.heartbeat(live)}`, 'expired');
      await p.exec();
    }
    await waitFor('every spoof counted', async () => metric(await scrape(port), 'agentd_expiry_notifications_total') - metric(before, 'agentd_expiry_notifications_total') >= SPOOFS, 15_000);
    const reads = (await registryReads(c)) - readsBefore;
    console.log(`registry reads for ${SPOOFS} spoofed expiries (beats included): ${reads}`);
    expect(reads, 'registry reads (HGET/HMGET) during the flood, beats included').toBeLessThan(SPOOFS / 4);
    expect(downs.filter((m) => (m.json?.['data'] as { agent?: string } | undefined)?.agent === live)).toEqual([]);

    // A real death after the flood is still seen (by the expiry, the sweep being 5 s away) and reported once.
    a.child.kill('SIGKILL');
    await waitFor('agent_down for the killed agent', () => downs.some((m) => (m.json?.['data'] as { agent?: string } | undefined)?.agent === live), (TTL_S + 4) * 1000);
    const down = downs.find((m) => (m.json?.['data'] as { agent?: string } | undefined)?.agent === live);
    expect((down?.json?.['data'] as { via?: string } | undefined)?.via, 'seen by the expiry notification').toBe('expiry');
    expect(isAlive(watcher)).toBe(true);
    expectNoFatal(watcher);
    // Leave (the heartbeat key deleted, not expiring): no real expiry may reach the next test's watcher.
    watcher.signal('SIGTERM');
    expect(await watcher.exited).toEqual({ code: 0, signal: null });
  });

  it('spoofed expiries of huge agent ids are not sent back to Redis', async () => {
    const port = await freePort();
    const watcher = await spawn(uniqueId('watch'), { AGENTD_HTTP_PORT: String(port) });
    await watcher.waitForLog(hasMsg('agentd ready'), 15_000);
    const before = await scrape(port);
    const stats = async (): Promise<number> => Number(/^cmdstat_hmget:calls=(\d+)/m.exec(await c.info('commandstats'))?.[1] ?? 0);
    const hmgetBefore = await stats();
    const p = c.pipeline();
    for (let i = 0; i < 200; i++) p.publish(`__keyspace@0__:${keys.heartbeat(`${i}-${'x'.repeat(100_000)}`)}`, 'expired');
    await p.exec();
    await waitFor('every spoof counted', async () => metric(await scrape(port), 'agentd_expiry_notifications_total') - metric(before, 'agentd_expiry_notifications_total') >= 200, 15_000);
    // 200 × 100 KB ids would have gone back to Redis in HMGETs (20 MB, once per watching daemon).
    expect((await stats()) - hmgetBefore, 'HMGET calls').toBe(0);
  });
});
