/**
 * fast-check arbitraries for what can arrive on an event channel: arbitrary
 * JSON values, envelope-shaped objects with odd members, deep and wide
 * structures, random bytes, odd unicode (lone surrogates, NUL, BOM, RTL
 * marks, astral characters), dangerous keys, and sizes around a byte limit.
 * Each yields the payload as bytes, as Redis would deliver it.
 */
import fc from 'fast-check';

const ODD_CHARS = ['\u0000', '\uFEFF', '\u202E', '\uD800', '\uDFFF', '\u2028', '😀', 'é', '\\', '"', '\n'];
/** Strings of any UTF-16 code units, with the odd ones more likely. */
export const oddString = fc.oneof(
  fc.string({ unit: 'binary', maxLength: 40 }),
  fc.array(fc.constantFrom(...ODD_CHARS), { maxLength: 12 }).map((a) => a.join('')),
  fc.string({ unit: 'grapheme', maxLength: 20 }),
);
const key = fc.oneof({ weight: 6, arbitrary: oddString }, { weight: 1, arbitrary: fc.constantFrom('__proto__', 'constructor', 'prototype', 'event', 'data', 'toString') });
const json = fc.jsonValue({ maxDepth: 6, stringUnit: 'binary' });
const type = fc.oneof(fc.constant('fz'), fc.constant('fz_other'), oddString, fc.string({ minLength: 250, maxLength: 260 }));

/** Nested arrays/objects of the given depth, as JSON text. */
export function nestedText(depth: number, object: boolean): string {
  return object ? `${'{"a":'.repeat(depth)}1${'}'.repeat(depth)}` : `${'['.repeat(depth)}${']'.repeat(depth)}`;
}

const text = (s: string): Uint8Array => Buffer.from(s, 'utf8');

/** An object with odd members, some of them envelope members. */
const envelopeObject = fc
  .record(
    {
      event: fc.oneof({ weight: 4, arbitrary: type }, { weight: 1, arbitrary: json }),
      data: json,
      id: fc.oneof(oddString, json),
      source: fc.oneof(oddString, json),
      ts: fc.oneof(fc.double(), json),
      den: fc.oneof(oddString, json),
    },
    { requiredKeys: [] },
  )
  .chain((base) => fc.dictionary(key, json, { maxKeys: 3 }).map((extra) => ({ ...extra, ...base })));

export interface FuzzOptions {
  /** events.maxBytes of the receiver: sizes around it are generated. */
  readonly maxBytes: number;
}

export function payloads({ maxBytes }: FuzzOptions): fc.Arbitrary<Uint8Array> {
  const deep = fc
    .record({ depth: fc.oneof(fc.integer({ min: 1, max: 130 }), fc.integer({ min: 1, max: 20_000 })), object: fc.boolean(), withEvent: fc.boolean() })
    .map(({ depth, object, withEvent }) => text(withEvent ? `{"event":"fz","data":${nestedText(depth, object)}}` : nestedText(depth, object)));
  const wide = fc
    .record({ n: fc.integer({ min: 0, max: 5_000 }), object: fc.boolean() })
    .map(({ n, object }) =>
      text(
        `{"event":"fz","data":${object ? `{${Array.from({ length: n }, (_, i) => `"k${i}":[${i}]`).join(',')}}` : `[${Array.from({ length: n }, (_, i) => `{"i":${i}}`).join(',')}]`}}`,
      ),
    );
  // `{"event":"fz","data":"…"}` of exactly maxBytes - 3 … maxBytes + 3 bytes, the filler ASCII or 2-byte characters.
  const sized = fc.record({ delta: fc.integer({ min: -3, max: 3 }), wideChars: fc.boolean() }).map(({ delta, wideChars }) => {
    const frame = Buffer.byteLength('{"event":"fz","data":""}');
    const bytes = Math.max(0, maxBytes + delta - frame);
    const filler = wideChars ? 'é'.repeat(Math.floor(bytes / 2)) + 'x'.repeat(bytes % 2) : 'x'.repeat(bytes);
    return text(`{"event":"fz","data":"${filler}"}`);
  });
  const mutated = fc
    .record({ obj: envelopeObject, cut: fc.nat(), flip: fc.nat(), byte: fc.integer({ min: 0, max: 255 }), how: fc.constantFrom('cut', 'flip', 'both') })
    .map(({ obj, cut, flip, byte, how }) => {
      const b = Buffer.from(JSON.stringify(obj) ?? 'null');
      const out = how === 'flip' ? Buffer.from(b) : b.subarray(0, cut % (b.length + 1));
      if (how !== 'cut' && out.length > 0) out[flip % out.length] = byte;
      return new Uint8Array(out);
    });
  // A dangerous key somewhere down `data`, plain or \u-escaped.
  const dangerous = fc
    .record({ depth: fc.integer({ min: 0, max: 6 }), which: fc.constantFrom('__proto__', 'ctor', 'safe'), escaped: fc.boolean() })
    .map(({ depth, which, escaped }) => {
      const esc = (k: string): string => (escaped ? [...k].map((c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`).join('') : k);
      const inner =
        which === '__proto__' ? `{"${esc('__proto__')}":{"polluted":true}}` : which === 'ctor' ? `{"constructor":{"${esc('prototype')}":{"polluted":true}}}` : `{"prototype":{"constructor":1}}`;
      return text(`{"event":"fz","data":${'{"a":'.repeat(depth)}${inner}${'}'.repeat(depth)}}`);
    });
  return fc.oneof(
    { weight: 1, arbitrary: dangerous },
    { weight: 4, arbitrary: envelopeObject.map((o) => text(JSON.stringify(o))) },
    { weight: 2, arbitrary: json.map((v) => text(JSON.stringify(v) ?? 'null')) },
    { weight: 2, arbitrary: deep },
    { weight: 1, arbitrary: wide },
    { weight: 1, arbitrary: sized },
    { weight: 2, arbitrary: mutated },
    { weight: 1, arbitrary: fc.uint8Array({ maxLength: 300 }) },
    { weight: 1, arbitrary: oddString.map(text) },
  );
}

/** Deepest nesting of arrays and objects in a parsed JSON value (a scalar is 0), without recursion. */
export function depthOf(value: unknown): number {
  let max = 0;
  const stack: Array<[unknown, number]> = [[value, 1]];
  while (stack.length > 0) {
    const [v, d] = stack.pop() as [unknown, number];
    if (v === null || typeof v !== 'object') continue;
    if (d > max) max = d;
    for (const child of Object.values(v)) stack.push([child, d + 1]);
  }
  return max;
}

/** Whether every array and object inside `value` is frozen, without recursion. */
export function deeplyFrozen(value: unknown): boolean {
  const stack: unknown[] = [value];
  while (stack.length > 0) {
    const v = stack.pop();
    if (v === null || typeof v !== 'object') continue;
    if (!Object.isFrozen(v)) return false;
    for (const child of Object.values(v)) stack.push(child);
  }
  return true;
}

/** Whether an own `__proto__` key, or `prototype` under `constructor`, is anywhere in `value`. */
export function hasDangerousKey(value: unknown): boolean {
  const stack: Array<[unknown, string | undefined]> = [[value, undefined]];
  while (stack.length > 0) {
    const [v, parent] = stack.pop() as [unknown, string | undefined];
    if (v === null || typeof v !== 'object') continue;
    for (const k of Object.keys(v)) {
      if (!Array.isArray(v) && (k === '__proto__' || (k === 'prototype' && parent === 'constructor'))) return true;
      stack.push([(v as Record<string, unknown>)[k], Array.isArray(v) ? undefined : k]);
    }
  }
  return false;
}
