/**
 * Sentinel failover with real processes (docs/scaling.md, "Failover"): one
 * primary, one replica, three Sentinels on loopback; three daemons with
 * redis.sentinels. The primary is killed with SIGKILL, or frozen with SIGSTOP
 * (its connections then never close: ioredis #1314); every daemon follows
 * the new primary, confirms its subscription again (a probe it publishes to
 * itself, so a silent subscriber — ioredis #420 — cannot pass) and re-asserts
 * its presence within failover + 2 s, events published on the new primary
 * reach every daemon's plugin, and no live agent is reported down. The TTL
 * (3 s) is shorter than the failover takes, so the promoted replica holds
 * only heartbeats that have expired: the reap grace after a reconnect is what
 * keeps the watchers from burying agents that simply have not beaten yet.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { Redis } from 'ioredis';
import { beforeAll, describe, expect, it } from 'vitest';
import { MASTER_NAME, type SentinelTopology } from '../helpers/sentinel.ts';
import { expectNoFatal, isAlive, processSuite, readRecords, type Agent } from '../helpers/process.ts';
import { hasMsg, keys, uniqueId, waitFor } from '../helpers/util.ts';

const TTL = 3;
const INTERVAL = 0.5;
const SWEEP = 0.5;

describe.each([
  // The primary's process dies: its sockets close, as ioredis expects.
  ['SIGKILL'],
  // The primary hangs (ioredis #1314): its sockets stay open and silent; only +switch-master tells the daemons.
  ['SIGSTOP'],
] as const)('Sentinel failover, primary stopped with %s (real primary, replica and three Sentinels)', (signal) => {
  // A suite per block: its topology is stopped after the block, before the next one starts its own.
  const suite = processSuite({ redis: false });
  let topo: SentinelTopology;
  const daemons: Array<{ id: string; d: Agent; file: string }> = [];
  const downs: string[] = [];
  let switchedAt = 0;
  let sentinelSub: Redis;
  let watchReplica: Redis;

  beforeAll(async () => {
    topo = await suite.sentinels({ downAfterMs: 1000, failoverTimeoutMs: 3000 });
    sentinelSub = topo.client(topo.sentinelPorts[1]!);
    sentinelSub.on('message', (channel: string) => {
      if (channel === '+switch-master' && switchedAt === 0) switchedAt = Date.now();
    });
    await sentinelSub.subscribe('+switch-master');
    // PUBLISH is replicated: a client on the replica sees every agent_down, before and after it is promoted.
    watchReplica = topo.client(topo.replicaPort);
    watchReplica.on('message', (_c: string, message: string) => downs.push((JSON.parse(message) as { data: { agent: string } }).data.agent));
    await watchReplica.subscribe(keys.channel('agent_down'));
  }, 60_000);

  it('every daemon follows the new primary; nobody live is reported down', async () => {
    const { den, agents } = await suite.group(3, {
      // Host and port are not used with redis.sentinels; the database is.
      redisUrl: 'redis://127.0.0.1:1/0',
      plugins: ['recorder.js'],
      env: {
        AGENTD_REDIS_SENTINELS: topo.sentinels.join(','),
        AGENTD_REDIS_SENTINEL_NAME: MASTER_NAME,
        AGENTD_LOG_LEVEL: 'info',
        AGENTD_HEARTBEAT_TTL: String(TTL),
        AGENTD_HEARTBEAT_INTERVAL: String(INTERVAL),
        AGENTD_SWEEP_INTERVAL: String(SWEEP),
      },
    }, () => ({ id: uniqueId('sn') }));
    for (const d of agents) daemons.push({ id: d.id, d, file: d.file });
    const primary = topo.client(topo.primaryPort);
    for (const x of daemons) expect(await primary.exists(keys.heartbeat(x.id))).toBe(1);

    const killedAt = Date.now();
    topo.processes.get(topo.primaryPort)!.kill(signal);
    await waitFor('+switch-master', () => switchedAt > 0, 20_000, 20);
    const newPrimaryPort = await topo.currentPrimary();
    expect(newPrimaryPort).toBe(topo.replicaPort);
    const failoverMs = switchedAt - killedAt;
    const p2 = topo.client(newPrimaryPort);

    // Within failover + 2 s: subscription confirmed again and presence on the new primary, for every daemon.
    await waitFor(
      'every daemon subscribed again and beating on the new primary',
      async () => {
        for (const x of daemons) {
          if (!x.d.logs.some(hasMsg(/^event subscription confirmed again/))) throw new Error(`${x.id} not subscribed again`);
          if ((await p2.exists(keys.heartbeat(x.id))) !== 1) throw new Error(`${x.id} has no heartbeat on the new primary`);
          if ((await p2.sismember(keys.den(den), x.id)) !== 1) throw new Error(`${x.id} is not in its den on the new primary`);
        }
        return true;
      },
      20_000,
      20,
    ).catch((err: unknown) => {
      for (const x of daemons) console.log(x.id, x.d.logs.filter((l) => l['level'] !== 'debug').slice(-12).map((l) => `${String(l['time'])} ${String(l['msg'])} ${String(l['err'] ?? '')}`).join('\n'));
      void Promise.all(daemons.map(async (x) => [x.id, await p2.exists(keys.heartbeat(x.id)), await p2.sismember(keys.den(den), x.id)])).then((r) => console.log('state', JSON.stringify(r), downs));
      throw err;
    });
    const recoveredMs = Date.now() - switchedAt;
    expect(recoveredMs, `recovered ${recoveredMs} ms after +switch-master (failover took ${failoverMs} ms)`).toBeLessThan(2_000);
    for (const x of daemons) await x.d.waitForLog(hasMsg('agentd ready again'), 5_000);

    // The subscription really delivers (not merely confirmed once): an event published on the new primary reaches every plugin.
    const token = uniqueId('after-failover');
    await p2.publish(keys.channel('probe_after_failover'), JSON.stringify({ event: 'probe_after_failover', data: { token } }));
    for (const x of daemons) {
      await waitFor(`${x.id} recorded the event`, () => readRecords(x.file).some((r) => (r.data as { token?: string } | null)?.token === token), 5_000);
    }

    // Nobody was reported down, through the failover and well past a TTL after it.
    await sleep((TTL + 2 * SWEEP) * 1000 + 1000);
    expect(downs, 'no live agent reported down').toEqual([]);
    for (const x of daemons) {
      expect(isAlive(x.d)).toBe(true);
      expect(await p2.sismember(keys.den(den), x.id)).toBe(1);
      expectNoFatal(x.d);
    }
  }, 90_000);
});
