/**
 * The sweeper lease with real processes (docs/peer-health.md, "One sweeper
 * per den"): only the holder of den:<den>:sweeper sweeps, so a den costs one
 * sweep per interval instead of one per member; a holder killed with
 * SIGKILL is replaced and deaths are still reported within the bound; a
 * holder frozen past its lease, and a watcher that sweeps regardless
 * (watch.sweeper = every), never cause a second agent_down.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { Redis } from 'ioredis';
import { beforeAll, describe, expect, it } from 'vitest';
import { isAlive, peerHealthEnv, processSuite, type Agent } from '../helpers/process.ts';
import { keys, uniqueId, waitFor } from '../helpers/util.ts';

const TTL = 3;
const INTERVAL = 0.5;
const SWEEP = 0.5;
/** The lease: 3 sweep intervals. */
const LEASE_MS = 3 * SWEEP * 1000;
/** Sweep-only bound with a dead sweeper: max(ttl, lease) + sweepInterval (+10 % jitter), plus 1 s for process noise. */
const BOUND_MS = Math.max(TTL * 1000, LEASE_MS) + 1.1 * SWEEP * 1000 + 1000;

interface Down {
  readonly agent: string;
  readonly detectedBy: string;
  readonly at: number;
}

const suite = processSuite({ redis: { requireControl: true }, env: peerHealthEnv({ ttl: TTL, interval: INTERVAL, sweep: SWEEP, notifications: 'off' }) });

describe('sweeper lease (daemons as child processes)', () => {
  let c: Redis;
  let observer: Redis;
  const downs: Down[] = [];

  beforeAll(async () => {
    c = suite.redis.client({ connectionName: 'lease-cmd' });
    await c.config('SET', 'notify-keyspace-events', '');
    observer = suite.redis.client({ connectionName: 'lease-observer' });
    observer.on('message', (_channel: string, message: string) => {
      const env = JSON.parse(message) as { data: { agent: string; detectedBy: string } };
      downs.push({ agent: env.data.agent, detectedBy: env.data.detectedBy, at: Date.now() });
    });
    await observer.subscribe(keys.channel('agent_down'));
  });

  async function startGroup(n: number, env: Record<string, string> = {}, envOf?: (i: number) => Record<string, string>): Promise<{ den: string; agents: Agent[] }> {
    const { den, agents } = await suite.group(n, { env }, (i) => ({ env: envOf?.(i) ?? {} }));
    return { den, agents };
  }

  async function holderOf(den: string, agents: readonly Agent[]): Promise<Agent> {
    const token = await waitFor(`a sweeper lease in ${den}`, () => c.get(`den:${den}:sweeper`), 5_000);
    const holder = agents.find((a) => token.startsWith(`${a.id} `));
    expect(holder, `lease token ${token} names a member`).toBeDefined();
    return holder!;
  }

  async function sweepsDuring(ms: number): Promise<number> {
    const count = async (): Promise<number> => Number(/cmdstat_smembers:calls=(\d+)/.exec(await c.info('commandstats'))?.[1] ?? 0);
    const before = await count();
    await sleep(ms);
    return (await count()) - before;
  }

  const downsOf = (id: string): Down[] => downs.filter((d) => d.agent === id);

  it('one member sweeps a den per interval, not every member', async () => {
    const { den, agents } = await startGroup(5);
    await holderOf(den, agents);
    const windowMs = 3_000;
    const sweeps = await sweepsDuring(windowMs);
    // One sweeper: at most one sweep per 0.9 × interval (+1 for the window edge). Five sweeping would be ~30.
    expect(sweeps).toBeGreaterThan(0);
    expect(sweeps, `sweeps in ${windowMs} ms by 5 members`).toBeLessThanOrEqual(Math.ceil(windowMs / (0.9 * SWEEP * 1000)) + 1);
    await Promise.all(agents.map((a) => a.stop()));
    // With the old behaviour every member sweeps: the same measure sees several times more.
    const old = await startGroup(5, { AGENTD_WATCH_SWEEPER: 'every' });
    await sleep(500);
    const oldSweeps = await sweepsDuring(windowMs);
    expect(oldSweeps).toBeGreaterThanOrEqual(3 * sweeps);
    await Promise.all(old.agents.map((a) => a.stop()));
  });

  it('the sweeper killed with SIGKILL together with another member: both reported once, within the bound', async () => {
    const { den, agents } = await startGroup(4);
    const holder = await holderOf(den, agents);
    const victim = agents.find((a) => a !== holder)!;
    const faultAt = Date.now();
    holder.signal('SIGKILL');
    victim.signal('SIGKILL');
    for (const dead of [holder, victim]) {
      const down = await waitFor(`agent_down of ${dead.id}`, () => downsOf(dead.id)[0], BOUND_MS + 5_000, 10);
      expect(down.at - faultAt, `agent_down of ${dead === holder ? 'the sweeper' : 'the other'} after ${down.at - faultAt} ms`).toBeLessThan(BOUND_MS);
    }
    const survivors = agents.filter((a) => a !== holder && a !== victim);
    const next = await holderOf(den, survivors);
    expect(survivors).toContain(next);
    await sleep(2_000);
    expect(downsOf(holder.id)).toHaveLength(1);
    expect(downsOf(victim.id)).toHaveLength(1);
    for (const s of survivors) expect(downsOf(s.id)).toEqual([]);
  });

  it('a sweeper frozen past its lease is replaced; when it resumes it sweeps nothing twice', async () => {
    // A longer TTL here, so the frozen sweeper outlives its lease (1.5 s) but not its heartbeat.
    const ttl = 5;
    const bound = Math.max(ttl * 1000, LEASE_MS) + 1.1 * SWEEP * 1000 + 1000;
    const { den, agents } = await startGroup(4, { AGENTD_HEARTBEAT_TTL: String(ttl) });
    const holder = await holderOf(den, agents);
    const victim = agents.find((a) => a !== holder)!;
    holder.signal('SIGSTOP');
    const faultAt = Date.now();
    victim.signal('SIGKILL');
    // Another member takes the lease once the frozen one's lapses.
    const taken = await waitFor('lease taken over', async () => {
      const token = await c.get(`den:${den}:sweeper`);
      return token !== null && !token.startsWith(`${holder.id} `) ? token : undefined;
    }, LEASE_MS + 3_000, 20);
    expect(agents.some((a) => a !== holder && a !== victim && taken.startsWith(`${a.id} `))).toBe(true);
    // Resume: the old holder still believes it holds the lease; its next turn finds it does not.
    holder.signal('SIGCONT');
    const down = await waitFor(`agent_down of ${victim.id}`, () => downsOf(victim.id)[0], bound + 5_000, 10);
    expect(down.at - faultAt).toBeLessThan(bound);
    await sleep(3 * SWEEP * 1000 + 1_000);
    expect(isAlive(holder)).toBe(true);
    expect(downsOf(victim.id)).toHaveLength(1);
    for (const a of agents) if (a !== victim) expect(downsOf(a.id), `${a.id} never reported down`).toEqual([]);
    // The new holder kept it: the resumed one neither renewed nor released another's lease.
    expect(await c.get(`den:${den}:sweeper`)).toBe(taken);
  });

  it('watchers that all sweep (two that think they hold the lease, and more) report each death once', async () => {
    // Half the den sweeps regardless of the lease: every death is raced by several sweepers.
    const { agents } = await startGroup(6, {}, (i) => (i % 2 === 0 ? { AGENTD_WATCH_SWEEPER: 'every' } : {}));
    const victims = agents.slice(0, 2);
    const faultAt = Date.now();
    for (const v of victims) v.signal('SIGKILL');
    for (const v of victims) {
      const down = await waitFor(`agent_down of ${v.id}`, () => downsOf(v.id)[0], BOUND_MS + 5_000, 10);
      expect(down.at - faultAt).toBeLessThan(BOUND_MS);
    }
    await sleep(2_000);
    for (const v of victims) expect(downsOf(v.id)).toHaveLength(1);
    for (const a of agents.slice(2)) expect(downsOf(a.id)).toEqual([]);
  });
});
