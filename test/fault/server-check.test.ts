/**
 * What cannot work stops at once with one clear line (exit 2): a Redis
 * Cluster node, a replica. A primary demoted while the daemon runs (a
 * failover) answers READONLY: the daemon degrades, recycles its command
 * connection, and is ready again once the server is a primary again.
 * All with real redis-server processes.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { beforeAll, describe, expect, it } from 'vitest';
import type { TestRedis } from '../helpers/redis.ts';
import { expectSound, httpGet, processSuite, type AgentOptions } from '../helpers/process.ts';
import { hasMsg, keys, uniqueId, waitFor } from '../helpers/util.ts';

/** stderr of a failed start: exactly one line, and it is the agentd one. */
function oneLine(stderr: string): string {
  const lines = stderr.split('\n').filter((l) => l.trim() !== '');
  expect(lines, `stderr: ${stderr}`).toHaveLength(1);
  return lines[0] as string;
}

// Each test picks its server: a Cluster node, a replica, one without INFO, one it demotes.
const suite = processSuite({ redis: false, env: { AGENTD_HEARTBEAT_TTL: '6', AGENTD_HEARTBEAT_INTERVAL: '1' } });

describe('server check at start and READONLY at runtime', () => {
  let cluster: TestRedis;
  let primary: TestRedis;
  let replica: TestRedis;

  beforeAll(async () => {
    cluster = await suite.freshRedis({ requireControl: true, args: ['--cluster-enabled', 'yes', '--cluster-config-file', 'nodes.conf'] });
    await cluster.client().call('CLUSTER', 'ADDSLOTSRANGE', '0', '16383');
    primary = await suite.freshRedis({ requireControl: true });
    replica = await suite.freshRedis({ requireControl: true, args: ['--replicaof', primary.host, String(primary.port)] });
  });

  /** A daemon's names on `server`. */
  const on = (server: TestRedis): AgentOptions => ({ redisUrl: server.url, id: uniqueId('sc'), den: uniqueId('scden') });
  const run = (server: TestRedis) => suite.run(['run'], { redisUrl: server.url, env: { AGENTD_AGENT_ID: uniqueId('sc'), AGENTD_DEN: uniqueId('scden') }, timeoutMs: 20_000 });

  it('a Redis Cluster node: exit 2, one line naming cluster mode', { timeout: 30_000 }, async () => {
    const r = await run(cluster);
    expect(r.code).toBe(2);
    const line = oneLine(r.stderr);
    expect(line).toMatch(/^agentd: .*cluster mode.*\[AGENTD_ERR_REDIS_UNSUPPORTED\]$/);
    expect(r.stdout).not.toMatch(/CROSSSLOT/);
  });

  it('a replica: exit 2, one line naming the replica and its primary', { timeout: 30_000 }, async () => {
    const r = await run(replica);
    expect(r.code).toBe(2);
    const line = oneLine(r.stderr);
    expect(line).toMatch(/read-only replica/);
    expect(line).toContain(`${primary.host}:${primary.port}`);
    expect(line).toMatch(/\[AGENTD_ERR_REDIS_UNSUPPORTED\]$/);
  });

  it('a server without INFO (renamed away): cannot check mode and role, says so once, and runs', { timeout: 30_000 }, async () => {
    const noInfo = await suite.freshRedis({ requireControl: true, args: ['--rename-command', 'INFO', ''] });
    const d = await suite.spawn(on(noInfo));
    await d.ready(15_000);
    expect(d.logs.filter(hasMsg(/does not answer INFO/))).toHaveLength(1);
    expectSound(d, undefined);
  });

  it('primary demoted at runtime (REPLICAOF): degraded with READONLY, connection recycled; ready again after REPLICAOF NO ONE', { timeout: 60_000 }, async () => {
    // Its own server, so demoting it does not disturb the replica test.
    const own = await suite.freshRedis({ requireControl: true });
    const d = await suite.spawn({ ...on(own), http: true, env: { AGENTD_REDIS_RECONNECT_MAX_DELAY_MS: '500' } });
    const httpPort = d.httpPort;
    await d.ready(15_000);
    const admin = own.client();
    const cmdConns = async (): Promise<string[]> =>
      String(await admin.call('CLIENT', 'LIST'))
        .split('\n')
        .filter((l) => l.includes(`name=agentd:${d.id}:cmd`))
        .map((l) => /\bid=(\d+)/.exec(l)?.[1] ?? '');
    const before = await cmdConns();
    expect(before).toHaveLength(1);
    const linesBefore = d.logs.length;

    await admin.call('REPLICAOF', primary.host, String(primary.port));
    const line = await d.waitForLog((l) => hasMsg(/READONLY/)(l) && d.logs.indexOf(l) >= linesBefore, 10_000);
    expect(line['level']).toBe('error');
    const r = await waitFor('/readyz 503 naming READONLY', async () => {
      const x = await httpGet(httpPort, '/readyz');
      return x.status === 503 && /READONLY|heartbeat/.test(x.body) ? x : undefined;
    }, 10_000);
    expect(r.body).toMatch(/READONLY|heartbeat/);
    await waitFor('command connection recycled', async () => {
      const now = await cmdConns();
      return now.length === 1 && now[0] !== before[0];
    }, 10_000);
    await sleep(3_000);
    const during = d.logs.slice(linesBefore);
    // Once per refused command (the beat's SET, SADD, HSET; the durable consumer's XAUTOCLAIM), not per beat.
    const readonlyCommands = during.filter(hasMsg(/READONLY/)).map((l) => String(l['command']));
    expect(readonlyCommands.length, 'READONLY logged once per command, not per beat').toBe(new Set(readonlyCommands).size);
    expect(readonlyCommands.length).toBeLessThanOrEqual(5);
    expect(d.logs.some((l) => l['level'] === 'fatal')).toBe(false);

    const promotedAt = Date.now();
    await admin.call('REPLICAOF', 'NO', 'ONE');
    await waitFor('/readyz 200 after REPLICAOF NO ONE', async () => (await httpGet(httpPort, '/readyz')).status === 200, 15_000);
    await waitFor('a beat after the promotion', async () => Number(await admin.get(keys.heartbeat(d.id))) >= promotedAt, 5_000);
    expectSound(d, undefined);
  });
});
