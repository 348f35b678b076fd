import { describe, expect, it } from 'vitest';
import { parseEnvelope } from '../../src/bus/envelope.ts';

const CH = 'agent:events:new_message';
const parse = (text: string, max = 1024 * 1024) => parseEnvelope(CH, Buffer.from(text), max);

describe('parseEnvelope', () => {
  it('accepts the seed format {event, data}', () => {
    const r = parse(JSON.stringify({ event: 'new_message', data: { user_id: 'usr-123', text: 'Hello!' } }));
    expect(r).toEqual({ ok: true, event: { event: 'new_message', data: { user_id: 'usr-123', text: 'Hello!' }, channel: CH } });
  });

  it('keeps metadata of the right type and ignores metadata of the wrong type', () => {
    const good = parse(JSON.stringify({ event: 'e', data: 1, id: 'x1', source: 'a', ts: 5, den: 'd' }));
    expect(good.ok && good.event).toMatchObject({ id: 'x1', source: 'a', ts: 5, den: 'd' });
    const bad = parse(JSON.stringify({ event: 'e', data: 1, id: 7, source: {}, ts: '5', den: null }));
    expect(bad.ok).toBe(true);
    if (bad.ok) {
      expect(bad.event).not.toHaveProperty('id');
      expect(bad.event).not.toHaveProperty('source');
      expect(bad.event).not.toHaveProperty('ts');
      expect(bad.event).not.toHaveProperty('den');
    }
  });

  it('treats absent data as null', () => {
    const r = parse('{"event":"e"}');
    expect(r.ok && r.event.data).toBeNull();
  });

  it.each([
    ['not_json', '{"event": "e", '],
    ['not_json', ''],
    ['not_object', '[1,2]'],
    ['not_object', '"text"'],
    ['not_object', '42'],
    ['not_object', 'null'],
    ['no_event', '{"data": {}}'],
    ['no_event', '{"event": 5, "data": {}}'],
    ['no_event', '{"event": "", "data": {}}'],
    ['forbidden_key', '{"event": "e", "data": {"__proto__": {"polluted": true}}}'],
    ['forbidden_key', '{"event": "e", "__proto__": {"polluted": true}}'],
    ['forbidden_key', '{"event": "e", "data": [{"a": {"\\u005f_proto__": {"polluted": true}}}]}'],
    ['forbidden_key', '{"event": "e", "data": {"constructor": {"prototype": {"polluted": true}}}}'],
  ])('rejects %s: %s', (reason, text) => {
    expect(parse(text)).toEqual({ ok: false, reason });
    expect(({} as Record<string, unknown>)['polluted']).toBeUndefined();
  });

  it('allows harmless keys that only look alike', () => {
    const r = parse('{"event": "e", "data": {"constructor": "Bob", "prototype": 1, "proto": 2}}');
    expect(r.ok).toBe(true);
  });

  it('enforces the size cap on bytes, not characters', () => {
    const text = JSON.stringify({ event: 'e', data: 'é'.repeat(40) }); // 2 bytes per é
    const bytes = Buffer.byteLength(text);
    expect(parse(text, bytes).ok).toBe(true);
    expect(parse(text, bytes - 1)).toEqual({ ok: false, reason: 'too_large' });
  });

  it('deep-freezes the event so one handler cannot change what another sees', () => {
    const r = parse('{"event": "e", "data": {"list": [{"x": 1}]}}');
    if (!r.ok) throw new Error('expected ok');
    const data = r.event.data as { list: Array<{ x: number }> };
    expect(Object.isFrozen(r.event)).toBe(true);
    expect(() => {
      data.list[0]!.x = 2;
    }).toThrow(TypeError);
    expect(() => {
      data.list.push({ x: 3 });
    }).toThrow(TypeError);
  });
});
