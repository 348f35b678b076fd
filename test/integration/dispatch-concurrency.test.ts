/**
 * Issue 9, item 19: when N <= queue.concurrency handler calls are waiting, N
 * run. Measured as the most calls running at once, from timestamps the
 * handlers record, never as wall-clock speed. Each call holds until every
 * call it is waiting for has started (or a fallback deadline passes, so that
 * a dispatcher that runs fewer cannot hang the test): a correct dispatcher
 * reaches the full count however slow the machine is.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { definePlugin } from '../../src/plugins/types.ts';
import { makeDaemon, redisSuite } from '../helpers/inproc.ts';
import { waitFor } from '../helpers/util.ts';

const suite = redisSuite();
const send = (type: string, data: unknown) => suite.cmd.publish(`agent:events:${type}`, JSON.stringify({ event: type, data }));

/** The most intervals overlapping at one instant. */
function maxOverlap(spans: ReadonlyArray<{ start: number; end: number }>): number {
  const points = spans.flatMap((s) => [
    [s.start, 1],
    [s.end, -1],
  ]);
  // Ends before starts at the same instant: touching is not overlapping.
  points.sort((a, b) => a[0]! - b[0]! || a[1]! - b[1]!);
  let now = 0;
  let max = 0;
  for (const [, delta] of points) max = Math.max(max, (now += delta!));
  return max;
}

/** Resolves when `count` calls have started, or `fallbackMs` after the first one did. */
function barrier(count: number, fallbackMs: number) {
  let started = 0;
  let open!: () => void;
  const opened = new Promise<void>((r) => (open = r));
  let timer: NodeJS.Timeout | undefined;
  return {
    arrive(): Promise<void> {
      timer ??= setTimeout(open, fallbackMs);
      if (++started >= count) {
        clearTimeout(timer);
        open();
      }
      return opened;
    },
  };
}

describe('dispatch concurrency', () => {
  it('sixteen async calls whose events arrive 50 ms apart all run at once with queue.concurrency 16', async () => {
    const N = 16;
    const spans: Array<{ start: number; end: number }> = [];
    const b = barrier(N, 4_000);
    await suite.start(
      makeDaemon(suite.redis.url, { queue: { concurrency: N, handlerTimeoutMs: 30_000 } }, [
        definePlugin({
          name: 'slow',
          handlers: {
            slow: async () => {
              const start = performance.now();
              await b.arrive();
              spans.push({ start, end: performance.now() });
            },
          },
        }),
      ]),
    );
    for (let i = 0; i < N; i++) {
      await send('slow', i);
      await sleep(50);
    }
    await waitFor('all sixteen calls to finish', () => spans.length === N, 10_000);
    expect(maxOverlap(spans), 'calls running at once').toBe(N);
  });

  it('never runs more than queue.concurrency at once', async () => {
    const C = 4;
    const spans: Array<{ start: number; end: number }> = [];
    let running = 0;
    let most = 0;
    await suite.start(
      makeDaemon(suite.redis.url, { queue: { concurrency: C } }, [
        definePlugin({
          name: 'slow',
          handlers: {
            slow: async () => {
              const start = performance.now();
              most = Math.max(most, ++running);
              await sleep(30);
              running--;
              spans.push({ start, end: performance.now() });
            },
          },
        }),
      ]),
    );
    for (let i = 0; i < 12; i++) await send('slow', i);
    await waitFor('all twelve calls to finish', () => spans.length === 12, 10_000);
    expect(most).toBe(C);
  });

  it("a '*' handler does not wait behind another plugin's slow handler", async () => {
    const spans: Array<{ start: number; end: number }> = [];
    let starSeen = 0;
    const release = barrier(Number.POSITIVE_INFINITY, 3_000);
    let slowDone = 0;
    await suite.start(
      makeDaemon(suite.redis.url, { queue: { concurrency: 16 } }, [
        definePlugin({
          name: 'slow',
          handlers: {
            slow: async () => {
              const start = performance.now();
              await release.arrive();
              spans.push({ start, end: performance.now() });
              slowDone++;
            },
          },
        }),
        definePlugin({ name: 'all', handlers: { '*': (e) => void (e.event === 'slow' && starSeen++) } }),
      ]),
    );
    for (let i = 0; i < 3; i++) {
      await send('slow', i);
      await sleep(50);
    }
    // Every '*' call ran while the slow calls are still holding.
    await waitFor("the '*' calls of all three events", () => starSeen === 3, 2_000);
    expect(slowDone, 'slow calls still holding').toBe(0);
    await waitFor('the slow calls to finish', () => slowDone === 3, 5_000);
    expect(maxOverlap(spans)).toBe(3);
  });

  it('blocking handlers on several workers: a timer that falls due runs between any two blocks', async () => {
    // Two workers, four calls that each block the thread for BLOCK_MS: blocks must never run back to back.
    const BLOCK_MS = 500;
    const spin = (): void => {
      const end = performance.now() + BLOCK_MS;
      while (performance.now() < end);
    };
    let done = 0;
    await suite.start(
      makeDaemon(suite.redis.url, { queue: { concurrency: 2 } }, [
        definePlugin({
          name: 'spin',
          handlers: {
            spin: () => {
              spin();
              done++;
            },
          },
        }),
      ]),
    );
    const ticks: number[] = [];
    const timer = setInterval(() => ticks.push(performance.now()), 10);
    try {
      const pipe = suite.cmd.pipeline();
      for (let i = 0; i < 4; i++) pipe.publish('agent:events:spin', JSON.stringify({ event: 'spin', data: i }));
      await pipe.exec();
      await waitFor('the four blocking calls', () => done === 4, 10_000);
    } finally {
      clearInterval(timer);
    }
    const gaps = ticks.slice(1).map((t, i) => t - (ticks[i] as number));
    const worst = Math.max(...gaps);
    // One block plus slack, well below two blocks in a row.
    expect(worst, 'longest gap between timer ticks (ms)').toBeLessThan(BLOCK_MS * 1.5);
    expect(worst).toBeGreaterThanOrEqual(BLOCK_MS - 20);
  });
});
