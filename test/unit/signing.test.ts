import { chmodSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { loadKeys, parseKeys } from '../../src/security/keys.ts';
import { sealEnvelope, Verifier } from '../../src/security/signing.ts';
import { checkTlsRequired, isLoopbackHost } from '../../src/security/tls-policy.ts';
import { newSecret, writeKeysFile } from '../helpers/keys.ts';

const S1 = newSecret();
const S2 = newSecret();
const ring = (text: string) => parseKeys(text, 'test');
const env = (over: Record<string, unknown> = {}) => ({ event: 'x', data: { a: 1 }, id: 'id-1', source: 's', ts: 1_000_000, den: 'd', ...over });
const channel = 'agent:events:x';
const verifier = (keysText: string, now = 1_000_000, cap?: number) => new Verifier({ keys: ring(keysText), toleranceMs: 300_000, now: () => now, ...(cap ? { replayCapacity: cap } : {}) });
const check = (v: Verifier, text: string, e = env(), ch = channel) => v.verify(ch, Buffer.from(text), e.id as string, e.ts as number);

describe('signed envelopes', () => {
  it('a sealed envelope is the unsigned JSON plus one sig field, and verifies', () => {
    const sealed = sealEnvelope(env(), channel, ring(`k1 ${S1}`));
    const parsed = JSON.parse(sealed) as Record<string, unknown>;
    expect(parsed).toMatchObject(env());
    expect(String(parsed['sig'])).toMatch(/^v1,k1,[A-Za-z0-9+/]{43}=$/);
    expect(check(verifier(`k1 ${S1}`), sealed)).toBeUndefined();
    expect(sealEnvelope(env(), channel, undefined)).toBe(JSON.stringify(env()));
  });

  it('refuses by reason: unsigned, changed body, other channel, unknown key, stale, replayed', () => {
    const sealed = sealEnvelope(env(), channel, ring(`k1 ${S1}`));
    expect(check(verifier(`k1 ${S1}`), JSON.stringify(env()))).toBe('unsigned');
    expect(check(verifier(`k1 ${S1}`), sealed.replace('"a":1', '"a":2'))).toBe('bad_signature');
    expect(check(verifier(`k1 ${S1}`), sealed, env(), 'agent:events:y')).toBe('bad_signature');
    expect(check(verifier(`k1 ${S1}`), sealed, env({ id: 'id-2' }))).toBe('bad_signature');
    expect(check(verifier(`k1 ${S2}`), sealed)).toBe('bad_signature');
    expect(check(verifier(`k2 ${S1}`), sealed)).toBe('unknown_key');
    expect(check(verifier(`k1 ${S1}`, 1_000_000 + 300_001), sealed)).toBe('stale');
    expect(check(verifier(`k1 ${S1}`, 1_000_000 - 300_001), sealed)).toBe('stale');
    const v = verifier(`k1 ${S1}`);
    expect(check(v, sealed)).toBeUndefined();
    expect(check(v, sealed)).toBe('replayed');
    expect(check(v, `${sealed.slice(0, -1)} }`.replace(/"sig":"v1,k1,/, '"sig":"v1,k1,!'))).toBe('bad_signature');
  });

  it('rotation: the first key signs, every listed key verifies; several signatures, one good, pass', () => {
    const old = sealEnvelope(env({ id: 'old' }), channel, ring(`k1 ${S1}`));
    const next = sealEnvelope(env({ id: 'new' }), channel, ring(`k2 ${S2}\nk1 ${S1}`));
    expect(next).toContain('"sig":"v1,k2,');
    const both = verifier(`k2 ${S2}\nk1 ${S1}`);
    expect(check(both, old, env({ id: 'old' }))).toBeUndefined();
    expect(check(both, next, env({ id: 'new' }))).toBeUndefined();
    // Two entries: a bad one under an unknown kid and the good one.
    const two = old.replace('"sig":"v1,k1,', `"sig":"v1,k9,${'A'.repeat(43)}= v1,k1,`);
    expect(check(verifier(`k1 ${S1}`), two, env({ id: 'old' }))).toBeUndefined();
  });

  it('the replay window is bounded', () => {
    const keys = `k1 ${S1}`;
    const v = verifier(keys, 1_000_000, 100);
    const msg = (i: number) => env({ id: `m${i}`, ts: 1_000_000 - 1_000 + i });
    const first = sealEnvelope(msg(0), channel, ring(keys));
    for (let i = 0; i < 1_000; i++) expect(check(v, i === 0 ? first : sealEnvelope(msg(i), channel, ring(keys)), msg(i))).toBeUndefined();
    expect(v.remembered).toBeLessThanOrEqual(100);
    // m0 was forgotten within the tolerance: its copy is still refused, and so is anything as old.
    expect(check(v, first, msg(0))).toBe('stale');
    const late = env({ id: 'other', ts: msg(899).ts });
    expect(check(v, sealEnvelope(late, channel, ring(keys)), late)).toBe('stale');
    // An id from a clock running ahead, forgotten first, does not make current messages stale.
    const w = verifier(keys, 1_000_000, 2);
    const ahead = env({ id: 'ahead', ts: 1_000_000 + 200_000 });
    for (const e of [ahead, env({ id: 'n1', ts: 999_990 }), env({ id: 'n2', ts: 999_995 })]) expect(check(w, sealEnvelope(e, channel, ring(keys)), e)).toBeUndefined();
    const now1 = env({ id: 'n3', ts: 1_000_001 });
    expect(check(w, sealEnvelope(now1, channel, ring(keys)), now1)).toBeUndefined();
  });

  it('keys files: errors name the file and line, never the secret; a file others can read is refused', () => {
    expect(() => ring('')).toThrow(/lists no key/);
    expect(() => ring('k1 short-secret')).toThrow(/line 1: the secret is shorter than 32/);
    expect(() => ring(`bad/kid ${S1}`)).toThrow(/line 1: the key id/);
    expect(() => ring(`k1 ${S1}\nk1 ${S2}`)).toThrow(/line 2: the key id is listed twice \(also on line 1\)/);
    try {
      ring(`k1 ${S1}\nk1 ${S2}`);
    } catch (err) {
      expect(String(err)).not.toContain(S1);
      expect(String(err)).not.toContain(S2);
    }
    const file = writeKeysFile([['k1', S1]]);
    const keys = loadKeys(file);
    expect(JSON.stringify(keys.active)).toBe('{"kid":"k1"}');
    expect(JSON.stringify([...keys.byKid.values()])).not.toContain(S1);
    chmodSync(file, 0o644);
    expect(() => loadKeys(file)).toThrow(/other users may read or write it \(mode 644\)/);
  });
});

describe('redis.tls.required', () => {
  const cfg = (url: string, required: 'auto' | 'true' | 'false') => ({ redis: { url, tls: { required } } }) as never;
  it('auto allows plain redis:// to loopback only; true refuses it everywhere; rediss:// always passes', () => {
    for (const h of ['127.0.0.1', '127.8.9.10', 'localhost', '[::1]']) expect(isLoopbackHost(h)).toBe(true);
    for (const h of ['10.0.0.1', 'redis.example', '0.0.0.0', '128.0.0.1']) expect(isLoopbackHost(h)).toBe(false);
    expect(() => checkTlsRequired(cfg('redis://127.0.0.1:6379/0', 'auto'))).not.toThrow();
    expect(() => checkTlsRequired(cfg('redis://user:pw-s3cret@redis.example:6379/0', 'auto'))).toThrow(/plain redis:\/\/ URL to the non-loopback host redis\.example/);
    try {
      checkTlsRequired(cfg('redis://user:pw-s3cret@redis.example:6379/0', 'auto'));
    } catch (err) {
      expect(String(err)).not.toContain('pw-s3cret');
    }
    expect(() => checkTlsRequired(cfg('redis://127.0.0.1:6379/0', 'true'))).toThrow(/redis.tls.required/);
    expect(() => checkTlsRequired(cfg('redis://redis.example:6379/0', 'false'))).not.toThrow();
    expect(() => checkTlsRequired(cfg('rediss://redis.example:6379/0', 'true'))).not.toThrow();
  });
});
