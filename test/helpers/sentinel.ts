/**
 * A Sentinel topology on loopback for tests: one primary, one replica and
 * three Sentinels, all real redis-server processes on free ports, with short
 * down-after-milliseconds and failover-timeout.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { freePort } from './ports.ts';
import { trackChild } from './reaper.ts';
import { waitFor } from './util.ts';

export const MASTER_NAME = 'agentd-test';

export interface SentinelTopology {
  readonly primaryPort: number;
  readonly replicaPort: number;
  readonly sentinelPorts: readonly number[];
  /** Sentinels as `host:port`, for redis.sentinels. */
  readonly sentinels: readonly string[];
  readonly processes: Map<number, ChildProcess>;
  /** A client to one server (port). */
  client(port: number): Redis;
  /** The port of the primary the Sentinels currently name. */
  currentPrimary(): Promise<number>;
  stop(): Promise<void>;
}

function start(args: string[], dir: string): ChildProcess {
  const child = spawn('redis-server', args, { cwd: dir, stdio: ['ignore', 'ignore', 'inherit'] });
  trackChild(child);
  return child;
}

export async function startSentinelTopology(opts: { downAfterMs?: number; failoverTimeoutMs?: number } = {}): Promise<SentinelTopology> {
  const dir = mkdtempSync(join(tmpdir(), 'agentd-sentinel-'));
  const clients: Redis[] = [];
  const processes = new Map<number, ChildProcess>();
  const client = (port: number): Redis => {
    const c = new Redis({ port, host: '127.0.0.1', lazyConnect: false, maxRetriesPerRequest: 1, retryStrategy: () => 100 });
    c.on('error', () => undefined);
    clients.push(c);
    return c;
  };
  const common = ['--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--notify-keyspace-events', 'Kx'];
  const primaryPort = await freePort();
  const replicaPort = await freePort();
  processes.set(primaryPort, start(['--port', String(primaryPort), ...common, '--dbfilename', 'p.rdb'], dir));
  processes.set(replicaPort, start(['--port', String(replicaPort), ...common, '--dbfilename', 'r.rdb', '--replicaof', '127.0.0.1', String(primaryPort)], dir));
  const replica = client(replicaPort);
  await waitFor('the replica in sync', async () => /master_link_status:up/.test(await replica.info('replication')), 10_000);

  const sentinelPorts: number[] = [];
  for (let i = 0; i < 3; i++) {
    const port = await freePort();
    const conf = join(dir, `sentinel-${i}.conf`);
    writeFileSync(
      conf,
      [
        `port ${port}`,
        'bind 127.0.0.1',
        `sentinel monitor ${MASTER_NAME} 127.0.0.1 ${primaryPort} 2`,
        `sentinel down-after-milliseconds ${MASTER_NAME} ${opts.downAfterMs ?? 1000}`,
        `sentinel failover-timeout ${MASTER_NAME} ${opts.failoverTimeoutMs ?? 3000}`,
        `sentinel parallel-syncs ${MASTER_NAME} 1`,
        '',
      ].join('\n'),
    );
    processes.set(port, start([conf, '--sentinel'], dir));
    sentinelPorts.push(port);
  }
  const s0 = client(sentinelPorts[0]!);
  // Every Sentinel knows the replica and the other two Sentinels.
  await waitFor(
    'the sentinels to see the replica and each other',
    async () => {
      const master = (await s0.call('SENTINEL', 'MASTER', MASTER_NAME)) as string[];
      const field = (k: string): string | undefined => master[master.indexOf(k) + 1];
      return field('num-slaves') === '1' && field('num-other-sentinels') === '2';
    },
    15_000,
  );
  return {
    primaryPort,
    replicaPort,
    sentinelPorts,
    sentinels: sentinelPorts.map((p) => `127.0.0.1:${p}`),
    processes,
    client,
    async currentPrimary() {
      const [, port] = (await s0.call('SENTINEL', 'GET-MASTER-ADDR-BY-NAME', MASTER_NAME)) as [string, string];
      return Number(port);
    },
    async stop() {
      for (const c of clients) c.disconnect();
      for (const p of processes.values()) if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
      await sleep(100);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
