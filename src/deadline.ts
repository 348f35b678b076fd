import { setTimeout as sleep } from 'node:timers/promises';

export interface DeadlineOptions {
  /**
   * Keep the process alive while the timer runs (default false: it is
   * unref'd). Set it where the work may hold nothing open itself (a plugin's
   * top-level await or setup), so the deadline still fires.
   */
  readonly ref?: boolean;
}

/**
 * Settles as `work` does, or resolves with `fallback` once `ms` have passed.
 * The timer is cleared as soon as either settles. `work` may be a function:
 * it gets a signal aborted when the race is over (either way), e.g. for
 * `events.once(emitter, name, { signal })`, so nothing waits on after it.
 */
export async function orAfter<T, F>(work: PromiseLike<T> | ((signal: AbortSignal) => PromiseLike<T>), ms: number, fallback: F, options: DeadlineOptions = {}): Promise<T | F> {
  const over = new AbortController();
  try {
    return await Promise.race([typeof work === 'function' ? work(over.signal) : work, sleep(ms, fallback, { signal: over.signal, ref: options.ref ?? false })]);
  } finally {
    over.abort();
  }
}

const TIMED_OUT: unique symbol = Symbol('timed out');

/** Settles as `work` does, or rejects with `timeoutError()` once `ms` have passed; the timer is cleared either way. */
export async function withDeadline<T>(work: PromiseLike<T>, ms: number, timeoutError: () => Error, options: DeadlineOptions = {}): Promise<T> {
  const result = await orAfter(work, ms, TIMED_OUT, options);
  if (result === TIMED_OUT) throw timeoutError();
  return result;
}

/** A Redis reply awaited with a deadline: past it, rejects with "no answer from redis within `ms` ms". */
export function withRedisDeadline<T>(reply: PromiseLike<T>, ms: number): Promise<T> {
  return withDeadline(reply, ms, () => new Error(`no answer from redis within ${ms} ms`));
}
