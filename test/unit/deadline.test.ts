import { describe, expect, it } from 'vitest';
import { orAfter, withDeadline, withRedisDeadline } from '../../src/deadline.ts';

/** Timers keeping the event loop alive (an unref'd timer is not listed). */
const liveTimers = (): number => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
const never = new Promise<never>(() => {});

describe('deadline helpers', () => {
  it('settle as the work does and clear their timer at once', async () => {
    const before = liveTimers();
    const pending = orAfter(Promise.resolve('done'), 60_000, 'late', { ref: true });
    expect(liveTimers()).toBe(before + 1);
    await expect(pending).resolves.toBe('done');
    expect(liveTimers()).toBe(before);
    await expect(withDeadline(Promise.reject(new Error('boom')), 60_000, () => new Error('late'), { ref: true })).rejects.toThrow('boom');
    expect(liveTimers()).toBe(before);
  });

  it('give the fallback, or the timeout error, once the time is up', async () => {
    await expect(orAfter(never, 5, 'late')).resolves.toBe('late');
    await expect(withDeadline(never, 5, () => new RangeError('too slow'))).rejects.toBeInstanceOf(RangeError);
    await expect(withRedisDeadline(never, 5)).rejects.toThrow('no answer from redis within 5 ms');
  });

  it('do not keep the process alive unless asked to', async () => {
    const before = liveTimers();
    const unref = orAfter(Promise.resolve(1), 60_000, 0);
    expect(liveTimers()).toBe(before);
    await unref;
  });

  it('abort the signal handed to the work when the race is over, either way', async () => {
    let seen: AbortSignal | undefined;
    await orAfter((signal) => ((seen = signal), never), 5, undefined);
    expect(seen?.aborted).toBe(true);
    await orAfter((signal) => ((seen = signal), Promise.resolve()), 60_000, undefined);
    expect(seen?.aborted).toBe(true);
  });
});
