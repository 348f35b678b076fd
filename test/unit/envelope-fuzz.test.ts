/**
 * Property-based test of parseEnvelope (issue 9, item 3): arbitrary JSON,
 * envelope-shaped objects with odd members, deep and wide structures, random
 * bytes, odd unicode and sizes around maxBytes. It never throws, and its
 * answer matches an independent oracle: too_large exactly over maxBytes,
 * not_json exactly when JSON.parse fails, too_deep exactly when the nesting
 * is deeper than maxDepth, and an accepted event is a validated, deeply
 * frozen envelope.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { freezeData, parseEnvelope, type ParseResult } from '../../src/bus/envelope.ts';
import { deeplyFrozen, depthOf, hasDangerousKey, nestedText, payloads } from '../helpers/fuzz.ts';

const CH = 'agent:events:fz';

function oracle(buf: Buffer, maxBytes: number, maxDepth: number, r: ParseResult, frozen = true): void {
  if (buf.length > maxBytes) {
    expect(r).toEqual({ ok: false, reason: 'too_large' });
    return;
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(buf.toString('utf8'));
  } catch {
    expect(r).toEqual({ ok: false, reason: 'not_json' });
    return;
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
    expect(r).toEqual({ ok: false, reason: 'not_object' });
    return;
  }
  const depth = depthOf(parsed);
  const danger = hasDangerousKey(parsed);
  if (depth > maxDepth) {
    expect(r.ok ? 'ok' : r.reason).toBe(danger && !r.ok && r.reason === 'forbidden_key' ? 'forbidden_key' : 'too_deep');
    return;
  }
  if (danger) {
    expect(r).toEqual({ ok: false, reason: 'forbidden_key' });
    return;
  }
  const raw = parsed as Record<string, unknown>;
  const type = raw['event'];
  if (typeof type !== 'string' || type.length === 0 || type.length > 256) {
    expect(r).toEqual({ ok: false, reason: 'no_event' });
    return;
  }
  expect(r.ok).toBe(true);
  if (!r.ok) return;
  expect(r.event.event).toBe(type);
  expect(r.event.channel).toBe(CH);
  expect(r.event.data).toEqual(raw['data'] === undefined ? null : raw['data']);
  expect(Object.isFrozen(r.event)).toBe(frozen);
  if (frozen) expect(deeplyFrozen(r.event.data)).toBe(true);
  else {
    // Unfrozen parsing (the pub/sub path) validates the same; freezeData then freezes all of it.
    freezeData(r.event.data);
    expect(deeplyFrozen(r.event.data)).toBe(true);
  }
  expect(depthOf(r.event.data)).toBeLessThanOrEqual(maxDepth - 1);
  for (const k of ['id', 'source', 'den'] as const) if (k in r.event) expect(typeof r.event[k]).toBe('string');
  if ('ts' in r.event) expect(Number.isFinite(r.event.ts)).toBe(true);
}

describe('parseEnvelope under fuzzing', () => {
  it('never throws and agrees with the oracle', () => {
    const arb = fc
      .record({ maxBytes: fc.constantFrom(256, 4_096, 65_536), maxDepth: fc.constantFrom(1, 2, 8, 64, 1_000) })
      .chain(({ maxBytes, maxDepth }) => payloads({ maxBytes }).map((p) => ({ maxBytes, maxDepth, p })));
    fc.assert(
      fc.property(arb, ({ maxBytes, maxDepth, p }) => {
        const buf = Buffer.from(p);
        let r: ParseResult | undefined;
        expect(() => (r = parseEnvelope(CH, buf, maxBytes, maxDepth))).not.toThrow();
        oracle(buf, maxBytes, maxDepth, r as ParseResult);
        // The pub/sub path parses without freezing and skips the walk when the text cannot be deep or dangerous.
        expect(() => (r = parseEnvelope(CH, buf, maxBytes, maxDepth, false))).not.toThrow();
        oracle(buf, maxBytes, maxDepth, r as ParseResult, false);
        expect(({} as Record<string, unknown>)['polluted']).toBeUndefined();
      }),
      { numRuns: 1_500 },
    );
  });

  it('takes any depth JSON.parse takes, without running out of stack', () => {
    for (const depth of [5_000, 100_000, 400_000]) {
      for (const object of [false, true]) {
        const text = `{"event":"x","data":${nestedText(depth, object)}}`;
        expect(parseEnvelope(CH, Buffer.from(text), 8 * 1024 * 1024)).toEqual({ ok: false, reason: 'too_deep' });
        expect(parseEnvelope(CH, Buffer.from(text), 8 * 1024 * 1024, depth + 1).ok, `${depth} deep within a limit of ${depth + 1}`).toBe(true);
      }
    }
  });

  it('counts the envelope as level 1 against maxDepth', () => {
    const at = (depth: number) => Buffer.from(`{"event":"x","data":${nestedText(depth, false)}}`);
    for (const freeze of [true, false]) {
      expect(parseEnvelope(CH, at(63), 1 << 20, 64, freeze).ok).toBe(true);
      expect(parseEnvelope(CH, at(64), 1 << 20, 64, freeze)).toEqual({ ok: false, reason: 'too_deep' });
      expect(parseEnvelope(CH, Buffer.from('{"event":"x","data":1}'), 1 << 20, 1, freeze).ok).toBe(true);
      expect(parseEnvelope(CH, Buffer.from('{"event":"x","data":{}}'), 1 << 20, 1, freeze)).toEqual({ ok: false, reason: 'too_deep' });
      // The shortest text that nests too deep for the limit: {"event":"x","a":[[...]]} at maxDepth 2 (3 levels).
      expect(parseEnvelope(CH, Buffer.from('{"event":"x","a":[[]]}'), 1 << 20, 2, freeze)).toEqual({ ok: false, reason: 'too_deep' });
      expect(parseEnvelope(CH, Buffer.from('{"a":[[]],"event":"x"}'), 1 << 20, 2, freeze)).toEqual({ ok: false, reason: 'too_deep' });
      // Members other than data count too: nobody reads them, but nothing deep is walked either.
      expect(parseEnvelope(CH, Buffer.from(`{"event":"x","junk":${nestedText(64, true)}}`), 1 << 20, 64, freeze)).toEqual({ ok: false, reason: 'too_deep' });
    }
  });
});
