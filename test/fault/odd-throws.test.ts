/**
 * Fault 20 (part), odd throws: handlers of a real `agentd run` child process
 * throw or reject with values that are hard to describe (see
 * test/fixtures/plugins/odd-throws.js). Pass: the daemon stays alive, logs one
 * AGENTD_ERR_HANDLER_FAILED line per call with a bounded one-line `err`,
 * counts each as an error, and still handles the next good event.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawnAgentd, type DaemonProcess } from '../helpers/daemon.ts';
import { freePort } from '../helpers/ports.ts';
import { startRedis, type TestRedis } from '../helpers/redis.ts';
import { expectSound, fixture, isAlive, readRecords, scrape } from '../helpers/process.ts';
import { hasMsg, keys, metric, uniqueId, waitFor } from '../helpers/util.ts';

const TYPES = ['null-proto', 'message-getter', 'tostring', 'proxy', 'huge', 'cause-cycle', 'symbol'];

describe('fault 20: odd throws from handlers', () => {
  let redis: TestRedis;
  let tmp: string;
  let d: DaemonProcess | undefined;

  beforeAll(async () => {
    redis = await startRedis();
    tmp = await mkdtemp(join(tmpdir(), 'agentd-fault20-'));
  });

  afterAll(async () => {
    await d?.stop();
    await redis?.stop();
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  it('each odd value is described, logged and counted; the daemon stays alive and handles the next event', async () => {
    const id = uniqueId('f20');
    const file = join(tmp, `${id}.jsonl`);
    const httpPort = await freePort();
    d = spawnAgentd(['run'], {
      env: {
        AGENTD_REDIS_URL: redis.url,
        AGENTD_AGENT_ID: id,
        AGENTD_DEN: uniqueId('f20den'),
        AGENTD_PLUGINS: [fixture('odd-throws.js'), fixture('record-types.js')].join(','),
        RECORD_TYPES: 'sentinel',
        RECORD_FILE: file,
        AGENTD_HTTP_PORT: String(httpPort),
      },
    });
    await d.waitForLog(hasMsg('agentd ready'), 15_000);
    const c: Redis = redis.client({ connectionName: 'fault20-cmd' });
    for (const type of TYPES) {
      expect(await c.publish(keys.channel(type), JSON.stringify({ event: type, data: null })), type).toBe(1);
      // One at a time: a crash is blamed on the value that caused it.
      await d.waitForLog((l) => l['code'] === 'AGENTD_ERR_HANDLER_FAILED' && l['event'] === type, 5_000);
    }
    await c.publish(keys.channel('sentinel'), JSON.stringify({ event: 'sentinel', data: { uid: 'after' } }));
    await waitFor('the good event after the odd throws handled', () => readRecords(file).length === 1, 5_000);

    expect(isAlive(d), 'daemon alive').toBe(true);
    const failed = d.logs.filter((l) => l['code'] === 'AGENTD_ERR_HANDLER_FAILED');
    expect(failed.map((l) => l['event'])).toEqual(TYPES);
    for (const l of failed) {
      const err = l['err'];
      expect(typeof err, String(l['event'])).toBe('string');
      expect((err as string).length, `err of ${String(l['event'])} is bounded`).toBeLessThanOrEqual(1_100);
      expect(err as string).not.toContain('\n');
      expect((err as string).length, `err of ${String(l['event'])} says something`).toBeGreaterThan(0);
    }
    const errOf = (type: string): string => failed.find((l) => l['event'] === type)?.['err'] as string;
    expect(errOf('huge')).toMatch(/^huge x+.*more characters/);
    expect(errOf('symbol')).toBe('Symbol(odd)');
    const m = await scrape(httpPort);
    for (const type of TYPES) expect(metric(m, 'agentd_handler_calls_total', { plugin: 'odd', event: type, outcome: 'error' }), type).toBe(1);
    expectSound(d, file);
  });
});
