/**
 * A Redis ACL that stops allowing the sweeper lease while the daemon runs
 * (an operator applies an older rule without ~den:*:sweeper; at start the
 * server check refuses such a user with exit 2): the watcher says so once and
 * sweeps every interval as before the lease, so deaths are still found.
 */
import { describe, expect, it } from 'vitest';
import { makeDaemon, redisSuite } from '../helpers/inproc.ts';
import { collect, uniqueId, waitFor } from '../helpers/util.ts';

const suite = redisSuite({ requireControl: true });

describe('sweeper lease refused by the ACL', () => {
  it('falls back to sweeping every interval and still reaps the dead', async () => {
    await suite.cmd.config('SET', 'notify-keyspace-events', '');
    const user = uniqueId('nolease');
    const keys = ['~agent:*', '~den:*:online_agents', '~global:agent_registry'];
    await suite.cmd.call('ACL', ['SETUSER', user, 'on', '>pw', 'resetkeys', ...keys, '~den:*:sweeper', '&*', '+@all']);
    const url = new URL(suite.redis.url);
    url.username = user;
    url.password = 'pw';
    const den = uniqueId('den');
    const seen = await collect(suite.redis.client(), 'agent:events:agent_down');
    const t = await suite.start(makeDaemon(url.toString(), { agent: { den }, heartbeat: { ttl: 2, interval: 0.5 }, watch: { sweepInterval: 0.2, notifications: 'off' }, durable: { enabled: false } }));
    // Everything agentd needs, but no key den:*:sweeper any more.
    await suite.cmd.call('ACL', ['SETUSER', user, 'resetkeys', ...keys]);
    await suite.cmd.del(`den:${den}:sweeper`);
    // A member whose heartbeat is gone and whose record is old: dead by both signals.
    const ghost = uniqueId('ghost');
    await suite.cmd.sadd(`den:${den}:online_agents`, ghost);
    // A member without a registry record is reaped once this watcher has seen its key missing for a TTL.
    await waitFor('agent_down of the ghost via the fallback sweep', () => seen.length === 1, 10_000);
    expect(seen[0]!.json?.['data']).toMatchObject({ agent: ghost, den, via: 'sweep', detectedBy: t.config.agent.id });
    const warned = t.lines.filter((l) => typeof l['msg'] === 'string' && (l['msg'] as string).startsWith('cannot use the sweeper lease (NOPERM)'));
    expect(warned).toHaveLength(1);
    expect(await suite.cmd.exists(`den:${den}:sweeper`)).toBe(0);
  });
});
