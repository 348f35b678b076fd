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
import { readFileSync } from 'node:fs';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { freePort } from '../helpers/ports.ts';
import { expectNoFatal, isAlive, processSuite } from '../helpers/process.ts';
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

// Both servers are the test's own (each in its own folder: a replica's full sync writes an RDB file even with --save '').
const suite = processSuite({ redis: false });

describe.skipIf(!READONLY_RECYCLES)('failover behind one endpoint (the old primary answers READONLY)', () => {
  it('every daemon moves to the new primary and nobody is reported down', async () => {
    const serverA = await suite.freshRedis({ requireControl: true });
    const serverB = await suite.freshRedis({ requireControl: true, args: ['--replicaof', '127.0.0.1', String(serverA.port)] });
    const [pB, pE] = [serverB.port, await freePort()];
    const a = serverA.client({ retryStrategy: () => 50 });
    const b = serverB.client({ retryStrategy: () => 50 });
    await waitFor('replica in sync', async () => /master_link_status:up/.test(await b.info('replication')), 10_000);
    const target = { port: serverA.port };
    const proxy = endpoint(pE, target);
    suite.track({ stop: async () => void proxy.close() });
    const downs: string[] = [];
    const watch = serverB.client();
    watch.on('message', (_c: string, m: string) => downs.push((JSON.parse(m) as { data: { agent: string } }).data.agent));
    await watch.subscribe(keys.channel('agent_down'));

    const { den, agents: daemons } = await suite.group(
      2,
      {
        redisUrl: `redis://127.0.0.1:${pE}/0`,
        env: {
          AGENTD_HEARTBEAT_TTL: String(TTL),
          AGENTD_HEARTBEAT_INTERVAL: String(INTERVAL),
          AGENTD_SWEEP_INTERVAL: '0.5',
          AGENTD_LOG_LEVEL: 'info',
        },
      },
      () => ({ id: uniqueId('mf') }),
    );
    const ids = daemons.map((d) => d.id);

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
