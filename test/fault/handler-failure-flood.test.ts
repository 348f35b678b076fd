/**
 * A careless plugin whose handler throws on every event, under a flood of
 * events (which any publisher can send). Each failure used to be one
 * `AGENTD_ERR_HANDLER_FAILED` line, so the log grew with the flood. Pass: every
 * failure is counted and emitted; the first few are logged one by one, the
 * rest in one summary line per window, and the lines add up to the counter.
 */
import { describe, expect, it } from 'vitest';
import { expectNoFatal, isAlive, processSuite } from '../helpers/process.ts';
import { keys, metric, waitFor } from '../helpers/util.ts';

const EVENTS = 3_000;

const suite = processSuite({ redis: { requireControl: true } });

describe('a handler that fails on every event of a flood', () => {
  it(`${EVENTS} failures: all counted, a bounded number of log lines that add up`, async () => {
    const d = await suite.start({ plugins: ['bad-handlers.js'], http: true, env: { AGENTD_QUEUE_MAX: String(EVENTS) } });
    const c = suite.cmd;
    for (let i = 0; i < EVENTS; i += 500) {
      const p = c.pipeline();
      for (let j = 0; j < 500; j++) p.publish(keys.channel('throw'), JSON.stringify({ event: 'throw', data: { uid: `${i + j}` } }));
      await p.exec();
    }
    await waitFor('every failure counted', async () => metric(await d.scrape(), 'agentd_handler_calls_total', { plugin: 'bad', outcome: 'error' }) === EVENTS, 20_000);
    const lines = (): Array<Record<string, unknown>> => d.logs.filter((l) => l['code'] === 'AGENTD_ERR_HANDLER_FAILED');
    const logged = (): number =>
      lines().reduce((n, l) => n + (l['msg'] === 'handler failed' ? 1 : ((l['suppressed'] as Array<{ calls: number }> | undefined) ?? []).reduce((m, s) => m + s.calls, 0)), 0);
    await waitFor('the summary lines', () => logged() === EVENTS, 15_000);
    expect(lines().length, 'AGENTD_ERR_HANDLER_FAILED lines').toBeLessThan(100);
    expect(isAlive(d)).toBe(true);
    expectNoFatal(d);
  });
});
