/**
 * Redis faults while `agentd run` is running as a child process:
 * redis-server SIGKILLed and restarted on the same port (fault 1), and
 * redis-server frozen with SIGSTOP then continued (fault 3).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { spawnAgentd, type DaemonProcess } from '../helpers/daemon.ts';
import { startRedis, type TestRedis } from '../helpers/redis.ts';
import { expectNoFatal, isAlive, readRecords, RECORDER } from '../helpers/process.ts';
import { collect, hasMsg, keys, seedMessage, uniqueId, waitFor } from '../helpers/util.ts';

describe('agentd run survives Redis faults', () => {
  let redis: TestRedis;
  let tmp: string;
  const daemons: DaemonProcess[] = [];

  beforeAll(async () => {
    redis = await startRedis({ requireControl: true });
    tmp = await mkdtemp(join(tmpdir(), 'agentd-restart-'));
  });

  afterEach(async () => {
    await Promise.all(daemons.splice(0).map((d) => d.stop()));
  });

  afterAll(async () => {
    await Promise.all(daemons.splice(0).map((d) => d.stop()));
    await redis?.stop();
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  function startDaemon(env: Record<string, string>): { d: DaemonProcess; id: string; den: string; file: string } {
    const id = uniqueId('agent');
    const den = uniqueId('den');
    const file = join(tmp, `${id}.jsonl`);
    const d = spawnAgentd(['run'], {
      env: {
        AGENTD_REDIS_URL: redis.url,
        AGENTD_AGENT_ID: id,
        AGENTD_DEN: den,
        AGENTD_PLUGINS: RECORDER,
        RECORD_FILE: file,
        ...env,
      },
    });
    daemons.push(d);
    return { d, id, den, file };
  }

  const recorded = (file: string, pred: (data: Record<string, unknown>, event: string) => boolean) =>
    readRecords(file).find((r) => pred((r.data ?? {}) as Record<string, unknown>, r.event));

  it('Redis killed and restarted: re-registers on reconnect (not on the next beat), resubscribes, announces rejoined', async () => {
    // A 20 s interval: the only way back into the den within seconds is the reconnect path.
    const { d, id, den, file } = startDaemon({ AGENTD_HEARTBEAT_TTL: '60', AGENTD_HEARTBEAT_INTERVAL: '20' });
    await d.waitForLog(hasMsg('agentd ready'), 15_000);
    const startedAt = Date.now();

    // A watcher that reconnects every 20 ms, so it is subscribed again well before the daemon
    // (whose back-off is 0.5-1 s after a few failed attempts) re-registers.
    const watcher = redis.client({ retryStrategy: () => 20, connectionName: 'restart-watcher' });
    const online = await collect(watcher, keys.channel('agent_online'));

    await redis.kill('SIGKILL');
    await sleep(3_000); // long enough for the daemon's reconnect back-off to reach its 1 s cap
    expect(isAlive(d)).toBe(true);
    await redis.start();
    const backAt = Date.now();

    const c: Redis = redis.client();
    // The restarted server is empty (no persistence): everything below was written after the restart.
    await waitFor(
      'agent back in its den with a heartbeat key',
      async () => (await c.sismember(keys.den(den), id)) === 1 && (await c.exists(keys.heartbeat(id))) === 1,
      3_000,
      25,
    );
    // reliability.md, fault 1: back within 2 s of Redis being back.
    const rejoinMs = Date.now() - backAt;
    expect(rejoinMs).toBeLessThan(2_000);
    expect(Date.now() - startedAt).toBeLessThan(15_000); // well before the next scheduled beat
    const ttl = await c.ttl(keys.heartbeat(id));
    expect(ttl).toBeGreaterThan(50);
    expect(ttl).toBeLessThanOrEqual(60);
    const rec = JSON.parse((await c.hget(keys.registry, id)) as string) as Record<string, unknown>;
    expect(rec).toMatchObject({ id, den, status: 'online', pid: d.pid });

    // The subscription is confirmed again, and a new event reaches the handler.
    const confirmed = await d.waitForLog(hasMsg(/subscription confirmed again/), 5_000);
    expect(Date.parse(confirmed['time'] as string) - backAt).toBeLessThan(2_000);
    await c.publish(keys.channel('new_message'), seedMessage('new_message', { after: 'restart' }));
    await waitFor('event published after the restart recorded', () => recorded(file, (data, ev) => ev === 'new_message' && data['after'] === 'restart'), 3_000);

    // agent_online with rejoined: true, seen by the watcher or by the daemon's own recorder.
    const rejoined = await waitFor(
      'agent_online {rejoined: true}',
      () =>
        online.find((m) => {
          const data = m.json?.['data'] as Record<string, unknown> | undefined;
          return m.json?.['event'] === 'agent_online' && data?.['agent'] === id && data['rejoined'] === true;
        })?.json?.['data'] ?? recorded(file, (data, ev) => ev === 'agent_online' && data['agent'] === id && data['rejoined'] === true)?.data,
      3_000,
    );
    expect(rejoined).toMatchObject({ agent: id, den, rejoined: true });
    expect(d.logs.some(hasMsg(/rejoined/))).toBe(true);

    expect(isAlive(d)).toBe(true);
    expectNoFatal(d);

    // And it still stops cleanly afterwards.
    d.signal('SIGTERM');
    expect(await d.exited).toEqual({ code: 0, signal: null });
    expect(await c.sismember(keys.den(den), id)).toBe(0);
    expectNoFatal(d);
  });

  it('Redis frozen (SIGSTOP) for 3 s: logs "heartbeat failed" while frozen, recovers after SIGCONT', async () => {
    const { d, id, den, file } = startDaemon({ AGENTD_HEARTBEAT_TTL: '2', AGENTD_HEARTBEAT_INTERVAL: '0.5' });
    await d.waitForLog(hasMsg('agentd ready'), 15_000);
    await sleep(600);
    expect(d.logs.some(hasMsg('heartbeat failed'))).toBe(false);

    const pausedAt = Date.now();
    await redis.pause();
    let resumedAt: number;
    try {
      // reliability.md, fault 3: noticed within 2 × interval (a beat's deadline is one interval);
      // measured ~900 ms here, the bound leaves room for a loaded machine.
      const failed = await d.waitForLog(hasMsg('heartbeat failed'), 2_500);
      const noticedMs = Date.parse(failed['time'] as string) - pausedAt;
      expect(noticedMs).toBeLessThan(1_500);
      expect(failed['code']).toBe('AGENTD_ERR_HEARTBEAT');
      await sleep(Math.max(0, 3_000 - (Date.now() - pausedAt)));
      expect(isAlive(d)).toBe(true);
    } finally {
      await redis.resume();
      resumedAt = Date.now();
    }

    const c = redis.client();
    // Beats queued while frozen replay on SIGCONT with old timestamps; wait for one written after it.
    await waitFor(
      'a heartbeat written after SIGCONT',
      async () => Number(await c.get(keys.heartbeat(id))) >= resumedAt && (await c.sismember(keys.den(den), id)) === 1,
      3_000,
      25,
    );
    // reliability.md, fault 3: recovers within 2 s of SIGCONT.
    expect(Date.now() - resumedAt).toBeLessThan(2_000);
    expect(await c.pttl(keys.heartbeat(id))).toBeGreaterThan(0);
    await d.waitForLog(hasMsg('heartbeat restored'), 2_000);

    await c.publish(keys.channel('new_message'), seedMessage('new_message', { after: 'sigcont' }));
    await waitFor('event published after SIGCONT recorded', () => recorded(file, (data, ev) => ev === 'new_message' && data['after'] === 'sigcont'), 3_000);

    // Still healthy a few beats later.
    await sleep(1_000);
    expect(Number(await c.get(keys.heartbeat(id)))).toBeGreaterThan(Date.now() - 1_500);
    expect(isAlive(d)).toBe(true);
    expectNoFatal(d);
  });
});
