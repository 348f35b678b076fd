/**
 * A plugin that reaches the daemon's command connection around the guarded
 * ctx.redis view: it sets `ctx.redis.options.keyPrefix` (which moved every
 * presence write under the prefix: the agent stayed ready while its peer
 * reported it down), or quits the real client through a pipeline's `.redis`
 * or `this` in a listener (a zombie: /readyz 503 for ever, reported down); or
 * it runs BLPOP on it, as a queue worker would (the connection waited behind
 * it for ever: no beat, degraded, reported down).
 * Pass: the connection stays the daemon's or comes back, the heartbeat stays,
 * /readyz is 200, and the watching peer reports nobody down.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { Redis } from 'ioredis';
import { beforeAll, describe, expect, it } from 'vitest';
import { expectNoFatal, httpGet, isAlive, processSuite } from '../helpers/process.ts';
import { collect, type Collected, hasMsg, keys, seedMessage, uniqueId, waitFor } from '../helpers/util.ts';

const TTL_S = 2;
const INTERVAL_S = 0.5;
const SWEEP_S = 0.3;

const suite = processSuite({
  redis: { requireControl: true },
  env: { AGENTD_HEARTBEAT_TTL: String(TTL_S), AGENTD_HEARTBEAT_INTERVAL: String(INTERVAL_S), AGENTD_SWEEP_INTERVAL: String(SWEEP_S) },
});

describe('plugin escapes around the guarded ctx.redis', () => {
  let c: Redis;
  let downs: Collected[];
  const den = uniqueId('escden');

  beforeAll(async () => {
    c = suite.redis.client({ connectionName: 'escape-cmd' });
    downs = await collect(suite.redis.client({ connectionName: 'escape-down' }), keys.channel('agent_down'));
    // A peer that would report the misbehaving agents down.
    await suite.start({ den, id: uniqueId('escpeer') });
  });

  for (const [type, data] of [
    ['options', null],
    ['blocking', null],
    ['escape-quit', 'pipeline'],
    ['escape-quit', 'listener'],
  ] as const) {
    it(`${type} ${data ?? ''}: still present and ready, nobody reports it down`, async () => {
      const d = await suite.spawn({ den, id: uniqueId('esc'), plugins: ['misbehaves.js'], http: true });
      const { id, httpPort: port } = d;
      try {
        await d.waitForLog(hasMsg('agentd ready'), 15_000);
        await c.publish(keys.channel(type), seedMessage(type, data));
        await d.waitForLog(hasMsg(/^misbehaves: (set options|options refused|quit around|tried blocking)/), 5_000);
        // Long enough for the old heartbeat key to expire and the peer to sweep twice.
        await sleep((TTL_S + 2 * SWEEP_S) * 1000 + 500);
        await waitFor('/readyz 200', async () => (await httpGet(port, '/readyz')).status === 200, (INTERVAL_S * 2 + 3) * 1000);
        expect(await c.exists(keys.heartbeat(id)), 'heartbeat key').toBe(1);
        expect(await c.keys('misbehaves:*'), 'keys under the plugin prefix').toEqual([]);
        expect(downs.filter((m) => (m.json?.["data"] as { agent?: string } | undefined)?.agent === id), 'agent_down for the live agent').toEqual([]);
        if (type === 'options') expect(d.logs.some(hasMsg('misbehaves: options refused')), 'the assignment throws').toBe(true);
        if (type === 'blocking') {
          const tried = d.logs.find(hasMsg('misbehaves: tried blocking commands'));
          expect((tried?.['refused'] as Array<{ what: string }>).map((r) => r.what), 'refused').toEqual(['blpop', 'call', 'xread', 'pipeline']);
        }
        if (data === 'listener') expect(d.logs.some(hasMsg(/closed by something other than agentd/)), 'the quit was noticed').toBe(true);
        expect(isAlive(d)).toBe(true);
        expectNoFatal(d);
      } finally {
        await d.stop();
      }
    });
  }
});
