/**
 * `agentd run` as a real child process against a real redis-server: its
 * connections, event delivery from other clients, and a forced shutdown.
 * Presence is tested in-process (test/integration/daemon-presence.test.ts),
 * a stop by SIGTERM with work queued in test/fault/graceful-stop.test.ts.
 */
import { execFile } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { expectNoFatal, isAlive, processSuite, readRecords } from '../helpers/process.ts';
import { hasMsg, keys, parseClientList, seedMessage, waitFor } from '../helpers/util.ts';

const execFileP = promisify(execFile);
const suite = processSuite({ redis: { requireControl: true }, env: { AGENTD_HEARTBEAT_TTL: '2', AGENTD_HEARTBEAT_INTERVAL: '0.5' } });

describe('agentd run (child process)', () => {
  const startDaemon = (env: Record<string, string> = {}) => suite.start({ plugins: ['recorder.js'], env });

  it('opens exactly one command and one subscriber connection', async () => {
    const d = await startDaemon();
    const { id } = d;
    await sleep(600); // let a beat or two run: no extra connection may appear later

    // Earlier test daemons were SIGKILLed; wait until the server has noticed their sockets closed.
    const clients = await waitFor(
      'only named clients in CLIENT LIST',
      async () => {
        const list = parseClientList((await suite.cmd.client('LIST')) as string);
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
    const d = await startDaemon();
    const { file } = d;
    const channel = keys.channel('new_message');

    // 1. A plain ioredis publisher, the reference article's format.
    const first = { from: 'user-1', text: 'hello', n: 1 };
    expect(await suite.cmd.publish(channel, seedMessage('new_message', first))).toBeGreaterThanOrEqual(1);
    const rec1 = await waitFor('first message recorded', () =>
      readRecords(file).find((r) => r.event === 'new_message' && (r.data as { n?: number }).n === 1),
    );
    expect(rec1).toMatchObject({ event: 'new_message', channel, data: first });

    // 2. redis-cli.
    const { stdout } = await execFileP('redis-cli', ['-h', '127.0.0.1', '-p', String(suite.redis.port), 'publish', channel, seedMessage('new_message', { n: 2 })]);
    expect(Number(stdout.trim())).toBeGreaterThanOrEqual(1);
    await waitFor('redis-cli message recorded', () =>
      readRecords(file).find((r) => r.event === 'new_message' && (r.data as { n?: number }).n === 2),
    );

    // 3. Not JSON: dropped with one log line naming the reason, never the payload.
    const garbage = 'this is {not json SECRET-PAYLOAD';
    await suite.cmd.publish(channel, garbage);
    const bad = await d.waitForLog((l) => l['reason'] === 'not_json', 5_000);
    expect(bad['channel']).toBe(channel);
    expect(JSON.stringify(bad)).not.toContain('SECRET-PAYLOAD');
    expect(d.logs.filter((l) => l['reason'] === 'not_json')).toHaveLength(1);

    // 4. Still running and still delivering.
    await suite.cmd.publish(channel, seedMessage('new_message', { n: 3 }));
    await waitFor('message after invalid JSON recorded', () =>
      readRecords(file).find((r) => r.event === 'new_message' && (r.data as { n?: number }).n === 3),
    );
    expect(readRecords(file).filter((r) => r.event === 'new_message').map((r) => (r.data as { n: number }).n)).toEqual([1, 2, 3]);
    expect(isAlive(d)).toBe(true);
    expectNoFatal(d);
  });

  it('a second signal exits 1 at once', async () => {
    const d = await startDaemon({ RECORD_DELAY_MS: '5000', AGENTD_QUEUE_CONCURRENCY: '2' });
    const pipe = suite.cmd.pipeline();
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
