/**
 * systemd's notify protocol, with NOTIFY_SOCKET pointing at a datagram socket
 * this test owns (a small Python receiver): READY=1 only once the daemon is
 * really ready, WATCHDOG=1 from its event loop, STOPPING=1 on SIGTERM.
 */
import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { processSuite, type Agent } from '../helpers/process.ts';
import { uniqueId, waitFor } from '../helpers/util.ts';

function nativeAvailable(): boolean {
  try {
    createRequire(import.meta.url)('unix-dgram');
    return true;
  } catch {
    return false;
  }
}

const RECEIVER = fileURLToPath(new URL('../fixtures/notify-socket.py', import.meta.url));

interface Datagram {
  at: number;
  message: string;
}

interface Receiver {
  path: string;
  got: Datagram[];
}

const suite = processSuite({ redis: { requireControl: true }, env: { AGENTD_LOG_LEVEL: 'debug' } });

/** A notify socket in the suite's temp folder, its receiver killed after the test. */
async function receiver(): Promise<Receiver> {
  const path = join(suite.tmp, `${uniqueId('notify')}.sock`);
  const child = spawn('/usr/bin/python3', ['-u', RECEIVER, path], { stdio: ['ignore', 'pipe', 'inherit'] });
  suite.trackProcess(child);
  const got: Datagram[] = [];
  let bound = false;
  createInterface({ input: child.stdout! }).on('line', (line) => {
    const v = JSON.parse(line) as Partial<Datagram> & { bound?: string };
    if (v.bound) bound = true;
    else got.push(v as Datagram);
  });
  await waitFor('the notify socket to be bound', () => bound);
  return { path, got };
}

const lines = (r: Receiver, field: string) => r.got.filter((d) => d.message.split('\n').includes(field));

describe('systemd notify', () => {
  const daemon = (env: Record<string, string>, redisUrl?: string): Promise<Agent> => suite.spawn({ env, ...(redisUrl ? { redisUrl } : {}) });

  it('sends READY=1 after the subscription is confirmed, WATCHDOG=1 periodically, STOPPING=1 on SIGTERM', async () => {
    const r = await receiver();
    const d = await daemon({ NOTIFY_SOCKET: r.path, WATCHDOG_USEC: '400000' });
    const confirmed = await d.waitForLog((l) => l['msg'] === 'event subscription confirmed');
    await waitFor('READY=1', () => lines(r, 'READY=1').length > 0);
    const ready = lines(r, 'READY=1')[0]!;
    expect(ready.at).toBeGreaterThanOrEqual(Date.parse(String(confirmed['time'])));
    expect(ready.message).toContain('STATUS=ready');
    await waitFor('several watchdog pings', () => lines(r, 'WATCHDOG=1').length >= 5, 5_000);
    const pings = lines(r, 'WATCHDOG=1').map((p) => p.at);
    const gaps = pings.slice(1).map((t, i) => t - pings[i]!);
    // Half of WATCHDOG_USEC: every 200 ms (allowing for a busy machine).
    expect(Math.min(...gaps)).toBeGreaterThan(100);
    expect(gaps.sort((a, b) => a - b)[Math.floor(gaps.length / 2)]).toBeLessThan(400);
    d.signal('SIGTERM');
    expect((await d.exited).code).toBe(0);
    expect(lines(r, 'STOPPING=1')).toHaveLength(1);
    expect(lines(r, 'READY=1')).toHaveLength(1);
  });

  it('keeps the watchdog alive but withholds READY=1 while Redis is unreachable', async () => {
    const r = await receiver();
    const late = await suite.freshRedis({ requireControl: true });
    await late.kill();
    const d = await daemon({ NOTIFY_SOCKET: r.path, WATCHDOG_USEC: '400000' }, late.url);
    await d.waitForLog((l) => l['msg'] === 'redis reconnecting');
    await waitFor('watchdog pings', () => lines(r, 'WATCHDOG=1').length >= 3, 5_000);
    expect(lines(r, 'READY=1')).toHaveLength(0);
    await late.start(); // Redis appears: now the daemon becomes ready
    await waitFor('READY=1 once Redis is there', () => lines(r, 'READY=1').length === 1, 10_000);
  });

  it('does not ping a watchdog that belongs to another process (WATCHDOG_PID)', async () => {
    const r = await receiver();
    const d = await daemon({ NOTIFY_SOCKET: r.path, WATCHDOG_USEC: '200000', WATCHDOG_PID: '1' });
    await waitFor('READY=1', () => lines(r, 'READY=1').length > 0);
    await new Promise((res) => setTimeout(res, 500));
    expect(lines(r, 'WATCHDOG=1')).toHaveLength(0);
    // The native module when it loads here, else the systemd-notify tool (which delivered READY=1 above all the same).
    const transport = nativeAvailable() ? 'unix-dgram' : 'systemd-notify';
    expect(d.logs.some((l) => l['msg'] === 'systemd notify socket found' && l['transport'] === transport)).toBe(true);
  });
});
