/**
 * Fault 20 (part), odd throws: handlers of a real `agentd run` child process
 * throw or reject with values that are hard to describe (see
 * test/fixtures/plugins/odd-throws.js). Pass: the daemon stays alive, logs one
 * AGENTD_ERR_HANDLER_FAILED line per call with a bounded one-line `err`,
 * counts each as an error, and still handles the next good event.
 */
import { describe, expect, it } from 'vitest';
import { expectSound, isAlive, processSuite, readRecords } from '../helpers/process.ts';
import { keys, metric, waitFor } from '../helpers/util.ts';

const TYPES = ['null-proto', 'message-getter', 'tostring', 'proxy', 'huge', 'cause-cycle', 'symbol'];

const suite = processSuite();

describe('fault 20: odd throws from handlers', () => {
  it('each odd value is described, logged and counted; the daemon stays alive and handles the next event', async () => {
    const d = await suite.start({ plugins: ['odd-throws.js', 'record-types.js'], env: { RECORD_TYPES: 'sentinel' }, http: true });
    const { file } = d;
    const c = suite.cmd;
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
    const m = await d.scrape();
    for (const type of TYPES) expect(metric(m, 'agentd_handler_calls_total', { plugin: 'odd', event: type, outcome: 'error' }), type).toBe(1);
    expectSound(d, file);
  });
});
