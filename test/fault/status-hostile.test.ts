/**
 * The den status page under a hostile registry writer and a frozen Redis:
 * one real `agentd run` with http.statusPage on a real redis-server. Junk in
 * the registry, the den set and the heartbeat keys must not make each
 * /status.json pull its whole size out of Redis (measured with Redis's own
 * total_net_output_bytes), and a frozen Redis must not hang /status.json or
 * /healthz.
 */
import type { Redis } from 'ioredis';
import { beforeAll, describe, expect, it } from 'vitest';
import { httpGet, processSuite, type Agent } from '../helpers/process.ts';
import { waitFor } from '../helpers/util.ts';

const DEN = 'hostile';
const PASSWORD = 'pw-Hostile-91c0de';
const JUNK_BYTES = 200_000;
const JUNK_ENTRIES = 300; // 60 MB of junk, well under REGISTRY_SCAN_LIMIT entries
/** What one /status.json may pull from Redis here: a few KiB per listed row, nowhere near the junk. */
const BUDGET_BYTES = 2_000_000;

async function netOut(admin: Redis): Promise<number> {
  const info = await admin.info('stats');
  return Number(/total_net_output_bytes:(\d+)/.exec(info)?.[1]);
}

const suite = processSuite({ redis: { requireControl: true, password: PASSWORD, args: ['--maxmemory', '512mb'] } });

describe('status page against hostile Redis data', () => {
  let admin: Redis;
  let daemon: Agent;
  let port = 0;

  beforeAll(async () => {
    admin = suite.cmd;
    daemon = await suite.start({
      id: 'self',
      den: DEN,
      http: true,
      env: {
        AGENTD_HEARTBEAT_TTL: '3',
        AGENTD_HEARTBEAT_INTERVAL: '1',
        AGENTD_HTTP_STATUS_PAGE: 'true',
      },
    });
    port = daemon.httpPort;
  }, 60_000);

  it('a registry of huge records is not pulled whole on every request', async () => {
    const junk = 'x'.repeat(JUNK_BYTES);
    const pipe = admin.pipeline();
    for (let i = 0; i < JUNK_ENTRIES; i++) {
      // Valid-looking ids of this den with a record far above any real one.
      pipe.hset('global:agent_registry', `junk-${i}`, JSON.stringify({ den: DEN, status: 'down', host: 'h', pad: junk }));
    }
    // And one sane record that must still be listed.
    pipe.hset('global:agent_registry', 'gone-1', JSON.stringify({ den: DEN, status: 'offline', host: 'old-host', lastSeen: Date.now() - 60_000 }));
    await pipe.exec();
    await new Promise((r) => setTimeout(r, 600)); // past the snapshot reuse window
    // MONITOR shows the commands a script runs too: no junk value may be copied even inside Redis
    // (HSCAN or HGETALL of this registry block Redis for seconds: 1.2 s and 5.5 s measured at 2,000 x 200 KB).
    const monitor = await suite.redis.client().monitor();
    const seen: string[] = [];
    monitor.on('monitor', (_time: string, args: string[]) => seen.push(args.join(' ').slice(0, 80)));
    const before = await netOut(admin);
    const r = await httpGet(port, '/status.json', 10_000);
    const after = await netOut(admin);
    await waitFor('monitor saw the status read', () => (seen.some((c) => /^getrange /i.test(c)) ? true : undefined), 5_000);
    monitor.disconnect();
    expect(seen.filter((c) => /^(hgetall|hscan|hvals) /i.test(c) || /^(hget|hmget) global:agent_registry junk-/i.test(c))).toEqual([]);
    expect(r.status).toBe(200);
    const s = JSON.parse(r.body) as { members: Array<{ id: string; status: string; host: string | null }>; membersError: string | null };
    expect(s.membersError).toBeNull();
    expect(s.members.find((m) => m.id === 'gone-1')).toMatchObject({ status: 'offline', host: 'old-host' });
    expect(s.members.find((m) => m.id === 'self')).toMatchObject({ status: 'online' });
    expect(after - before, 'bytes Redis sent for one /status.json').toBeLessThan(BUDGET_BYTES);
    await admin.del('global:agent_registry');
  }, 60_000);

  it('huge heartbeat values and a 100,000-member den set stay bounded too', async () => {
    const junk = '9'.repeat(JUNK_BYTES);
    let pipe = admin.pipeline();
    for (let i = 0; i < 100; i++) pipe.set(`agent:fat-${i}:heartbeat`, junk, 'EX', 600);
    await pipe.exec();
    pipe = admin.pipeline();
    for (let b = 0; b < 100; b++) {
      const ids: string[] = [];
      for (let i = 0; i < 1000; i++) ids.push(`m-${b}-${i}-${'z'.repeat(100)}`);
      pipe.sadd(`den:${DEN}:online_agents`, ...ids);
    }
    pipe.sadd(`den:${DEN}:online_agents`, ...Array.from({ length: 100 }, (_, i) => `fat-${i}`));
    await pipe.exec();
    await new Promise((r) => setTimeout(r, 600));
    const before = await netOut(admin);
    const r = await httpGet(port, '/status.json', 10_000);
    const after = await netOut(admin);
    expect(r.status).toBe(200);
    const s = JSON.parse(r.body) as { members: Array<{ id: string; status: string }>; membersLeftOut: number; membersError: string | null };
    expect(s.membersError).toBeNull();
    expect(s.members.length).toBeLessThanOrEqual(500);
    // However big the den, this agent is listed.
    expect(s.members).toContainEqual(expect.objectContaining({ id: 'self', status: 'online' }));
    expect(s.members.length + s.membersLeftOut).toBeGreaterThanOrEqual(100_000);
    expect(r.body.length).toBeLessThan(BUDGET_BYTES);
    expect(after - before, 'bytes Redis sent for one /status.json').toBeLessThan(BUDGET_BYTES);
    await admin.del(`den:${DEN}:online_agents`);
  }, 60_000);

  it('a frozen Redis: /status.json answers with an error in bounded time, /healthz at once, reads do not pile up', async () => {
    // MONITOR, opened before the freeze, shows every status read once Redis runs again (SCARD starts the script).
    const monitor = await suite.redis.client().monitor();
    let reads = 0;
    monitor.on('monitor', (_time: string, args: string[]) => {
      if (String(args[0]).toLowerCase() === 'scard') reads++;
    });
    await new Promise((r) => setTimeout(r, 600)); // past the snapshot reuse window
    await suite.redis.pause();
    const frozenAt = Date.now();
    let frozenMs = 0;
    try {
      const started = Date.now();
      const replies = await Promise.all(Array.from({ length: 20 }, () => httpGet(port, '/status.json', 15_000)));
      for (const r of replies) {
        expect(r.status).toBe(200);
        const s = JSON.parse(r.body) as { membersError: string | null };
        expect(s.membersError).toMatch(/redis/i);
        expect(r.body).not.toContain(PASSWORD);
      }
      expect(Date.now() - started).toBeLessThan(12_000);
      const h = await httpGet(port, '/healthz', 5_000);
      expect(h.status).toBe(200);
      // Many open pages polling while frozen: a request every 100 ms for 6 s.
      const polls: Array<Promise<unknown>> = [];
      for (let i = 0; i < 60; i++) {
        polls.push(httpGet(port, '/status.json', 15_000));
        await new Promise((r) => setTimeout(r, 100));
      }
      await Promise.all(polls);
    } finally {
      frozenMs = Date.now() - frozenAt;
      await suite.redis.resume();
    }
    // The reads queued behind the freeze run now; wait until they are through, before reading again.
    let last = -1;
    await waitFor('queued reads done', async () => {
      const done = reads === last;
      last = reads;
      return done ? true : undefined;
    }, 10_000, 1_000);
    monitor.disconnect();
    // One read in flight at a time: at most one per 2 s deadline (a new one per 0.5 s window would be ~4 times as many).
    expect(reads, `status reads queued during a ${frozenMs} ms freeze`).toBeLessThanOrEqual(Math.ceil(frozenMs / 2_000) + 2);
    await waitFor('status readable again', async () => {
      const s = JSON.parse((await httpGet(port, '/status.json', 10_000)).body) as { membersError: string | null };
      return s.membersError === null ? true : undefined;
    }, 20_000, 300);
    expect((await httpGet(port, '/healthz', 5_000)).status).toBe(200);
  }, 90_000);

  it('never shows the password in /status.json, /status or /metrics', async () => {
    for (const path of ['/status.json', '/status', '/metrics']) {
      const r = await httpGet(port, path, 10_000);
      expect(r.body, path).not.toContain(PASSWORD);
    }
    expect(JSON.stringify(daemon.logs)).not.toContain(PASSWORD);
    expect(daemon.stderr.join('\n')).not.toContain(PASSWORD);
  }, 30_000);

  it('a careless operator: the status page on with the endpoint off is a clear config error, not silence', async () => {
    expect(suite.redis.url, 'the URL carries the password').toContain(PASSWORD);
    const r = await suite.run(['run'], {
      env: { AGENTD_AGENT_ID: 'careless', AGENTD_DEN: DEN, AGENTD_HTTP_PORT: '0', AGENTD_HTTP_STATUS_PAGE: 'true' },
      timeoutMs: 20_000,
    });
    expect(r.code).toBe(2);
    expect(r.stderr + r.stdout).toMatch(/http\.statusPage.*http\.port is 0/);
    expect(r.stderr + r.stdout).not.toContain(PASSWORD);
  }, 30_000);
});
