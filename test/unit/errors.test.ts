import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { MAX_ERROR_DESCRIPTION, describeError } from '../../src/errors.ts';

const throwing = (what: string) => () => {
  throw new Error(what);
};

describe('describeError is total', () => {
  it('describes ordinary errors as before: code prefix, one line', () => {
    const e = Object.assign(new Error('connect refused\n  at somewhere'), { code: 'ECONNREFUSED' });
    expect(describeError(e)).toBe('ECONNREFUSED: connect refused; at somewhere');
    expect(describeError('plain')).toBe('plain');
    expect(describeError(42)).toBe('42');
    expect(describeError(undefined)).toBe('undefined');
    expect(describeError(Symbol('s'))).toBe('Symbol(s)');
  });

  it.each([
    ['Object.create(null)', () => Object.create(null) as unknown, '[object Object]'],
    ['a throwing toString', () => ({ toString: throwing('toString') }), '[object Object]'],
    [
      'an Error whose message getter throws',
      () => Object.defineProperty(new Error('x'), 'message', { get: throwing('getter') }),
      'Error',
    ],
    ['an Error whose code getter throws', () => Object.defineProperty(new Error('msg'), 'code', { get: throwing('code') }), 'msg'],
    ['an Error with a message that is not a string', () => Object.assign(new Error(), { message: { toString: throwing('inner') } }), '[object Object]'],
    [
      'a proxy that throws on every trap',
      () => new Proxy({}, { get: throwing('get'), getPrototypeOf: throwing('proto'), has: throwing('has'), ownKeys: throwing('keys') }),
      undefined,
    ],
  ])('%s', (_name, make, expected) => {
    let text: string | undefined;
    expect(() => (text = describeError(make()))).not.toThrow();
    expect(typeof text).toBe('string');
    expect((text as string).length).toBeGreaterThan(0);
    if (expected !== undefined) expect(text).toBe(expected);
  });

  it('is bounded, however long the message, and says how much it cut', () => {
    const text = describeError(new Error('x'.repeat(5_000_000)));
    expect(text.length).toBeLessThan(MAX_ERROR_DESCRIPTION + 40);
    expect(text).toMatch(/… \(4999000 more characters\)$/);
  });

  it('does not follow cause chains, even cyclic ones', () => {
    const a = new Error('a');
    const b = new Error('b', { cause: a });
    (a as { cause?: unknown }).cause = b;
    expect(describeError(a)).toBe('a');
  });

  it('never throws for anything fast-check can make', () => {
    fc.assert(
      fc.property(fc.anything({ withBigInt: true, withMap: true, withSet: true, withNullPrototype: true, withTypedArray: true, withSparseArray: true }), (v) => {
        const text = describeError(v);
        expect(typeof text).toBe('string');
        expect(text.length).toBeLessThanOrEqual(MAX_ERROR_DESCRIPTION + 40);
      }),
      { numRuns: 500 },
    );
  });
});
