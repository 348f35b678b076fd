/**
 * `agentd run` as a real child process against a real redis-server: presence,
 * connections, event delivery, graceful and forced shutdown.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import type { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { spawnAgentd, type DaemonProcess } from '../helpers/daemon.ts';
import { startRedis, type TestRedis } from '../helpers/redis.ts';
import { expectNoFatal, isAlive, PACKAGE_VERSION, readRecords, RECORDER } from '../helpers/process.ts';
import { collect, hasMsg, keys, parseClientList, seedMessage, uniqueId, waitFor } from '../helpers/util.ts';

const execFileP = promisify(execFile);
const TEST_CLIENT_NAME = 'lifecycle-test';

describe('agentd run (child process)', () => {
  let redis: TestRedis;
  let tmp: string;
  let c: Redis;
  const daemons: DaemonProcess[] = [];

  beforeAll(async () => {
    redis = await startRedis({ requireControl: true });
    tmp = await mkdtemp(join(tmpdir(), 'agentd-lifecycle-'));
    c = redis.client({ connectionName: TEST_CLIENT_NAME });
  });

  afterEach(async () => {
    await Promise.all(daemons.splice(0).map((d) => d.stop()));
  });

  afterAll(async () => {
    await Promise.all(daemons.splice(0).map((d) => d.stop()));
    await redis?.stop();
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  function startDaemon(env: Record<string, string> = {}): { d: DaemonProcess; id: string; den: string; file: string } {
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
        AGENTD_HEARTBEAT_TTL: '2',
        AGENTD_HEARTBEAT_INTERVAL: '0.5',
        ...env,
      },
    });
    daemons.push(d);
    return { d, id, den, file };
  }

  const ready = (d: DaemonProcess): Promise<unknown> => d.waitForLog(hasMsg('agentd ready'), 15_000);

  it('registers presence: den set, heartbeat with TTL, registry record; and keeps the heartbeat fresh', async () => {
    const { d, id, den } = startDaemon();
    await ready(d);

    expect(await c.sismember(keys.den(den), id)).toBe(1);
    const ttl = await c.ttl(keys.heartbeat(id));
    expect(ttl).toBeGreaterThan(0);
    expect(ttl).toBeLessThanOrEqual(2);

    const raw = await c.hget(keys.registry, id);
    expect(raw).not.toBeNull();
    const rec = JSON.parse(raw as string) as Record<string, unknown>;
    expect(rec).toMatchObject({ id, den, host: hostname(), status: 'online', pid: d.pid, version: PACKAGE_VERSION });

    const v1 = Number(await c.get(keys.heartbeat(id)));
    expect(Math.abs(Date.now() - v1)).toBeLessThan(2_000);

    await sleep(1_200); // > 2 intervals
    const v2 = Number(await c.get(keys.heartbeat(id)));
    expect(v2).toBeGreaterThan(v1);

    await sleep(1_300); // 2.5 s after v1: the key set then would have expired without refreshes
    expect(await c.exists(keys.heartbeat(id))).toBe(1);
    const pttl = await c.pttl(keys.heartbeat(id));
    expect(pttl).toBeGreaterThan(0);
    expect(pttl).toBeLessThanOrEqual(2_000);
    const rec2 = JSON.parse((await c.hget(keys.registry, id)) as string) as Record<string, unknown>;
    expect(rec2['lastSeen'] as number).toBeGreaterThan(rec['lastSeen'] as number);
    expect(await c.sismember(keys.den(den), id)).toBe(1);

    expect(isAlive(d)).toBe(true);
    expectNoFatal(d);
  });

  it('opens exactly one command and one subscriber connection', async () => {
    const { d, id } = startDaemon();
    await ready(d);
    await sleep(600); // let a beat or two run: no extra connection may appear later

    // Earlier test daemons were SIGKILLed; wait until the server has noticed their sockets closed.
    const clients = await waitFor(
      'only named clients in CLIENT LIST',
      async () => {
        const list = parseClientList((await c.client('LIST')) as string);
        return list.every((cl) => cl['name'] !== '') ? list : undefined;
      },
      3_000,
    );
    const names = clients.map((cl) => cl['name']);
    expect(names.filter((n) => n === `agentd:${id}:cmd`)).toHaveLength(1);
    expect(names.filter((n) => n === `agentd:${id}:sub`)).toHaveLength(1);
    expect(names.filter((n) => n?.startsWith(`agentd:${id}`))).toHaveLength(2);
    expectNoFatal(d);
  });

  it('delivers seed-format messages from ioredis and redis-cli to the plugin and survives invalid JSON', async () => {
    const { d, file } = startDaemon();
    await ready(d);
    const channel = keys.channel('new_message');

    // 1. A plain ioredis publisher, the reference article's format.
    const first = { from: 'user-1', text: 'hello', n: 1 };
    expect(await c.publish(channel, seedMessage('new_message', first))).toBeGreaterThanOrEqual(1);
    const rec1 = await waitFor('first message recorded', () =>
      readRecords(file).find((r) => r.event === 'new_message' && (r.data as { n?: number }).n === 1),
    );
    expect(rec1).toMatchObject({ event: 'new_message', channel, data: first });

    // 2. redis-cli.
    const { stdout } = await execFileP('redis-cli', ['-h', '127.0.0.1', '-p', String(redis.port), 'publish', channel, seedMessage('new_message', { n: 2 })]);
    expect(Number(stdout.trim())).toBeGreaterThanOrEqual(1);
    await waitFor('redis-cli message recorded', () =>
      readRecords(file).find((r) => r.event === 'new_message' && (r.data as { n?: number }).n === 2),
    );

    // 3. Not JSON: dropped with one log line naming the reason, never the payload.
    const garbage = 'this is {not json SECRET-PAYLOAD';
    await c.publish(channel, garbage);
    const bad = await d.waitForLog((l) => l['reason'] === 'not_json', 5_000);
    expect(bad['channel']).toBe(channel);
    expect(JSON.stringify(bad)).not.toContain('SECRET-PAYLOAD');
    expect(d.logs.filter((l) => l['reason'] === 'not_json')).toHaveLength(1);

    // 4. Still running and still delivering.
    await c.publish(channel, seedMessage('new_message', { n: 3 }));
    await waitFor('message after invalid JSON recorded', () =>
      readRecords(file).find((r) => r.event === 'new_message' && (r.data as { n?: number }).n === 3),
    );
    expect(readRecords(file).filter((r) => r.event === 'new_message').map((r) => (r.data as { n: number }).n)).toEqual([1, 2, 3]);
    expect(isAlive(d)).toBe(true);
    expectNoFatal(d);
  });

  it('SIGTERM with work queued: drains every event, leaves presence, publishes agent_offline, exits 0', async () => {
    const { d, id, den, file } = startDaemon({ RECORD_DELAY_MS: '200', AGENTD_QUEUE_CONCURRENCY: '2' });
    await ready(d);

    const watcher = redis.client({ connectionName: TEST_CLIENT_NAME });
    const seen = await collect(watcher, keys.channel('agent_offline'));

    const channel = keys.channel('new_message');
    const pipe = c.pipeline();
    for (let i = 0; i < 20; i++) pipe.publish(channel, seedMessage('new_message', { seq: i }));
    await pipe.exec();
    // The first one finishing (after 200 ms) means all 20 were read off the socket long ago.
    await waitFor('first queued event handled', () => readRecords(file).some((r) => r.event === 'new_message'), 5_000, 10);
    expect(readRecords(file).filter((r) => r.event === 'new_message').length).toBeLessThan(10);

    d.signal('SIGTERM');
    const exit = await d.exited;
    expect(exit).toEqual({ code: 0, signal: null });

    const stopping = d.logs.find(hasMsg('agentd stopping'));
    expect(stopping, 'an "agentd stopping" line').toBeDefined();
    expect((stopping?.['waiting'] as number) + (stopping?.['running'] as number)).toBeGreaterThanOrEqual(10);
    expect(d.logs.find(hasMsg('agentd stopped'))?.['drained']).toBe(true);

    const seqs = readRecords(file)
      .filter((r) => r.event === 'new_message')
      .map((r) => (r.data as { seq: number }).seq)
      .sort((a, b) => a - b);
    expect(seqs).toEqual(Array.from({ length: 20 }, (_, i) => i));

    expect(await c.sismember(keys.den(den), id)).toBe(0);
    expect(await c.exists(keys.heartbeat(id))).toBe(0);
    const rec = JSON.parse((await c.hget(keys.registry, id)) as string) as Record<string, unknown>;
    expect(rec['status']).toBe('offline');

    const offline = await waitFor('agent_offline received', () =>
      seen.find((m) => m.json?.['event'] === 'agent_offline' && (m.json['data'] as { agent?: string }).agent === id),
    );
    expect(offline.json?.['data']).toMatchObject({ agent: id, den, host: hostname(), reason: 'shutdown' });
    expect(offline.json).toMatchObject({ source: id, den });
    expectNoFatal(d);
  });

  it('drain timeout: exits 1, logs what was left, still removes presence', async () => {
    const { d, id, den, file } = startDaemon({
      RECORD_DELAY_MS: '5000',
      AGENTD_DRAIN_TIMEOUT_MS: '500',
      AGENTD_QUEUE_CONCURRENCY: '2',
    });
    await ready(d);
    const pipe = c.pipeline();
    for (let i = 0; i < 4; i++) pipe.publish(keys.channel('new_message'), seedMessage('new_message', { seq: i }));
    await pipe.exec();
    await sleep(300); // read off the socket and queued; handlers take 5 s

    const t0 = Date.now();
    d.signal('SIGTERM');
    const exit = await d.exited;
    const elapsed = Date.now() - t0;
    expect(exit).toEqual({ code: 1, signal: null });
    expect(elapsed).toBeLessThan(4_000);

    const left = d.logs.find(hasMsg(/drain timeout/));
    expect(left, 'a drain timeout log line').toBeDefined();
    expect(left?.['drainTimeoutMs']).toBe(500);
    const running = left?.['running'] as Array<{ plugin: string; event: string; runningMs: number }>;
    expect(running).toHaveLength(2);
    for (const r of running) expect(r.plugin).toBe('recorder');
    expect((left?.['waiting'] as number) + running.length).toBeGreaterThanOrEqual(4);
    expect(d.logs.find(hasMsg('agentd stopped'))?.['drained']).toBe(false);
    expect(readRecords(file).filter((r) => r.event === 'new_message')).toEqual([]);

    expect(await c.sismember(keys.den(den), id)).toBe(0);
    expect(await c.exists(keys.heartbeat(id))).toBe(0);
    const rec = JSON.parse((await c.hget(keys.registry, id)) as string) as Record<string, unknown>;
    expect(rec['status']).toBe('offline');
    expectNoFatal(d);
  });

  it('a second signal exits 1 at once', async () => {
    const { d } = startDaemon({ RECORD_DELAY_MS: '5000', AGENTD_QUEUE_CONCURRENCY: '2' });
    await ready(d);
    const pipe = c.pipeline();
    for (let i = 0; i < 3; i++) pipe.publish(keys.channel('new_message'), seedMessage('new_message', { seq: i }));
    await pipe.exec();
    await sleep(300);

    d.signal('SIGTERM');
    await d.waitForLog(hasMsg(/shutting down/), 5_000);
    await sleep(100);
    expect(isAlive(d)).toBe(true); // still draining 5 s handlers
    const t0 = Date.now();
    d.signal('SIGTERM');
    const exit = await d.exited;
    expect(exit).toEqual({ code: 1, signal: null });
    expect(Date.now() - t0).toBeLessThan(1_500);
    expect(d.logs.some(hasMsg(/second signal/))).toBe(true);
    expectNoFatal(d);
  });
});
