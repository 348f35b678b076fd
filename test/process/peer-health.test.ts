/**
 * Peer health with real processes: daemons run as child processes against a
 * real redis-server, are killed, frozen and stopped, and an observer client
 * (psubscribed to agent:events:agent_*) records every membership event with
 * its arrival time. Checks the promises of docs/peer-health.md: one
 * agent_down per death, within ttl + sweepInterval, from either detector;
 * none for a graceful stop or a busy handler; rejoin after a freeze.
 */
import { hostname } from 'node:os';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DaemonProcess } from '../helpers/daemon.ts';
import type { TestRedis } from '../helpers/redis.ts';
import { expectNoFatal, isAlive, peerHealthEnv, processSuite } from '../helpers/process.ts';
import { hasMsg, keys, parseClientList, uniqueId, waitFor } from '../helpers/util.ts';

const SPIN = fileURLToPath(new URL('../fixtures/plugins/spin.js', import.meta.url));

const TTL = 2;
const INTERVAL = 0.5;
const SWEEP = 0.5;
/** ttl + sweepInterval, plus 1 s for process and CI noise. */
const BOUND_MS = (TTL + SWEEP) * 1000 + 1000;
/** The observer connects as its own ACL user, so `CLIENT KILL ... USER default` spares it. */
const OBSERVER_USER = 'ph-observer';
const OBSERVER_PASSWORD = 'ph-observer-pw';

interface Membership {
  readonly event: string;
  readonly channel: string;
  readonly data: Record<string, unknown>;
  readonly source: unknown;
  /** Arrival time at the observer (Date.now()). */
  readonly at: number;
}

interface Agent {
  readonly id: string;
  readonly den: string;
  readonly d: DaemonProcess;
}

interface Detection {
  readonly scenario: string;
  readonly ms: number;
  readonly via: unknown;
}

const suite = processSuite({ redis: { requireControl: true }, env: peerHealthEnv({ ttl: TTL, interval: INTERVAL, sweep: SWEEP }) });

describe('peer health (daemons as child processes)', () => {
  let redis: TestRedis;
  /** Commands and server control. */
  let c: Redis;
  let observer: Redis;
  const seen: Membership[] = [];
  const detections: Detection[] = [];

  beforeAll(async () => {
    redis = suite.redis;
    c = redis.client({ connectionName: 'peer-health-cmd' });
    await c.call('ACL', ['SETUSER', OBSERVER_USER, 'on', `>${OBSERVER_PASSWORD}`, '~*', '&*', '+@all']);
    observer = redis.client({ username: OBSERVER_USER, password: OBSERVER_PASSWORD, connectionName: 'peer-health-observer' });
    observer.on('pmessage', (_pattern: string, channel: string, message: string) => {
      const at = Date.now();
      try {
        const env = JSON.parse(message) as Record<string, unknown>;
        const data = env['data'];
        seen.push({
          event: String(env['event']),
          channel,
          data: data !== null && typeof data === 'object' ? (data as Record<string, unknown>) : {},
          source: env['source'],
          at,
        });
      } catch {
        seen.push({ event: '(invalid)', channel, data: { raw: message }, source: undefined, at });
      }
    });
    await observer.psubscribe('agent:events:agent_*');
  });

  afterAll(() => {
    if (detections.length > 0) {
      const lines = detections.map((x) => `  ${x.scenario.padEnd(44)} ${String(x.ms).padStart(5)} ms  via ${String(x.via)}`);
      console.log(`peer-health detection times (ttl ${TTL} s, interval ${INTERVAL} s, sweep ${SWEEP} s; bound ${BOUND_MS} ms from the fault):\n${lines.join('\n')}`);
    }
  });

  // --- helpers -------------------------------------------------------------

  /** A daemon in `den`; `fast: false` leaves the heartbeat and sweep at their defaults. */
  async function startAgent(den: string, env: Record<string, string>, fast = true): Promise<Agent> {
    const slow = { AGENTD_HEARTBEAT_TTL: '', AGENTD_HEARTBEAT_INTERVAL: '', AGENTD_SWEEP_INTERVAL: '' };
    const d = await suite.spawn({ den, id: uniqueId('ph'), env: { ...(fast ? {} : slow), ...env } });
    return { id: d.id, den, d };
  }

  const membership = (event: string, agent: string): Membership[] => seen.filter((m) => m.event === event && m.data['agent'] === agent);
  const downsOf = (agent: string): Membership[] => membership('agent_down', agent);
  const downsIn = (den: string): Membership[] => seen.filter((m) => m.event === 'agent_down' && m.data['den'] === den);

  /** Ready in its own log, and its agent_online seen by the observer. */
  async function whenOnline(a: Agent): Promise<void> {
    await a.d.waitForLog(hasMsg('agentd ready'), 20_000);
    await waitFor(`agent_online of ${a.id}`, () => membership('agent_online', a.id).length > 0, 5_000);
  }

  async function startGroup(n: number, env: Record<string, string>): Promise<Agent[]> {
    const den = uniqueId('den');
    const agents = await Promise.all(Array.from({ length: n }, () => startAgent(den, env)));
    await Promise.all(agents.map(whenOnline));
    return agents;
  }

  async function registry(id: string): Promise<Record<string, unknown>> {
    const raw = await c.hget(keys.registry, id);
    expect(raw, `registry record of ${id}`).not.toBeNull();
    return JSON.parse(raw as string) as Record<string, unknown>;
  }

  /** Waits for the first agent_down of `id`, checks it came within the bound, then that no second one follows for 2 s. */
  async function expectOneDown(scenario: string, id: string, den: string, faultAt: number, watchers: readonly Agent[]): Promise<Membership> {
    const down = await waitFor(`agent_down of ${id}`, () => downsOf(id)[0], BOUND_MS + 5_000, 10);
    const ms = down.at - faultAt;
    detections.push({ scenario, ms, via: down.data['via'] });
    expect(ms, `${scenario}: agent_down after ${ms} ms`).toBeLessThan(BOUND_MS);
    await sleep(2_000);
    expect(downsOf(id), 'exactly one agent_down').toHaveLength(1);
    expect(downsIn(den), 'no other agent of the den reported down').toHaveLength(1);
    expect(down.channel).toBe(keys.channel('agent_down'));
    expect(down.data).toMatchObject({ agent: id, den, host: hostname() });
    expect(watchers.map((w) => w.id)).toContain(down.data['detectedBy']);
    expect(down.source).toBe(down.data['detectedBy']);
    // The watcher that reaped it says so in its log.
    const reaper = watchers.find((w) => w.id === down.data['detectedBy']);
    expect(reaper?.d.logs.some((l) => hasMsg('agent down: heartbeat expired')(l) && l['peer'] === id)).toBe(true);
    return down;
  }

  /** The record a reap leaves: status down, downAt set, host and the rest kept; out of the den set. */
  async function expectReaped(a: Agent, faultAt: number, down: Membership): Promise<void> {
    const rec = await registry(a.id);
    expect(rec).toMatchObject({ id: a.id, den: a.den, host: hostname(), pid: a.d.pid, status: 'down' });
    expect(rec['downAt']).toBeTypeOf('number');
    expect(rec['downAt'] as number).toBeGreaterThanOrEqual(faultAt);
    expect(rec['downAt'] as number).toBeLessThanOrEqual(down.at);
    expect(await c.sismember(keys.den(a.den), a.id)).toBe(0);
    expect(await c.exists(keys.heartbeat(a.id))).toBe(0);
  }

  /** Survivors are still in the den and healthy. */
  async function expectHealthy(agents: readonly Agent[]): Promise<void> {
    for (const a of agents) {
      expect(isAlive(a.d), `${a.id} alive`).toBe(true);
      expect(await c.sismember(keys.den(a.den), a.id), `${a.id} in its den`).toBe(1);
      expect(downsOf(a.id), `${a.id} never reported down`).toEqual([]);
      expectNoFatal(a.d);
    }
  }

  /** Resolves once the observer receives a message published now (after its connection was killed). */
  async function observerSubscribed(): Promise<void> {
    await waitFor(
      'observer subscribed again',
      async () => {
        const token = uniqueId('probe');
        await c.publish(keys.channel('agent_probe'), JSON.stringify({ event: 'agent_probe', data: { token } }));
        await sleep(30);
        return seen.some((m) => m.event === 'agent_probe' && m.data['token'] === token);
      },
      5_000,
      0,
    );
  }

  // --- kill -9 -------------------------------------------------------------

  async function killScenario(notifications: 'enable' | 'off'): Promise<Membership> {
    // Start from a server without notifications: 'enable' must turn them on, 'off' must leave them off.
    await c.config('SET', 'notify-keyspace-events', '');
    const group = await startGroup(3, { AGENTD_WATCH_NOTIFICATIONS: notifications });
    const [victim, ...survivors] = group as [Agent, ...Agent[]];
    const flags = ((await c.config('GET', 'notify-keyspace-events')) as string[])[1] ?? '';
    if (notifications === 'enable') {
      expect(flags).toContain('K');
      expect(flags).toMatch(/[xA]/);
    } else {
      expect(flags).toBe('');
    }

    victim.d.signal('SIGKILL');
    const killedAt = Date.now();
    expect(await victim.d.exited).toEqual({ code: null, signal: 'SIGKILL' });
    const down = await expectOneDown(`kill -9, notifications ${notifications}`, victim.id, victim.den, killedAt, survivors);
    const lastSeen = down.data['lastSeen'] as number;
    expect(lastSeen).toBeTypeOf('number');
    expect(lastSeen).toBeLessThanOrEqual(killedAt);
    expect(killedAt - lastSeen).toBeLessThan(TTL * 1000);
    await expectReaped(victim, killedAt, down);
    await expectHealthy(survivors);
    return down;
  }

  it('kill -9 with expiry notifications enabled: exactly one agent_down within ttl + sweep', async () => {
    const down = await killScenario('enable');
    expect(['expiry', 'sweep']).toContain(down.data['via']);
  });

  it('kill -9 with notifications off (server and daemons): the sweep alone reports it once, within ttl + sweep', async () => {
    const down = await killScenario('off');
    expect(down.data['via']).toBe('sweep');
  });

  // --- graceful stop -------------------------------------------------------

  it('SIGTERM: agent_offline, and no agent_down within 3 x ttl', async () => {
    const [victim, ...survivors] = (await startGroup(3, { AGENTD_WATCH_NOTIFICATIONS: 'enable' })) as [Agent, ...Agent[]];
    victim.d.signal('SIGTERM');
    const t0 = Date.now();
    const offline = await waitFor('agent_offline', () => membership('agent_offline', victim.id)[0], 5_000, 10);
    expect(offline.data).toMatchObject({ agent: victim.id, den: victim.den, host: hostname(), reason: 'shutdown' });
    expect(offline.source).toBe(victim.id);
    expect(await victim.d.exited).toEqual({ code: 0, signal: null });

    await sleep(Math.max(0, t0 + 3 * TTL * 1000 - Date.now()));
    expect(downsOf(victim.id)).toEqual([]);
    expect(membership('agent_offline', victim.id)).toHaveLength(1);
    expect((await registry(victim.id))['status']).toBe('offline');
    expect(await c.sismember(keys.den(victim.den), victim.id)).toBe(0);
    expect(await c.exists(keys.heartbeat(victim.id))).toBe(0);
    await expectHealthy(survivors);
    expectNoFatal(victim.d);
  });

  // --- frozen daemon -------------------------------------------------------

  it('SIGSTOP for 3 x ttl: reported down once; after SIGCONT it rejoins (agent_online, rejoined) and stays', async () => {
    const [victim, ...survivors] = (await startGroup(3, { AGENTD_WATCH_NOTIFICATIONS: 'enable' })) as [Agent, ...Agent[]];
    victim.d.signal('SIGSTOP');
    const stoppedAt = Date.now();
    const down = await waitFor('agent_down of the frozen agent', () => downsOf(victim.id)[0], BOUND_MS + 5_000, 10);
    const ms = down.at - stoppedAt;
    detections.push({ scenario: 'SIGSTOP', ms, via: down.data['via'] });
    expect(ms).toBeLessThan(BOUND_MS);
    expect(survivors.map((s) => s.id)).toContain(down.data['detectedBy']);
    await expectReaped(victim, stoppedAt, down);

    await sleep(Math.max(0, stoppedAt + 3 * TTL * 1000 - Date.now()));
    expect(downsOf(victim.id), 'one agent_down while frozen').toHaveLength(1);
    expect(membership('agent_online', victim.id).filter((m) => m.data['rejoined'] === true)).toEqual([]);

    victim.d.signal('SIGCONT');
    const contAt = Date.now();
    const back = await waitFor('agent_online (rejoined)', () => membership('agent_online', victim.id).find((m) => m.data['rejoined'] === true), 5_000, 10).catch((e) => { console.log('VICTIM', JSON.stringify(victim.d.logs.slice(-40).map((l) => [l['time'], l['component'], l['msg'], l['err'] ?? l['reason'] ?? '']))); throw e; });
    detections.push({ scenario: 'SIGCONT -> agent_online (rejoined)', ms: back.at - contAt, via: '-' });
    expect(back.source).toBe(victim.id);
    expect(back.data).toMatchObject({ agent: victim.id, den: victim.den, host: hostname(), rejoined: true });
    expect(await c.sismember(keys.den(victim.den), victim.id)).toBe(1);
    expect(await registry(victim.id)).toMatchObject({ status: 'online', pid: victim.d.pid });
    await victim.d.waitForLog(hasMsg(/missing from its den/), 2_000);

    // Back for good: no second death, and it keeps beating.
    await sleep(2_000);
    expect(downsOf(victim.id)).toHaveLength(1);
    expect(membership('agent_online', victim.id).filter((m) => m.data['rejoined'] === true)).toHaveLength(1);
    expect(await c.pttl(keys.heartbeat(victim.id))).toBeGreaterThan(0);
    await expectHealthy(survivors);
    expect(isAlive(victim.d)).toBe(true);
    expect(await c.sismember(keys.den(victim.den), victim.id)).toBe(1);
    expectNoFatal(victim.d);
  });

  // --- lost notifications --------------------------------------------------

  it('CLIENT KILL TYPE pubsub, then kill -9: still reported down once (the sweep covers the lost notification)', async () => {
    const [victim, ...survivors] = (await startGroup(3, { AGENTD_WATCH_NOTIFICATIONS: 'enable' })) as [Agent, ...Agent[]];
    const killed = (await c.call('CLIENT', ['KILL', 'TYPE', 'pubsub'])) as number;
    victim.d.signal('SIGKILL');
    const killedAt = Date.now();
    // Every subscriber went: the three daemons' and the observer's.
    expect(killed).toBeGreaterThanOrEqual(4);
    await observerSubscribed();
    for (const s of survivors) {
      await s.d.waitForLog(hasMsg(/event subscription lost/), 5_000);
      await s.d.waitForLog(hasMsg(/event subscription confirmed again/), 5_000);
    }

    // The survivors have resubscribed by now, so make sure the expiry
    // notification of this very key is lost as well: kill the watchers'
    // subscriber connections again (the daemons reconnect no sooner than
    // 50 ms later) and, in the same MULTI, touch the key so Redis deletes
    // it, and sends `expired`, while none of them is subscribed.
    const heartbeat = keys.heartbeat(victim.id);
    const pttl = await c.pttl(heartbeat);
    expect(pttl, 'heartbeat still alive ~1 s after the kill').toBeGreaterThan(100);
    await sleep(pttl - 100);
    // Close in on the expiry with fresh readings from Redis itself, then start killing ~45 ms before it.
    for (;;) {
      const left = await c.pttl(heartbeat);
      expect(left, 'heartbeat key still there while closing in on its expiry').toBeGreaterThan(0);
      if (left <= 45) break;
      await sleep(Math.min(10, left - 45));
    }
    let subscribedAtExpiry = -1;
    let kills = 0;
    for (const deadline = Date.now() + 3_000; Date.now() < deadline; ) {
      const replies = (await c.multi().call('CLIENT', ['KILL', 'TYPE', 'pubsub', 'USER', 'default']).exists(heartbeat).exec()) ?? [];
      kills++;
      if (replies[1]?.[1] === 0) {
        subscribedAtExpiry = replies[0]?.[1] as number;
        break;
      }
      await sleep(4);
    }
    expect(subscribedAtExpiry, 'precondition: no watcher was subscribed when the heartbeat key was deleted').toBe(0);
    expect(kills, 'precondition: the killing started before the key expired').toBeGreaterThan(1);

    const down = await expectOneDown('CLIENT KILL pubsub + kill -9', victim.id, victim.den, killedAt, survivors);
    // The notification never reached a watcher, so only the sweep can have found it.
    expect(down.data['via']).toBe('sweep');
    await expectReaped(victim, killedAt, down);
    await expectHealthy(survivors);
    // And the survivors listen for expiry notifications again, so the next death is fast again.
    // (PUBSUB NUMPAT counts patterns of all clients: count the survivors' subscriber connections with 1 pattern,
    // the heartbeat keyspace pattern; without a plugin their events come by SUBSCRIBE, not agent:events:*.)
    await waitFor(
      'survivors subscribed to the heartbeat keyspace pattern again',
      async () => parseClientList((await c.call('CLIENT', ['LIST', 'TYPE', 'pubsub'])) as string).filter((cl) => cl['user'] === 'default' && cl['psub'] === '1').length === survivors.length,
      5_000,
    );
  });

  // --- busy handlers ---------------------------------------------------------

  const publishSpin = (den: string): Promise<number> => c.publish(keys.channel('spin'), JSON.stringify({ event: 'spin', data: { den } }));
  const spinsDone = (a: Agent): Array<Record<string, unknown>> => a.d.logs.filter(hasMsg('spin done'));

  it('a handler that spins the CPU for 1 s, default ttl (60 s) and interval: no agent_down, heartbeat far from expiry', async () => {
    const den = uniqueId('den');
    const spinner = await startAgent(den, { AGENTD_PLUGINS: SPIN, AGENTD_WATCH_NOTIFICATIONS: 'enable' }, false);
    const peer = await startAgent(den, { AGENTD_WATCH_NOTIFICATIONS: 'enable' }, false);
    await Promise.all([whenOnline(spinner), whenOnline(peer)]);

    // Only the spinner handles spin; the peer (no plugins) SUBSCRIBEs to agentd's membership channels only.
    expect(await publishSpin(den)).toBe(1);
    const done = await spinner.d.waitForLog(hasMsg('spin done'), 10_000);
    expect(done['spunMs'] as number).toBeGreaterThanOrEqual(1_000);
    await sleep(1_000);

    expect(downsIn(den)).toEqual([]);
    expect(await c.sismember(keys.den(den), spinner.id)).toBe(1);
    // 60 s TTL refreshed every 20 s: the key has at least 40 s left whatever the phase; a 1 s block cannot use that up.
    expect(await c.pttl(keys.heartbeat(spinner.id))).toBeGreaterThan(35_000);
    expect((await registry(spinner.id))['status']).toBe('online');
    await expectHealthy([spinner, peer]);
  });

  it('three 1 s spins in a row with ttl 2 s / interval 0.5 s: no agent_down within 4 s, still in its den, blocked loop logged', async () => {
    const den = uniqueId('den');
    const spinner = await startAgent(den, { AGENTD_PLUGINS: SPIN, AGENTD_WATCH_NOTIFICATIONS: 'enable' });
    const peers = await Promise.all([startAgent(den, { AGENTD_WATCH_NOTIFICATIONS: 'enable' }), startAgent(den, { AGENTD_WATCH_NOTIFICATIONS: 'enable' })]);
    await Promise.all([spinner, ...peers].map(whenOnline));

    // In a row: one pipeline, so the three arrive together, as a burst of work does.
    const t0 = Date.now();
    const pipe = c.pipeline();
    for (let i = 0; i < 3; i++) pipe.publish(keys.channel('spin'), JSON.stringify({ event: 'spin', data: { den, n: i } }));
    await pipe.exec();
    await waitFor('three spins done', () => spinsDone(spinner).length === 3, 10_000);
    await sleep(Math.max(0, t0 + 4_000 - Date.now()));

    const warnings = spinner.d.logs.filter((l) => l['level'] === 'warn');
    const spins = spinsDone(spinner).map((l) => String(l['time']));
    console.log(`three 1 s spins: done at ${spins.join(', ')}; spinner warnings: ${JSON.stringify(warnings.map((w) => ({ time: w['time'], msg: w['msg'], lateMs: w['lateMs'], loopDelayMaxMs: w['loopDelayMaxMs'] })))}`);

    expect(downsOf(spinner.id), 'no false death of the spinning agent').toEqual([]);
    expect(membership('agent_online', spinner.id).filter((m) => m.data['rejoined'] === true), 'never had to rejoin').toEqual([]);
    expect(await c.sismember(keys.den(den), spinner.id)).toBe(1);
    expect((await registry(spinner.id))['status']).toBe('online');
    for (const s of spinsDone(spinner)) expect(s['spunMs'] as number).toBeGreaterThanOrEqual(1_000);
    // LoopMonitor (src/presence/loop-monitor.ts) warns when the loop was blocked for over half of ttl - interval (750 ms here).
    const blocked = spinner.d.logs.filter(hasMsg(/^event loop was blocked for over half/));
    expect(blocked.length, 'an "event loop was blocked for over half of ..." warning').toBeGreaterThanOrEqual(1);
    expect(blocked[0]).toMatchObject({ level: 'warn', component: 'presence', budgetMs: (TTL - INTERVAL) * 1000 });
    expect(blocked[0]?.['loopDelayMaxMs'] as number).toBeGreaterThanOrEqual(900);
    await expectHealthy([spinner, ...peers]);
  });
});
