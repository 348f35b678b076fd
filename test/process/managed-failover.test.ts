/**
 * Failover without Sentinel (docs/scaling.md, "Failover"): a managed
 * endpoint — here a TCP forwarder standing for the provider's DNS name —
 * moves to a new primary, and the old primary, demoted to a replica, keeps
 * the daemons' existing connections and answers their writes with READONLY.
 * Each daemon must notice (READONLY recycles its connection: the
 * connection-health work), reconnect through the endpoint to the new
 * primary, beat there and confirm its subscription, and nobody is reported
 * down.
 *
 * Depends on READONLY recycling the connection (src/redis/connection.ts on
 * main, from the connection-health work); skipped on a tree without it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { afterAll, describe, expect, it } from 'vitest';
import { spawnAgentd, type DaemonProcess } from '../helpers/daemon.ts';
import { freePort } from '../helpers/ports.ts';
import { trackChild, trackTempDir } from '../helpers/reaper.ts';
import { expectNoFatal, isAlive } from '../helpers/process.ts';
import { hasMsg, keys, uniqueId, waitFor } from '../helpers/util.ts';

const TTL = 3;
const INTERVAL = 0.5;
const READONLY_RECYCLES = /READONLY[^\n]*recycl/.test(readFileSync(new URL('../../src/redis/connection.ts', import.meta.url), 'utf8'));

/** Forwards new connections to `target`; connections already made stay where they are (like a DNS switch). */
function endpoint(port: number, target: { port: number }): Server {
  const server = createServer((client: Socket) => {
    const upstream = connect(target.port, '127.0.0.1');
    client.pipe(upstream).pipe(client);
    const end = (): void => {
      client.destroy();
      upstream.destroy();
    };
    client.on('error', end);
    upstream.on('error', end);
    client.on('close', end);
    upstream.on('close', end);
  });
  server.listen(port, '127.0.0.1');
  return server;
}

describe.skipIf(!READONLY_RECYCLES)('failover behind one endpoint (the old primary answers READONLY)', () => {
  const servers: ChildProcess[] = [];
  const daemons: DaemonProcess[] = [];
  const clients: Redis[] = [];
  let proxy: Server | undefined;

  afterAll(async () => {
    await Promise.all(daemons.map((d) => d.stop()));
    for (const c of clients) c.disconnect();
    proxy?.close();
    for (const s of servers) s.kill('SIGKILL');
  });

  async function redisServer(port: number, extra: string[] = []): Promise<Redis> {
    // Its own folder: a replica's full sync writes an RDB file even with --save ''.
    const dir = mkdtempSync(join(tmpdir(), 'agentd-failover-'));
    trackTempDir(dir);
    const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir, ...extra], { stdio: 'ignore' });
    trackChild(child);
    servers.push(child);
    const c = new Redis({ port, host: '127.0.0.1', retryStrategy: () => 50 });
    c.on('error', () => undefined);
    clients.push(c);
    await waitFor(`redis on ${port}`, async () => (await c.ping()) === 'PONG', 5_000);
    return c;
  }

  it('every daemon moves to the new primary and nobody is reported down', async () => {
    const [pA, pB, pE] = [await freePort(), await freePort(), await freePort()];
    const a = await redisServer(pA);
    const b = await redisServer(pB, ['--replicaof', '127.0.0.1', String(pA)]);
    await waitFor('replica in sync', async () => /master_link_status:up/.test(await b.info('replication')), 10_000);
    const target = { port: pA };
    proxy = endpoint(pE, target);
    const downs: string[] = [];
    const watch = new Redis({ port: pB, host: '127.0.0.1' });
    clients.push(watch);
    watch.on('message', (_c: string, m: string) => downs.push((JSON.parse(m) as { data: { agent: string } }).data.agent));
    await watch.subscribe(keys.channel('agent_down'));

    const den = uniqueId('den');
    const ids = [uniqueId('mf'), uniqueId('mf')];
    for (const id of ids) {
      daemons.push(
        spawnAgentd(['run'], {
          env: {
            AGENTD_REDIS_URL: `redis://127.0.0.1:${pE}/0`,
            AGENTD_AGENT_ID: id,
            AGENTD_DEN: den,
            AGENTD_HEARTBEAT_TTL: String(TTL),
            AGENTD_HEARTBEAT_INTERVAL: String(INTERVAL),
            AGENTD_SWEEP_INTERVAL: '0.5',
            AGENTD_LOG_LEVEL: 'info',
          },
        }),
      );
    }
    await Promise.all(daemons.map((d) => d.waitForLog(hasMsg('agentd ready'), 20_000)));

    // The provider's failover: B becomes the primary, the endpoint points at it, A becomes B's replica.
    await b.replicaof('NO', 'ONE');
    target.port = pB;
    await a.replicaof('127.0.0.1', String(pB));
    const switchedAt = Date.now();

    await waitFor(
      'every daemon beating on the new primary',
      async () => {
        for (const id of ids) {
          const beat = Number(await b.get(keys.heartbeat(id)));
          if (!(beat >= switchedAt)) throw new Error(`${id} has not beaten on the new primary since the switch`);
        }
        return true;
      },
      (INTERVAL + 2) * 1000 + 3_000,
      20,
    );
    const ms = Date.now() - switchedAt;
    expect(ms, `every daemon beat on the new primary ${ms} ms after the switch`).toBeLessThan((INTERVAL + 2) * 1000);
    for (const d of daemons) expect(d.logs.some(hasMsg(/READONLY/))).toBe(true);
    await sleep((TTL + 1) * 1000);
    expect(downs, 'no live agent reported down').toEqual([]);
    for (const [i, d] of daemons.entries()) {
      expect(isAlive(d)).toBe(true);
      expect(await b.sismember(keys.den(den), ids[i]!)).toBe(1);
      expectNoFatal(d);
    }
  }, 60_000);
});
