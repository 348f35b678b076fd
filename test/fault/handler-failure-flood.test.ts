/**
 * A careless plugin whose handler throws on every event, under a flood of
 * events (which any publisher can send). Each failure used to be one
 * `AGENTD_ERR_HANDLER_FAILED` line, so the log grew with the flood. Pass: every
 * failure is counted and emitted; the first few are logged one by one, the
 * rest in one summary line per window, and the lines add up to the counter.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawnAgentd, type DaemonProcess } from '../helpers/daemon.ts';
import { freePort } from '../helpers/ports.ts';
import { startRedis, type TestRedis } from '../helpers/redis.ts';
import { expectNoFatal, fixture, isAlive, scrape } from '../helpers/process.ts';
import { hasMsg, keys, metric, uniqueId, waitFor } from '../helpers/util.ts';

const EVENTS = 3_000;

describe('a handler that fails on every event of a flood', () => {
  let redis: TestRedis;
  let tmp: string;
  let d: DaemonProcess | undefined;

  beforeAll(async () => {
    redis = await startRedis({ requireControl: true });
    tmp = await mkdtemp(join(tmpdir(), 'agentd-failflood-'));
  });

  afterAll(async () => {
    await d?.stop();
    await redis?.stop();
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  it(`${EVENTS} failures: all counted, a bounded number of log lines that add up`, async () => {
    const port = await freePort();
    d = spawnAgentd(['run'], {
      env: { AGENTD_REDIS_URL: redis.url, AGENTD_AGENT_ID: uniqueId('ff'), AGENTD_DEN: uniqueId('ffden'), AGENTD_HTTP_PORT: String(port), AGENTD_PLUGINS: fixture('bad-handlers.js'), RECORD_FILE: join(tmp, 'r.jsonl'), AGENTD_QUEUE_MAX: String(EVENTS) },
    });
    await d.waitForLog(hasMsg('agentd ready'), 15_000);
    const c: Redis = redis.client({ connectionName: 'ff-cmd' });
    for (let i = 0; i < EVENTS; i += 500) {
      const p = c.pipeline();
      for (let j = 0; j < 500; j++) p.publish(keys.channel('throw'), JSON.stringify({ event: 'throw', data: { uid: `${i + j}` } }));
      await p.exec();
    }
    await waitFor('every failure counted', async () => metric(await scrape(port), 'agentd_handler_calls_total', { plugin: 'bad', outcome: 'error' }) === EVENTS, 20_000);
    const lines = (): Array<Record<string, unknown>> => d!.logs.filter((l) => l['code'] === 'AGENTD_ERR_HANDLER_FAILED');
    const logged = (): number =>
      lines().reduce((n, l) => n + (l['msg'] === 'handler failed' ? 1 : ((l['suppressed'] as Array<{ calls: number }> | undefined) ?? []).reduce((m, s) => m + s.calls, 0)), 0);
    await waitFor('the summary lines', () => logged() === EVENTS, 15_000);
    expect(lines().length, 'AGENTD_ERR_HANDLER_FAILED lines').toBeLessThan(100);
    expect(isAlive(d)).toBe(true);
    expectNoFatal(d);
  });
});
