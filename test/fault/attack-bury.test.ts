/**
 * Attacks on peer health with real processes (wave 2, attack 9b): a Redis that
 * comes back from a snapshot, a frozen Redis, eviction, skewed clocks, wiped
 * registries. Nobody live is buried, every real death is reported once.
 */
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Redis } from 'ioredis';
import { beforeAll, describe, expect, it } from 'vitest';
import type { DaemonProcess } from '../helpers/daemon.ts';
import type { TestRedis } from '../helpers/redis.ts';
import { expectNoFatal, isAlive, peerHealthEnv, processSuite } from '../helpers/process.ts';
import { hasMsg, keys, uniqueId, waitFor } from '../helpers/util.ts';

const TTL = 2;
const INTERVAL = 0.5;
const SWEEP = 0.5;
const QUIET_MS = (TTL + 2 * SWEEP) * 1000 + 1000;
const SKEW = fileURLToPath(new URL('../fixtures/clock-skew.mjs', import.meta.url));

const suite = processSuite({ redis: { requireControl: true }, env: peerHealthEnv({ ttl: TTL, interval: INTERVAL, sweep: SWEEP, notifications: 'enable' }) });

describe('attacks on peer health (daemons as child processes)', () => {
  let c: Redis;
  let redis: TestRedis;

  beforeAll(() => {
    redis = suite.redis;
    c = redis.client({ connectionName: 'attack-cmd', maxRetriesPerRequest: null });
  });

  async function start(den: string, env: Record<string, string> = {}, id = uniqueId('ab')): Promise<{ id: string; d: DaemonProcess }> {
    return { id, d: await suite.spawn({ den, env, id }) };
  }
  const ready = (d: DaemonProcess): Promise<unknown> => d.waitForLog(hasMsg('agentd ready'), 20_000);
  /** Every 'agent down' line any of these daemons logged, as the peer ids. */
  const buried = (xs: Array<{ d: DaemonProcess }>): string[] =>
    xs.flatMap((x) => x.d.logs.filter(hasMsg('agent down: heartbeat expired')).map((l) => String(l['peer'])));

  for (const size of [2, 3]) {
    it(`Redis restarted from a snapshot after more than the TTL: nobody in a den of ${size} is buried`, async () => {
      const den = uniqueId('den');
      // One daemon reconnects at once, the others up to 1.5 s later: all well within the TTL after Redis is back.
      const xs = await Promise.all(Array.from({ length: size }, (_, i) => start(den, { AGENTD_REDIS_RECONNECT_MAX_DELAY_MS: i === 0 ? '100' : '1500' })));
      await Promise.all(xs.map((x) => ready(x.d)));
      await c.save();
      await redis.kill();
      await sleep(TTL * 1000 + 500);
      await redis.start();
      await sleep(QUIET_MS);
      expect(buried(xs)).toEqual([]);
      for (const x of xs) {
        expect(isAlive(x.d)).toBe(true);
        expect(await c.sismember(keys.den(den), x.id)).toBe(1);
      }
      await c.flushall();
    });
  }

  it('Redis full with volatile-ttl: heartbeat keys evicted, writes refused for longer than the TTL, then freed: nobody is buried', async () => {
    const den = uniqueId('den');
    // The watcher beats and sweeps often; the other beats slowly, so it is back later than the watcher's first sweep.
    const w = await start(den, { AGENTD_HEARTBEAT_INTERVAL: '0.2', AGENTD_SWEEP_INTERVAL: '0.2' });
    const v = await start(den, { AGENTD_HEARTBEAT_INTERVAL: '0.9', AGENTD_WATCH: 'off' });
    await Promise.all([ready(w.d), ready(v.d)]);
    await sleep(TTL * 1000);
    await c.config('SET', 'maxmemory-policy', 'volatile-ttl');
    const used = Number(/used_memory:(\d+)/.exec(await c.info('memory'))![1]);
    await c.config('SET', 'maxmemory', String(used + 200_000));
    // Fill with keys without a TTL until Redis refuses: on the way it evicts every key with a TTL (the heartbeats).
    for (let i = 0; ; i++) {
      const ok = await c.set(`junk:${den}:${i}`, 'x'.repeat(10_000)).then(() => true, () => false);
      if (!ok) break;
    }
    await waitFor('heartbeat keys evicted', async () => (await c.exists(keys.heartbeat(w.id), keys.heartbeat(v.id))) === 0, 5_000);
    await sleep(TTL * 1000 + 500);
    await c.config('SET', 'maxmemory', '0');
    await sleep(QUIET_MS);
    await c.config('SET', 'maxmemory-policy', 'noeviction');
    expect(buried([w])).toEqual([]);
    expect(await c.sismember(keys.den(den), v.id)).toBe(1);
    await c.flushall();
  });

  it('a peer whose wall clock is 10 s behind is not buried when its heartbeat key is deleted', async () => {
    const den = uniqueId('den');
    const w = await start(den, { AGENTD_WATCH_NOTIFICATIONS: 'off' });
    const v = await start(den, { AGENTD_WATCH: 'off', NODE_OPTIONS: `--import=${SKEW}`, AGENTD_TEST_CLOCK_SKEW_MS: '-10000' });
    await Promise.all([ready(w.d), ready(v.d)]);
    await sleep(TTL * 1000);
    for (let i = 0; i < 5; i++) {
      await c.del(keys.heartbeat(v.id)); // the seed's clear_agent_memory does this
      await sleep(300);
    }
    await sleep(QUIET_MS);
    expect(buried([w])).toEqual([]);
    expect(isAlive(v.d)).toBe(true);
  });

  it('a peer whose wall clock is 60 s ahead is reported within ttl + sweepInterval of its death, once', async () => {
    const den = uniqueId('den');
    const w = await start(den);
    const w2 = await start(den);
    const v = await start(den, { AGENTD_WATCH: 'off', NODE_OPTIONS: `--import=${SKEW}`, AGENTD_TEST_CLOCK_SKEW_MS: '60000' });
    await Promise.all([ready(w.d), ready(w2.d), ready(v.d)]);
    await sleep(TTL * 1000);
    v.d.signal('SIGKILL');
    const killedAt = Date.now();
    await waitFor('the death reported', () => buried([w, w2]).includes(v.id), (TTL + SWEEP) * 1000 + 2_000);
    expect(Date.now() - killedAt).toBeLessThanOrEqual((TTL + SWEEP) * 1000 + 2_000);
    await sleep(1_000);
    expect(buried([w, w2])).toEqual([v.id]);
    expectNoFatal(w.d);
  });

  it('registry hash and a live agent\'s heartbeat key both gone (allkeys eviction, a careless operator): not buried', async () => {
    const den = uniqueId('den');
    const w = await start(den, { AGENTD_WATCH_NOTIFICATIONS: 'off' });
    const v = await start(den, { AGENTD_WATCH: 'off' });
    await Promise.all([ready(w.d), ready(v.d)]);
    for (let i = 0; i < 3; i++) {
      // The victim is paused for 1 s, inside its budget of ttl - interval = 1.5 s.
      v.d.signal('SIGSTOP');
      await c.multi().del(keys.registry).del(keys.heartbeat(v.id)).exec();
      await sleep(1_000);
      v.d.signal('SIGCONT');
      await sleep(1_000);
    }
    await sleep(QUIET_MS);
    expect(buried([w])).toEqual([]);
    expect(await c.sismember(keys.den(den), v.id)).toBe(1);
  });

  it('held: FLUSHALL, the den set deleted, notifications turned off, forged expiry notifications, hostile records', async () => {
    const den = uniqueId('den');
    // Four dead at once among seven: the brake is off here, this is about what a reap survives.
    const xs = await Promise.all([1, 2, 3].map(() => start(den, { AGENTD_WATCH_MASS_DEATH_MIN: '0' })));
    await Promise.all(xs.map((x) => ready(x.d)));
    await c.flushall();
    await sleep(1_000);
    await c.del(keys.den(den));
    await sleep(1_000);
    await c.config('SET', 'notify-keyspace-events', '');
    for (const x of xs) await c.publish(`__keyspace@0__:${keys.heartbeat(x.id)}`, 'expired');
    // Records a watcher must survive and still report: 10,000 deep, 1 MB, a JSON string, already "down".
    const hostile = [`{"a":${'['.repeat(10_000)}${']'.repeat(10_000)}}`, JSON.stringify({ den, lastSeen: 1, big: 'x'.repeat(1 << 20) }), '"a string"', JSON.stringify({ den, status: 'down', lastSeen: 1 })];
    const ghosts: string[] = [];
    for (const rec of hostile) {
      const id = uniqueId('ghost');
      await c.sadd(keys.den(den), id);
      await c.hset(keys.registry, id, rec);
      ghosts.push(id);
    }
    await waitFor('every ghost reported', () => ghosts.every((g) => buried(xs).includes(g)), 10_000);
    await sleep(QUIET_MS);
    expect(buried(xs).sort()).toEqual([...ghosts].sort());
    for (const x of xs) {
      expect(isAlive(x.d)).toBe(true);
      expectNoFatal(x.d);
      expect(await c.sismember(keys.den(den), x.id)).toBe(1);
    }
  });

  it('held: kill -9 of 4 of 5 is reported, each exactly once, after at most watch.massDeathHold; a twin of a kill -9\'d agent may start', async () => {
    const den = uniqueId('den');
    const xs = await Promise.all(Array.from({ length: 5 }, () => start(den, { AGENTD_WATCH_MASS_DEATH_HOLD: '2', AGENTD_WATCH_NOTIFICATIONS: 'off' })));
    await Promise.all(xs.map((x) => ready(x.d)));
    const dead = xs.slice(1);
    for (const x of dead) x.d.signal('SIGKILL');
    await waitFor('all four reported', () => dead.every((x) => buried([xs[0]!]).includes(x.id)), (TTL + 2 + 2 * SWEEP) * 1000 + 3_000);
    await sleep(QUIET_MS);
    expect(buried([xs[0]!]).sort()).toEqual(dead.map((x) => x.id).sort());
    // The same id again, at once (same host, the old pid is gone): allowed, not refused.
    const again = await start(den, {}, dead[0]!.id);
    await ready(again.d);
    expect(isAlive(again.d)).toBe(true);
  });

  for (const size of [2, 3]) {
    it(`Redis frozen (SIGSTOP) for longer than the TTL: nobody in a den of ${size} is buried`, async () => {
      const den = uniqueId('den');
      const xs = await Promise.all(Array.from({ length: size }, () => start(den)));
      await Promise.all(xs.map((x) => ready(x.d)));
      await sleep(1000);
      await redis.pause();
      await sleep(TTL * 1000 + 1000);
      await redis.resume();
      await sleep(QUIET_MS);
      expect(buried(xs)).toEqual([]);
      for (const x of xs) expect(isAlive(x.d)).toBe(true);
    });
  }
});
