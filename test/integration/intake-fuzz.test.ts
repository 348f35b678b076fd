/**
 * Property-based test of the whole intake path (issue 9, item 3) at a running
 * daemon: real redis-server, real PUBLISH of fuzzed payloads (see
 * test/helpers/fuzz.ts) on fuzzed channel names under the subscribed
 * pattern. Pass: nothing throws (an exception in the socket reader would fail
 * the test run), every message is accounted for exactly once
 * (received = dispatched + unhandled + sum of invalid, nothing dropped), each
 * bad-input reason is counted as often as parseEnvelope gives it for those
 * bytes, and every event a handler gets is a validated, deeply frozen envelope.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { parseEnvelope, type AgentEvent } from '../../src/bus/envelope.ts';
import type { DaemonStats } from '../../src/daemon.ts';
import { definePlugin } from '../../src/plugins/types.ts';
import { deeplyFrozen, depthOf, payloads } from '../helpers/fuzz.ts';
import { makeDaemon, redisSuite } from '../helpers/inproc.ts';
import { waitFor } from '../helpers/util.ts';

const suite = redisSuite();
const MAX_BYTES = 65_536;
const MAX_DEPTH = 64;

const sumInvalid = (s: DaemonStats): number => Object.values(s.invalid).reduce((a, b) => a + b, 0);
const settledCount = (s: DaemonStats): number => s.dispatched + s.unhandled + sumInvalid(s) + Object.values(s.dropped).reduce((a, b) => a + b, 0);

describe('intake under fuzzing', () => {
  it('accounts for every fuzzed message exactly once and hands handlers only valid envelopes', async () => {
    const seen: AgentEvent[] = [];
    const problems: string[] = [];
    const check = (e: AgentEvent): void => {
      if (typeof e.event !== 'string' || e.event.length === 0 || e.event.length > 256) problems.push(`bad type ${String(e.event).slice(0, 40)}`);
      // fz has two handlers: shared, so deeply frozen; fz_other one: its own, not frozen.
      if (e.event === 'fz' && (!Object.isFrozen(e) || !deeplyFrozen(e.data))) problems.push(`not frozen: ${e.event}`);
      if (depthOf(e.data) > MAX_DEPTH - 1) problems.push(`too deep: ${e.event}`);
      seen.push(e);
    };
    const t = await suite.start(
      // The channel rule (an event on another type's channel is refused, issue 12) is off here: this fuzzes
      // the envelope check and the accounting, whose model is parseEnvelope; test/integration/trust.test.ts
      // covers the rule.
      makeDaemon(suite.redis.url, { events: { maxBytes: MAX_BYTES, maxDepth: MAX_DEPTH, subscribe: 'pattern' }, queue: { max: 100_000 }, security: { channelCheck: false } }, [
        definePlugin({ name: 'fz', handlers: { fz: check } }),
        definePlugin({ name: 'probe', handlers: { fz: check, fz_other: check } }),
      ]),
    );
    const { daemon } = t;
    // Own agent_online first, so the counts below move only with what the test publishes.
    await waitFor('own agent_online', () => daemon.stats().received >= 1 && settledCount(daemon.stats()) === daemon.stats().received);

    const channelSuffix = fc.oneof(
      { weight: 4, arbitrary: fc.constant('fz') },
      { weight: 1, arbitrary: fc.uint8Array({ maxLength: 24 }).map((b) => Buffer.from(b)) },
      { weight: 1, arbitrary: fc.string({ unit: 'binary', maxLength: 24 }).map((s) => Buffer.from(s)) },
    );
    const batch = fc.array(fc.tuple(channelSuffix, payloads({ maxBytes: MAX_BYTES })), { minLength: 1, maxLength: 25 });
    let published = 0;
    await fc.assert(
      fc.asyncProperty(batch, async (messages) => {
        const before = daemon.stats();
        const expected: Record<string, number> = {};
        const pipe = suite.cmd.pipeline();
        for (const [suffix, payload] of messages) {
          const channel = Buffer.concat([Buffer.from('agent:events:'), Buffer.from(suffix)]);
          const r = parseEnvelope(channel.toString(), Buffer.from(payload), MAX_BYTES, MAX_DEPTH);
          if (!r.ok) expected[r.reason] = (expected[r.reason] ?? 0) + 1;
          pipe.publish(channel, Buffer.from(payload));
        }
        const replies = (await pipe.exec()) ?? [];
        expect(replies.map(([err, n]) => [err, n])).toEqual(messages.map(() => [null, 1]));
        published += messages.length;
        await waitFor('every message read', () => daemon.stats().received - before.received >= messages.length, 10_000);
        await waitFor('the queue empty', () => daemon.stats().waiting === 0 && daemon.stats().running === 0, 10_000);
        const after = daemon.stats();
        expect(after.received - before.received).toBe(messages.length);
        expect(settledCount(after) - settledCount(before), 'received = dispatched + unhandled + invalid + dropped').toBe(messages.length);
        expect(after.dropped).toEqual(before.dropped);
        expect(after.failed).toBe(before.failed);
        for (const [reason, n] of Object.entries(after.invalid)) {
          expect(n - before.invalid[reason as keyof DaemonStats['invalid']], reason).toBe(expected[reason] ?? 0);
        }
        expect(after.invalid.intake_error).toBe(0);
        expect(problems).toEqual([]);
      }),
      { numRuns: 60 },
    );
    const s = daemon.stats();
    console.log(`intake fuzz: ${published} messages: ${JSON.stringify({ received: s.received, dispatched: s.dispatched, unhandled: s.unhandled, invalid: s.invalid, handled: seen.length })}`);
    expect(s.completed).toBe(seen.length);
    expect(s.dispatched).toBeGreaterThan(0);
    expect(s.unhandled).toBeGreaterThan(0);
    for (const reason of ['too_large', 'not_json', 'not_object', 'no_event', 'forbidden_key', 'too_deep'] as const) expect(s.invalid[reason], reason).toBeGreaterThan(0);
  });
});
