/**
 * `agentd run` as a real child process against a real redis-server: its
 * connections, event delivery from other clients, and a forced shutdown.
 * Presence is tested in-process (test/integration/daemon-presence.test.ts),
 * a stop by SIGTERM with work queued in test/fault/graceful-stop.test.ts.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { expectNoFatal, isAlive, processSuite, readRecords } from '../helpers/process.ts';
import { hasMsg, keys, metric, parseClientList, seedMessage, waitFor } from '../helpers/util.ts';

const execFileP = promisify(execFile);
const suite = processSuite({ redis: { requireControl: true }, env: { AGENTD_HEARTBEAT_TTL: '2', AGENTD_HEARTBEAT_INTERVAL: '0.5' } });

describe('agentd run (child process)', () => {
  const startDaemon = (env: Record<string, string> = {}) => suite.start({ plugins: ['recorder.js'], env });

  it('opens exactly one command and one subscriber connection', async () => {
    const d = await startDaemon();
    const { id } = d;
    // Let two beats run: no extra connection may appear later.
    const beat0 = await suite.cmd.get(keys.heartbeat(id));
    const beat1 = await waitFor('a beat after ready', async () => {
      const v = await suite.cmd.get(keys.heartbeat(id));
      return v !== beat0 ? v : undefined;
    }, 3_000);
    await waitFor('a second beat', async () => (await suite.cmd.get(keys.heartbeat(id))) !== beat1, 3_000);

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
    const d = await suite.start({ plugins: ['recorder.js'], http: true, env: { RECORD_DELAY_MS: '5000', AGENTD_QUEUE_CONCURRENCY: '2' } });
    const pipe = suite.cmd.pipeline();
    for (let i = 0; i < 3; i++) pipe.publish(keys.channel('new_message'), seedMessage('new_message', { seq: i }));
    await pipe.exec();
    // Read off the socket and queued (per /metrics): both slots running 5 s handlers, the third waiting.
    await waitFor('2 handler calls running, 3 in all', async () => {
      const m = await d.scrape();
      const running = metric(m, 'agentd_queue_running');
      return running === 2 && running + metric(m, 'agentd_queue_waiting') >= 3;
    }, 5_000);

    d.signal('SIGTERM');
    await d.waitForLog(hasMsg(/shutting down/), 5_000);
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
