/**
 * A flood of bad messages from a hostile or broken publisher. Each bad
 * message used to be one `AGENTD_ERR_BAD_EVENT` warn line: 100,000 of them
 * wrote 22 MB of log, took three times the CPU of as many valid events and
 * blocked the event loop for 5 s (the heartbeat failed). Pass: every message
 * is counted under its reason; the first few are logged one by one, the rest
 * in one summary line per window, and the lines add up to the counters.
 */
import { describe, expect, it } from 'vitest';
import { expectNoFatal, isAlive, processSuite } from '../helpers/process.ts';
import { keys, metric, waitFor } from '../helpers/util.ts';

const EACH = 5_000;
const BAD = { not_json: 'not json', no_event: '{"data":1}' } as const;

const suite = processSuite({ redis: { requireControl: true } });

describe('a flood of bad messages', () => {
  it(`${2 * EACH} bad messages: all counted, a bounded number of log lines that add up`, async () => {
    const d = await suite.start({ http: true, env: { AGENTD_EVENT_SUBSCRIBE: 'pattern' } });
    const c = suite.cmd;
    for (let i = 0; i < EACH; i += 500) {
      const p = c.pipeline();
      for (let j = 0; j < 500; j++) for (const payload of Object.values(BAD)) p.publish(keys.channel('x'), payload);
      await p.exec();
    }
    for (const reason of Object.keys(BAD)) {
      await waitFor(`${reason} counted`, async () => metric(await d.scrape(), 'agentd_events_dropped_total', { reason }) === EACH, 15_000);
    }
    const lines = (): Array<Record<string, unknown>> => d.logs.filter((l) => l['code'] === 'AGENTD_ERR_BAD_EVENT');
    const logged = (reason: string): number =>
      lines().reduce((n, l) => n + (l['msg'] === 'dropped a bad message' ? (l['reason'] === reason ? 1 : 0) : Number((l['suppressed'] as Record<string, number> | undefined)?.[reason] ?? 0)), 0);
    await waitFor('the summary lines', () => Object.keys(BAD).every((r) => logged(r) === EACH), 15_000);
    expect(lines().length, 'AGENTD_ERR_BAD_EVENT lines').toBeLessThan(100);
    expect(isAlive(d)).toBe(true);
    expectNoFatal(d);
  });
});
