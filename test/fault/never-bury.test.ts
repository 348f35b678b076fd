/**
 * "Never bury a live agent" (issue 9, items 7, 10, 11, 12, 17), with daemons
 * as real child processes against a real redis-server:
 *   - a full Redis (maxmemory + noeviction) declares nobody dead, and the log names OOM;
 *   - a mass death holds the reap (brake), a third of a den dying is still reported;
 *   - a reap never loses a death, whatever the registry record holds, and never rewrites it lossily;
 *   - a deleted heartbeat (DEL, the seed's SCAN+DEL, `agentd memory clear`) is not a death;
 *   - duplicate agent ids: refused at start, loud at runtime, one twin's stop keeps the other;
 *   - only heartbeat expiries reach the daemon's subscriber.
 */
import { execFile } from 'node:child_process';
import { hostname } from 'node:os';
import { promisify } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Redis } from 'ioredis';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { runAgentd, type DaemonProcess } from '../helpers/daemon.ts';
import { freePort } from '../helpers/ports.ts';
import type { TestRedis } from '../helpers/redis.ts';
import { expectNoFatal, isAlive, peerHealthEnv, processSuite, scrape } from '../helpers/process.ts';
import { hasMsg, keys, metric, uniqueId, waitFor } from '../helpers/util.ts';

const run = promisify(execFile);
const SEED = new URL('../interop/seed_agent.py', import.meta.url).pathname;

const TTL = 2;
const INTERVAL = 0.5;
const SWEEP = 0.5;
/** Long enough for any heartbeat key to expire and two more sweeps to run. */
const QUIET_MS = (TTL + 2 * SWEEP) * 1000 + 1000;

interface Seen {
  readonly event: string;
  readonly data: Record<string, unknown>;
  readonly at: number;
}

const suite = processSuite({ redis: { requireControl: true }, env: peerHealthEnv({ ttl: TTL, interval: INTERVAL, sweep: SWEEP, notifications: 'enable' }) });

describe('never bury a live agent (daemons as child processes)', () => {
  let redis: TestRedis;
  let c: Redis;
  let observer: Redis;
  const seen: Seen[] = [];

  beforeAll(async () => {
    redis = suite.redis;
    c = redis.client({ connectionName: 'never-bury-cmd' });
    observer = redis.client({ connectionName: 'never-bury-observer' });
    observer.on('pmessage', (_p: string, _channel: string, message: string) => {
      try {
        const env = JSON.parse(message) as { event: string; data: Record<string, unknown> };
        seen.push({ event: env.event, data: env.data ?? {}, at: Date.now() });
      } catch {
        // not ours
      }
    });
    await observer.psubscribe('agent:events:agent_*');
  });

  afterEach(async () => {
    await c.config('SET', 'maxmemory', '0');
  });

  async function start(den: string, env: Record<string, string> = {}, id = uniqueId('nb')): Promise<{ id: string; d: DaemonProcess }> {
    return { id, d: await suite.spawn({ den, env, id }) };
  }

  const ready = (d: DaemonProcess): Promise<unknown> => d.waitForLog(hasMsg('agentd ready'), 20_000);
  const downsOf = (id: string): Seen[] => seen.filter((s) => s.event === 'agent_down' && s.data['agent'] === id);
  const downsIn = (den: string): Seen[] => seen.filter((s) => s.event === 'agent_down' && s.data['den'] === den);

  /** A member of `den` written the way another program would: heartbeat key (unless dead), den set, registry record. */
  async function fake(den: string, record: string | ((id: string) => string) | null, alive: boolean): Promise<string> {
    const id = uniqueId('fake');
    if (alive) await c.set(keys.heartbeat(id), String(Date.now()), 'PX', 120_000);
    await c.sadd(keys.den(den), id);
    if (record !== null) await c.hset(keys.registry, id, typeof record === 'string' ? record : record(id));
    return id;
  }
  /** An agentd-shaped record whose last beat was long ago. */
  const staleRecord = (den: string) => (id: string): string =>
    JSON.stringify({ id, den, host: 'gone-host', pid: 4242, version: '0.0.1', startedAt: 1000, status: 'online', lastSeen: Date.now() - 3_600_000 });

  // --- 7: a full Redis -------------------------------------------------------

  it('Redis full (maxmemory, noeviction): no live agent reported down, a failing watcher reaps nobody, the log says OOM', async () => {
    const den = uniqueId('den');
    const a = await start(den);
    const b = await start(den);
    await Promise.all([ready(a.d), ready(b.d)]);
    // A member that really is dead: with healthy watchers it would be reaped within a sweep.
    const ghost = await fake(den, staleRecord(den), false);
    await waitFor('ghost reaped while Redis is healthy', () => downsOf(ghost).length === 1, 5_000);

    const ghost2 = await fake(den, staleRecord(den), false);
    await c.config('SET', 'maxmemory-policy', 'noeviction');
    await c.config('SET', 'maxmemory', '1');
    const fullAt = Date.now();
    await sleep(QUIET_MS);

    expect(downsIn(den).map((s) => s.data['agent']), 'only the first ghost, reaped before Redis was full').toEqual([ghost]);
    for (const x of [a, b]) {
      expect(await c.exists(keys.heartbeat(x.id)), `${x.id} heartbeat kept alive under OOM`).toBe(1);
      expect(await c.sismember(keys.den(den), x.id), `${x.id} still in its den`).toBe(1);
      const oom = x.d.logs.filter((l) => l['level'] === 'warn' && /OOM command not allowed/.test(String(l['err'] ?? '')));
      expect(oom.length, `${x.id} logs the OOM cause`).toBeGreaterThanOrEqual(1);
      expect(x.d.logs.some((l) => /EXECABORT/.test(String(l['err'] ?? '')) && !/OOM/.test(String(l['err'] ?? ''))), 'never EXECABORT alone').toBe(false);
      expect(x.d.logs.some(hasMsg(/not reaping/)), `${x.id} says it holds its reaps`).toBe(true);
    }
    // The ghost waits: no watcher reaps while its own writes fail.
    expect(await c.sismember(keys.den(den), ghost2)).toBe(1);

    await c.config('SET', 'maxmemory', '0');
    await Promise.all([a, b].map((x) => x.d.waitForLog((l) => hasMsg('heartbeat restored')(l) && Date.now() > fullAt, 5_000)));
    // Healthy again: the real death is reported now, once.
    await waitFor('ghost2 reaped after Redis recovered', () => downsOf(ghost2).length === 1, 5_000);
    await sleep(1_000);
    expect(downsOf(ghost2)).toHaveLength(1);
    expect(downsOf(a.id).concat(downsOf(b.id))).toEqual([]);
    // Nobody was out of the den, so nobody rejoined.
    expect(seen.filter((s) => s.event === 'agent_online' && s.data['rejoined'] === true && (s.data['agent'] === a.id || s.data['agent'] === b.id))).toEqual([]);
    for (const x of [a, b]) {
      expect(isAlive(x.d)).toBe(true);
      expectNoFatal(x.d);
    }
  });

  // --- 7c: mass death ----------------------------------------------------------

  it('mass death: most of a den gone at once holds (logged, counted); a third of a den dying is reported', async () => {
    const port = await freePort();
    const den = uniqueId('den');
    const w = await start(den, { AGENTD_HTTP_PORT: String(port) });
    await ready(w.d);
    const living = await fake(den, null, true);
    const doomed = await Promise.all([1, 2, 3].map(() => fake(den, staleRecord(den), true)));
    // 3 of 5 members lose their heartbeat at once (e.g. a lagging replica was promoted).
    await c.del(...doomed.map(keys.heartbeat));
    await sleep(QUIET_MS);
    expect(downsIn(den), 'no agent_down storm').toEqual([]);
    expect(await c.scard(keys.den(den))).toBe(5);
    const held = w.d.logs.filter(hasMsg(/mass death/));
    expect(held.length, 'the hold is logged').toBeGreaterThanOrEqual(1);
    expect(held.length, 'once, not once per sweep').toBeLessThanOrEqual(2);
    expect(held[0]).toMatchObject({ peerDen: den, missing: 3, members: 5 });
    expect(metric(await scrape(port), 'agentd_mass_death_holds_total', { den })).toBeGreaterThanOrEqual(1);
    expect(living).toBeTypeOf('string');

    // A third of another den dies at once: that is reported.
    const den2 = uniqueId('den');
    const w2 = await start(den2);
    await ready(w2.d);
    const alive2 = await Promise.all([1, 2, 3].map(() => fake(den2, null, true)));
    const dead2 = await Promise.all([1, 2].map(() => fake(den2, staleRecord(den2), true)));
    expect(alive2).toHaveLength(3);
    await c.del(...dead2.map(keys.heartbeat));
    await waitFor('both deaths of den2 reported', () => downsIn(den2).length === 2, 5_000);
    expect(downsIn(den2).map((s) => s.data['agent']).sort()).toEqual([...dead2].sort());
    expect(w2.d.logs.some(hasMsg(/mass death/))).toBe(false);

    // A hold that outlasts watch.massDeathHold is released: the dead are reported after all.
    const den3 = uniqueId('den');
    const w3 = await start(den3, { AGENTD_WATCH_MASS_DEATH_HOLD: '2', AGENTD_WATCH_NOTIFICATIONS: 'off' });
    await ready(w3.d);
    await fake(den3, null, true);
    const dead3 = await Promise.all([1, 2, 3].map(() => fake(den3, staleRecord(den3), true)));
    await c.del(...dead3.map(keys.heartbeat));
    const heldAt = Date.now();
    await w3.d.waitForLog(hasMsg(/mass death: most of the den/), 5_000);
    await waitFor('the held deaths reported once the hold expired', () => downsIn(den3).length === 3, 10_000);
    expect(Date.now() - heldAt, 'not before the hold expired').toBeGreaterThanOrEqual(2_000);
    expect(w3.d.logs.some(hasMsg('mass death hold expired; reaping'))).toBe(true);
  });

  // --- 10: hostile registry records -------------------------------------------

  it('a reap never loses a death and never rewrites a record it cannot rewrite losslessly', async () => {
    const den = uniqueId('den');
    // Five dead members at once: the mass-death brake is off here, this is about the reap itself.
    const w = await start(den, { AGENTD_WATCH_NOTIFICATIONS: 'off', AGENTD_WATCH_MASS_DEATH_MIN: '0' });
    await ready(w.d);
    const hostile = {
      inf: (id: string) => `{"id":"${id}","den":"${den}","host":"h-inf","status":"online","lastSeen":1000,"score":1e999}`,
      lossy: (id: string) => `{"id":"${id}","den":"${den}","host":"h-lossy","status":"online","lastSeen":1000,"tags":[],"f":3.141592653589793,"n":12345678901234567}`,
      notObject: () => '[1,2,3]',
      notJson: () => 'not json at all',
    };
    const ids: Record<string, string> = {};
    const before: Record<string, string> = {};
    for (const [name, rec] of Object.entries(hostile)) {
      ids[name] = await fake(den, rec, false);
      before[name] = (await c.hget(keys.registry, ids[name]!))!;
    }
    const plain = await fake(den, staleRecord(den), false);
    await waitFor('every death reported', () => Object.values(ids).every((id) => downsOf(id).length === 1) && downsOf(plain).length === 1, 5_000);
    await sleep(1_500);
    for (const [name, id] of Object.entries(ids)) {
      expect(downsOf(id), `${name}: exactly one agent_down`).toHaveLength(1);
      expect(await c.sismember(keys.den(den), id), `${name}: out of the den`).toBe(0);
      expect(await c.hget(keys.registry, id), `${name}: record left byte for byte`).toBe(before[name]);
    }
    expect(downsOf(ids['inf']!)[0]!.data).toMatchObject({ host: 'h-inf', lastSeen: 1000 });
    expect(downsOf(ids['lossy']!)[0]!.data).toMatchObject({ host: 'h-lossy', lastSeen: 1000 });
    // A record in agentd's own shape is marked down, every other field kept.
    const rec = JSON.parse((await c.hget(keys.registry, plain))!) as Record<string, unknown>;
    expect(rec).toMatchObject({ id: plain, den, host: 'gone-host', pid: 4242, version: '0.0.1', startedAt: 1000, status: 'down' });
    expect(rec['downAt']).toBeTypeOf('number');
    expect(isAlive(w.d)).toBe(true);
    expectNoFatal(w.d);
  });

  // --- 11: deleted heartbeat -----------------------------------------------------

  it('a deleted heartbeat is not a death: DEL, the seed\'s SCAN+DEL and `agentd memory clear` on a live agent', async () => {
    const den = uniqueId('den');
    const victim = await start(den);
    const watcher = await start(den, { AGENTD_WATCH_NOTIFICATIONS: 'off' });
    await Promise.all([ready(victim.d), ready(watcher.d)]);

    await c.del(keys.heartbeat(victim.id));
    await sleep(QUIET_MS);
    expect(downsOf(victim.id), 'after DEL').toEqual([]);

    await c.set(`agent:${victim.id}:memory:topic`, 'x');
    const { stdout } = await run('/usr/bin/python3', [SEED, redis.url, victim.id, 'clear']);
    expect(Number(stdout)).toBeGreaterThanOrEqual(1);
    await sleep(QUIET_MS);
    expect(downsOf(victim.id), 'after the seed\'s clear_agent_memory').toEqual([]);

    await c.set(`agent:${victim.id}:memory:topic`, 'x');
    const cli = await runAgentd(['memory', 'clear', victim.id, '--yes'], { env: { AGENTD_REDIS_URL: redis.url } });
    expect(cli.code).toBe(0);
    expect(cli.stdout).toMatch(/removed 1 key/);
    expect(cli.stdout).toMatch(/heartbeat/);
    expect(await c.exists(keys.heartbeat(victim.id)), 'agentd memory clear spares the heartbeat').toBe(1);
    expect(await c.exists(`agent:${victim.id}:memory:topic`)).toBe(0);
    await sleep(QUIET_MS);
    expect(downsOf(victim.id), 'after agentd memory clear').toEqual([]);
    expect(await c.sismember(keys.den(den), victim.id)).toBe(1);
    expect(seen.filter((s) => s.event === 'agent_online' && s.data['agent'] === victim.id && s.data['rejoined'] === true)).toEqual([]);
    expectNoFatal(victim.d);
  });

  // --- 12: duplicate ids ---------------------------------------------------------

  it('duplicate agent ids: a second live instance is refused at start with one line naming the other host and pid', async () => {
    const den = uniqueId('den');
    const first = await start(den);
    await ready(first.d);
    const second = await runAgentd(['run'], {
      env: {
        AGENTD_REDIS_URL: redis.url,
        AGENTD_AGENT_ID: first.id,
        AGENTD_DEN: den,
        AGENTD_HEARTBEAT_TTL: String(TTL),
        AGENTD_HEARTBEAT_INTERVAL: String(INTERVAL),
        AGENTD_LOG_LEVEL: 'warn',
      },
      timeoutMs: 15_000,
    }).catch((err: unknown) => ({ code: -1, stdout: '', stderr: String(err) }));
    expect(second.code).toBe(2);
    const lines = second.stderr.trim().split('\n');
    expect(lines.at(-1)).toContain(hostname());
    expect(lines.at(-1)).toContain(`pid ${first.d.pid}`);
    expect(second.stderr.match(/already live/g)).toHaveLength(1);
    // The first one never noticed anything.
    expect(isAlive(first.d)).toBe(true);
    expect(seen.filter((s) => s.event === 'agent_offline' && s.data['agent'] === first.id)).toEqual([]);
  });

  it('duplicate agent ids at runtime: both twins log an error, a metric counts it, one twin\'s stop keeps the other\'s presence', async () => {
    const den = uniqueId('den');
    const id = uniqueId('twin');
    const port = await freePort();
    const a = await start(den, { AGENTD_WATCH: 'off' }, id);
    await ready(a.d);
    // A looks dead (frozen past its TTL), so B may start; then A wakes up: two live instances.
    a.d.signal('SIGSTOP');
    await waitFor('A\'s heartbeat expired', async () => (await c.exists(keys.heartbeat(id))) === 0, 5_000);
    const b = await start(den, { AGENTD_WATCH: 'off', AGENTD_HTTP_PORT: String(port) }, id);
    await ready(b.d);
    a.d.signal('SIGCONT');
    await Promise.all([a, b].map((x) => x.d.waitForLog((l) => l['level'] === 'error' && hasMsg(/another instance/)(l), 5_000)));
    expect(metric(await scrape(port), 'agentd_duplicate_instances_total')).toBeGreaterThanOrEqual(1);

    const offlineBefore = seen.filter((s) => s.event === 'agent_offline' && s.data['agent'] === id).length;
    a.d.signal('SIGTERM');
    expect((await a.d.exited).code).toBe(0);
    // B's presence is all there, at once and for a while after.
    for (let i = 0; i < 5; i++) {
      expect(await c.exists(keys.heartbeat(id)), 'heartbeat of the live twin').toBe(1);
      expect(await c.sismember(keys.den(den), id), 'den membership of the live twin').toBe(1);
      expect((JSON.parse((await c.hget(keys.registry, id))!) as { status: string }).status).toBe('online');
      await sleep(100);
    }
    expect(seen.filter((s) => s.event === 'agent_offline' && s.data['agent'] === id).length, 'no agent_offline for a live agent').toBe(offlineBefore);
    expect(isAlive(b.d)).toBe(true);
  });

  // --- 17: only heartbeat expiries reach the daemon -----------------------------

  it('100,000 expiring non-heartbeat keys do not reach the daemon\'s subscriber; a heartbeat expiry does', async () => {
    const port = await freePort();
    await c.config('SET', 'notify-keyspace-events', '');
    const den = uniqueId('den');
    const w = await start(den, { AGENTD_HTTP_PORT: String(port), AGENTD_SWEEP_INTERVAL: '30' });
    await ready(w.d);
    // Control: a raw subscriber that sees every expiry the server announces.
    const control = redis.client({ connectionName: 'never-bury-control' });
    let announced = 0;
    let heartbeatsExpired = 0;
    control.on('pmessage', (_p: string, ch: string, msg: string) => {
      if (msg !== 'expired') return;
      announced++;
      if (/^__keyspace@0__:agent:[^:]+:heartbeat$/.test(ch)) heartbeatsExpired++;
    });
    control.on('message', () => announced++);
    await control.psubscribe('__keyspace@0__:*');
    await control.subscribe('__keyevent@0__:expired');
    const expiredEvents = (): Promise<number> => c.call('PUBSUB', ['NUMSUB', '__keyevent@0__:expired']).then((r) => (r as [string, number])[1]);
    expect(await expiredEvents(), 'only the control listens to every expired key').toBe(1);

    const N = 100_000;
    for (let i = 0; i < N; i += 5_000) {
      const p = c.pipeline();
      for (let j = i; j < i + 5_000; j++) p.set(`cache:${den}:${j}`, 'v', 'PX', 50);
      await p.exec();
    }
    const ghost = await fake(den, staleRecord(den), false);
    await c.set(keys.heartbeat(ghost), '1', 'PX', 100);
    // Touch every key so that each one expires now rather than whenever the active cycle gets to it.
    let cursor = '0';
    do {
      const [next] = await c.scan(cursor, 'MATCH', `cache:${den}:*`, 'COUNT', 5_000);
      cursor = next;
    } while (cursor !== '0');
    await waitFor(`${N} expiries announced to the control subscriber`, () => announced >= N, 30_000, 100);
    await waitFor('the ghost reaped via expiry', () => downsOf(ghost).length === 1, 5_000);
    expect(downsOf(ghost)[0]!.data['via']).toBe('expiry');
    // Heartbeat keys left by earlier tests' killed daemons may expire meanwhile too: those count, nothing else does.
    await sleep(200);
    const delivered = metric(await scrape(port), 'agentd_expiry_notifications_total');
    expect(heartbeatsExpired).toBeGreaterThanOrEqual(1);
    expect(heartbeatsExpired).toBeLessThan(20);
    expect(delivered, 'heartbeat expiries only').toBe(heartbeatsExpired);
    await control.quit();
    expect(isAlive(w.d)).toBe(true);
  }, 60_000);
});
