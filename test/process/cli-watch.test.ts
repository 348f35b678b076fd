/**
 * The operator commands as real child processes against a real redis-server:
 * `agentd members` after a death, `agentd watch` (plain and --json, den
 * filter, SIGINT), and `agentd memory context|clear|stats` on data written by
 * a Python agent.
 */
import { execFile } from 'node:child_process';
import { hostname } from 'node:os';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import type { Redis } from 'ioredis';
import { beforeAll, describe, expect, it } from 'vitest';
import { runAgentd, spawnAgentd, type DaemonProcess, type RunAgentdResult } from '../helpers/daemon.ts';
import { peerHealthEnv, processSuite } from '../helpers/process.ts';
import type { TestRedis } from '../helpers/redis.ts';
import { hasMsg, keys, PACKAGE_VERSION, parseClientList, uniqueId, waitFor } from '../helpers/util.ts';

const execFileP = promisify(execFile);
const SEED_AGENT = fileURLToPath(new URL('../interop/seed_agent.py', import.meta.url));
const PYTHON = '/usr/bin/python3';
const ISO_TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z {2}/;

interface Agent {
  readonly id: string;
  readonly den: string;
  readonly d: DaemonProcess;
}

const suite = processSuite({ redis: { requireControl: true } });

describe('agentd members, watch and memory (child processes)', () => {
  let redis: TestRedis;
  let c: Redis;

  beforeAll(() => {
    redis = suite.redis;
    c = redis.client({ connectionName: 'cli-watch-test' });
  });

  /** A one-shot CLI run; every run gets this server and its own agent id, nothing from the developer's environment. */
  const agentd = (args: string[], env: Record<string, string> = {}): Promise<RunAgentdResult> =>
    runAgentd(args, { env: { AGENTD_REDIS_URL: redis.url, AGENTD_AGENT_ID: uniqueId('cli'), ...env }, timeoutMs: 20_000 });

  async function startAgent(den: string): Promise<Agent> {
    const d = await suite.spawn({ den, id: uniqueId('cw'), env: peerHealthEnv({ ttl: 2, interval: 0.5, sweep: 0.5, notifications: 'enable' }) });
    return { id: d.id, den, d };
  }

  const ready = (a: Agent): Promise<unknown> => a.d.waitForLog(hasMsg('agentd ready'), 20_000);

  async function record(id: string): Promise<Record<string, unknown> | undefined> {
    const raw = await c.hget(keys.registry, id);
    return raw === null ? undefined : (JSON.parse(raw) as Record<string, unknown>);
  }

  /** kill -9 and wait until a peer has reaped it (registry status down). */
  async function killAndReap(a: Agent): Promise<void> {
    a.d.signal('SIGKILL');
    await a.d.exited;
    await waitFor(`${a.id} reaped`, async () => (await record(a.id))?.['status'] === 'down', 8_000);
  }

  // --- members -------------------------------------------------------------

  it('members --den D after a kill -9 and reap: the dead agent as down, the live ones online with ttlMs > 0; the table too', async () => {
    const den = uniqueId('den');
    const agents = await Promise.all([startAgent(den), startAgent(den), startAgent(den)]);
    await Promise.all(agents.map(ready));
    const [victim, ...live] = agents as [Agent, ...Agent[]];
    await killAndReap(victim);

    const res = await agentd(['members', '--den', den, '--json']);
    expect(res.code, res.stderr).toBe(0);
    const rows = JSON.parse(res.stdout) as Array<Record<string, unknown>>;
    expect(rows.map((r) => r['id']).sort()).toEqual(agents.map((a) => a.id).sort());
    const dead = rows.find((r) => r['id'] === victim.id);
    expect(dead).toMatchObject({ den, host: hostname(), status: 'down', ttlMs: null, pid: victim.d.pid, version: PACKAGE_VERSION });
    expect(dead?.['downAt']).toBeTypeOf('number');
    expect(dead?.['lastSeen'] as number).toBeLessThanOrEqual(dead?.['downAt'] as number);
    for (const a of live) {
      const row = rows.find((r) => r['id'] === a.id);
      expect(row).toMatchObject({ den, host: hostname(), status: 'online', pid: a.d.pid, version: PACKAGE_VERSION });
      expect(row?.['ttlMs'] as number).toBeGreaterThan(0);
      expect(row?.['ttlMs'] as number).toBeLessThanOrEqual(2_000);
      expect(row).not.toHaveProperty('downAt');
    }
    // Online members first, then the down ones.
    expect(rows[rows.length - 1]?.['id']).toBe(victim.id);

    const table = await agentd(['members', '--den', den]);
    expect(table.code, table.stderr).toBe(0);
    const lines = table.stdout.trimEnd().split('\n');
    expect(lines).toHaveLength(4);
    expect(lines[0]).toMatch(/^AGENT\s+HOST\s+STATUS\s+TTL\s+LAST BEAT$/);
    const deadLine = lines.find((l) => l.startsWith(victim.id));
    expect(deadLine).toBeDefined();
    expect(deadLine?.split(/\s+/).slice(1, 4)).toEqual([hostname(), 'down', '-']);
    for (const a of live) {
      const cells = lines.find((l) => l.startsWith(a.id))?.split(/\s+/) ?? [];
      expect(cells[2]).toBe('online');
      expect(cells[3]).toMatch(/^[0-2]\.\ds$/);
    }
    expect(lines.filter((l) => /\bdown\b/.test(l))).toHaveLength(1);
  });

  // --- watch ---------------------------------------------------------------

  it('watch --den D: one line per agent_online, published event and agent_down of that den, nothing from another den; --json prints {channel, message}; SIGINT exits 0', async () => {
    const den = uniqueId('den');
    const otherDen = uniqueId('other');
    const plainId = uniqueId('watch');
    const jsonId = uniqueId('watch-json');
    const env = (id: string): Record<string, string> => ({ AGENTD_REDIS_URL: redis.url, AGENTD_AGENT_ID: id });
    const plain = spawnAgentd(['watch', '--den', den], { env: env(plainId) });
    const json = spawnAgentd(['watch', '--den', den, '--json'], { env: env(jsonId) });
    suite.track(plain);
    suite.track(json);

    // Subscribed: both hold a pattern subscription on the server.
    await waitFor(
      'both watch clients psubscribed',
      async () => {
        const list = parseClientList((await c.client('LIST')) as string);
        return [plainId, jsonId].every((id) => list.some((cl) => cl['name'] === `agentd-cli:${id}` && cl['psub'] === '1'));
      },
      15_000,
    );
    await waitFor('plain watch banner on stderr', () => plain.stderr.some((l) => l.includes(`watching agent:events:* (den ${den})`)));
    expect(json.stderr).toEqual([]);

    const a = await startAgent(den);
    const w = await startAgent(den);
    const x = await startAgent(otherDen);
    await Promise.all([a, w, x].map(ready));

    const inDen = await agentd(['publish', 'cli_watch_probe', '{"n":1}'], { AGENTD_AGENT_ID: 'pub-in', AGENTD_DEN: den });
    const outside = await agentd(['publish', 'cli_watch_probe', '{"n":2}'], { AGENTD_AGENT_ID: 'pub-out', AGENTD_DEN: otherDen });
    expect(inDen.code, inDen.stderr).toBe(0);
    expect(outside.code, outside.stderr).toBe(0);

    await killAndReap(a);
    const rawLines = (): string[] => plain.logs.map((l) => (typeof l['raw'] === 'string' ? l['raw'] : JSON.stringify(l)));
    await waitFor('agent_down line', () => rawLines().some((l) => / agent_down /.test(l)), 5_000);
    await waitFor('agent_down in --json', () => json.logs.some((l) => String(l['channel']) === keys.channel('agent_down')), 5_000);

    // --- plain ---
    const lines = rawLines();
    for (const l of lines) expect(l).toMatch(ISO_TIME);
    const online = (id: string): string[] => lines.filter((l) => new RegExp(`agent_online +agent=${id} den=${den} host=`).test(l));
    expect(online(a.id)).toHaveLength(1);
    expect(online(w.id)).toHaveLength(1);
    const published = lines.filter((l) => l.includes('cli_watch_probe'));
    expect(published).toHaveLength(1);
    expect(published[0]).toMatch(/cli_watch_probe +from=pub-in data=\{"n":1\}$/);
    const down = lines.filter((l) => l.includes(' agent_down '));
    expect(down).toHaveLength(1);
    expect(down[0]).toMatch(new RegExp(`agent_down +agent=${a.id} den=${den} host=${hostname()} `));
    expect(down[0]).toContain(`detectedBy=${w.id}`);
    expect(down[0]).toMatch(/via=(expiry|sweep)/);
    // The other den is filtered out: neither its agent nor its event.
    expect(lines.filter((l) => l.includes(x.id) || l.includes(otherDen) || l.includes('pub-out'))).toEqual([]);
    expect(lines).toHaveLength(4);

    // --- json ---
    const messages = json.logs.map((l) => {
      expect(Object.keys(l).sort()).toEqual(['channel', 'message']);
      return { channel: l['channel'] as string, env: JSON.parse(l['message'] as string) as Record<string, unknown> };
    });
    const summary = messages.map((m) => `${m.channel} ${String((m.env['data'] as Record<string, unknown> | null)?.['agent'] ?? m.env['source'])}`);
    expect(summary.sort()).toEqual(
      [
        `${keys.channel('agent_online')} ${a.id}`,
        `${keys.channel('agent_online')} ${w.id}`,
        `${keys.channel('cli_watch_probe')} pub-in`,
        `${keys.channel('agent_down')} ${a.id}`,
      ].sort(),
    );
    expect(messages.find((m) => m.channel === keys.channel('cli_watch_probe'))?.env).toMatchObject({ event: 'cli_watch_probe', data: { n: 1 }, source: 'pub-in', den });
    expect(messages.find((m) => m.channel === keys.channel('agent_down'))?.env).toMatchObject({ event: 'agent_down', data: { agent: a.id, den, detectedBy: w.id } });

    // SIGINT ends both cleanly.
    plain.signal('SIGINT');
    json.signal('SIGINT');
    expect(await plain.exited).toEqual({ code: 0, signal: null });
    expect(await json.exited).toEqual({ code: 0, signal: null });
    expect(plain.stderr.filter((l) => !l.startsWith('watching '))).toEqual([]);
    expect(json.stderr).toEqual([]);
  });

  // --- memory --------------------------------------------------------------

  const seed = async (agent: string, ...args: string[]): Promise<unknown> => {
    const { stdout } = await execFileP(PYTHON, [SEED_AGENT, redis.url, agent, ...args]);
    return JSON.parse(stdout) as unknown;
  };

  async function keysOf(agent: string): Promise<string[]> {
    const out: string[] = [];
    let cursor = '0';
    do {
      const [next, batch] = await c.scan(cursor, 'MATCH', `agent:${agent}:*`, 'COUNT', 1000);
      cursor = next;
      out.push(...batch);
    } while (cursor !== '0');
    return out.sort();
  }

  it('memory context prints a conversation a Python agent wrote', async () => {
    const agent = uniqueId('mem');
    const session = 's1';
    await seed(agent, 'add-message', session, 'user', 'hello there');
    await seed(agent, 'add-message', session, 'assistant', 'hi: how can I help?');
    await seed(agent, 'add-message', session, 'user', 'ünïcödé ✓');

    const res = await agentd(['memory', 'context', agent, session, '--json']);
    expect(res.code, res.stderr).toBe(0);
    expect(JSON.parse(res.stdout)).toEqual([
      { role: 'user', content: 'hello there' },
      { role: 'assistant', content: 'hi: how can I help?' },
      { role: 'user', content: 'ünïcödé ✓' },
    ]);
    const text = await agentd(['memory', 'context', agent, session]);
    expect(text.code, text.stderr).toBe(0);
    expect(text.stdout).toBe('user: hello there\nassistant: hi: how can I help?\nuser: ünïcödé ✓\n');

    const none = await agentd(['memory', 'context', agent, 'no-such-session', '--json']);
    expect(none.code, none.stderr).toBe(0);
    expect(JSON.parse(none.stdout)).toEqual([]);
  });

  it('memory clear: refuses without --yes off a terminal (exit 2, nothing deleted); with --yes deletes every agent:AGENT:* key and no other agent\'s', async () => {
    const agent = uniqueId('mem');
    const other = `${agent}-2`;
    await seed(agent, 'add-message', 'sa', 'user', 'one');
    await seed(agent, 'add-message', 'sb', 'user', 'two');
    await seed(agent, 'task-set', 't1', 'running');
    await seed(agent, 'cache-set', 'prompt', 'model', 'response');
    await seed(other, 'add-message', 'sa', 'user', 'keep me');
    await seed(other, 'task-set', 't1', 'done');
    const mine = await keysOf(agent);
    const theirs = await keysOf(other);
    expect(mine).toHaveLength(4);
    expect(theirs).toHaveLength(2);

    const refused = await agentd(['memory', 'clear', agent]);
    expect(refused.code, refused.stdout).toBe(2);
    expect(refused.stderr).toContain('--yes');
    expect(refused.stdout).toBe('');
    expect(await keysOf(agent)).toEqual(mine);

    const cleared = await agentd(['memory', 'clear', agent, '--yes']);
    expect(cleared.code, cleared.stderr).toBe(0);
    expect(cleared.stdout).toBe(`removed 4 keys of agent ${agent} (its presence key agent:${agent}:heartbeat is kept)\n`);
    expect(await keysOf(agent)).toEqual([]);
    expect(await keysOf(other)).toEqual(theirs);
    expect(await seed(other, 'task-get', 't1')).toBe('done');

    const json = await agentd(['memory', 'clear', other, '--yes', '--json']);
    expect(json.code, json.stderr).toBe(0);
    expect(JSON.parse(json.stdout)).toEqual({ agent: other, removed: 2 });
    expect(await keysOf(other)).toEqual([]);
  });

  it('memory stats --json: usedBytes, maxBytes, policy, ratio (a number under maxmemory, null without)', async () => {
    const policy = ((await c.config('GET', 'maxmemory-policy')) as string[])[1];
    try {
      await c.config('SET', 'maxmemory', '0');
      const unlimited = await agentd(['memory', 'stats', '--json']);
      expect(unlimited.code, unlimited.stderr).toBe(0);
      const s0 = JSON.parse(unlimited.stdout) as Record<string, unknown>;
      expect(s0['usedBytes'] as number).toBeGreaterThan(0);
      expect(s0).toMatchObject({ maxBytes: 0, ratio: null, policy });

      const max = 256 * 1024 * 1024;
      await c.config('SET', 'maxmemory', String(max));
      const limited = await agentd(['memory', 'stats', '--json']);
      expect(limited.code, limited.stderr).toBe(0);
      const s1 = JSON.parse(limited.stdout) as Record<string, unknown>;
      expect(s1).toMatchObject({ maxBytes: max, policy });
      const used = s1['usedBytes'] as number;
      expect(used).toBeGreaterThan(0);
      expect(s1['ratio']).toBeTypeOf('number');
      expect(s1['ratio'] as number).toBeGreaterThan(0);
      expect(s1['ratio'] as number).toBeLessThan(1);
      expect(s1['ratio'] as number).toBeCloseTo(used / max, 6);

      const table = await agentd(['memory', 'stats']);
      expect(table.code, table.stderr).toBe(0);
      const [header, row] = table.stdout.trimEnd().split('\n');
      expect(header).toMatch(/^USED\s+PEAK\s+MAXMEMORY\s+USED\/MAX\s+POLICY$/);
      expect(row).toContain('256.0 MiB');
      expect(row).toContain(String(policy));
    } finally {
      await c.config('SET', 'maxmemory', '0');
    }
  });

  it('memory with a bad or missing subcommand, or the wrong arguments, exits 2', async () => {
    const bad = await agentd(['memory', 'frobnicate']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('frobnicate');
    expect(bad.stdout).toBe('');
    const missing = await agentd(['memory']);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toMatch(/context, clear or stats/);
    const short = await agentd(['memory', 'context', 'only-agent']);
    expect(short.code).toBe(2);
    expect(short.stderr).toContain('usage: agentd memory context');
  });
});
