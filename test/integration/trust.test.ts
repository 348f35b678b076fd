/**
 * Issue 12, done-when: with security.signing=require every forgery is refused
 * and counted — a forged agent_down / agent_offline for a live agent, a ghost
 * SADDed into a den, an event type on another type's channel, a replay — and
 * a real death is still announced once and accepted by every peer. With
 * signing off, behaviour is today's (a forged agent_down is dispatched).
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import type { AgentEvent } from '../../src/bus/envelope.ts';
import { definePlugin } from '../../src/plugins/types.ts';
import { makeDaemon, redisSuite, type TestDaemon } from '../helpers/inproc.ts';
import { uniqueId, waitFor } from '../helpers/util.ts';
import { newSecret, writeKeysFile } from '../helpers/keys.ts';
import { loadKeys } from '../../src/security/keys.ts';
import { sealEnvelope } from '../../src/security/signing.ts';

const suite = redisSuite();

const fast = { heartbeat: { ttl: 2, interval: 0.5 }, watch: { sweepInterval: 0.2, notifications: 'off' as const } };

function member(den: string, signing: 'off' | 'require', keysFile: string): { t: TestDaemon; seen: AgentEvent[] } {
  const seen: AgentEvent[] = [];
  const t = makeDaemon(suite.redis.url, { ...fast, agent: { den }, security: { signing, keysFile: signing === 'off' ? '' : keysFile } }, [
    definePlugin({ name: 'rec', handlers: { '*': (e) => void seen.push(e) } }),
  ]);
  return { t, seen };
}

async function metricValue(t: TestDaemon, name: string, labels = ''): Promise<number> {
  const text = await t.daemon.metrics.registry.metrics();
  const line = text.split('\n').find((l) => l.startsWith(`${name}${labels}`) && !l.startsWith('#'));
  return line === undefined ? 0 : Number(line.split(' ').pop());
}

describe('trust on a shared Redis (security.signing=require)', () => {
  it('refuses and counts every forgery; a real death is announced once and accepted by every peer', async () => {
    const secret = newSecret();
    const keys = writeKeysFile([['k1', secret]]);
    const den = uniqueId('den');
    const raw: Array<{ channel: string; message: string }> = [];
    const listener = suite.redis.client();
    listener.on('pmessage', (_p: string, channel: string, message: string) => raw.push({ channel, message }));
    await listener.psubscribe('agent:events:*');

    const peers = [member(den, 'require', keys), member(den, 'require', keys), member(den, 'require', keys)];
    for (const p of peers) await suite.start(p.t);
    const [a, b] = peers as [(typeof peers)[0], (typeof peers)[0]];
    const bId = b.t.config.agent.id;
    const lastId = peers[2]!.t.config.agent.id;
    await waitFor('the last agent_online seen by every peer', () => peers.every((p) => p.seen.some((e) => e.event === 'agent_online' && (e.data as { agent: string }).agent === lastId)));

    // 1. redis-cli style forgeries for a live agent.
    const forged = (event: string) => JSON.stringify({ event, data: { agent: bId, den, host: 'x', lastSeen: 1, detectedBy: 'evil', via: 'sweep' }, id: uniqueId('f'), source: 'evil', ts: Date.now(), den });
    await suite.cmd.publish('agent:events:agent_down', forged('agent_down'));
    await suite.cmd.publish('agent:events:agent_offline', forged('agent_offline'));
    // A signature that does not match (a made-up MAC).
    const fake = forged('agent_down');
    await suite.cmd.publish('agent:events:agent_down', `${fake.slice(0, -1)},"sig":"v1,k1,${randomBytes(32).toString('base64')}"}`);
    // 2. An event type on another type's channel.
    await suite.cmd.publish('agent:events:task_done', forged('agent_down'));
    // 3. A replay of a genuine signed message.
    // (the last agent's agent_online: every peer was subscribed when it went out)
    const genuine = raw.find((m) => m.channel === 'agent:events:agent_online' && m.message.includes(`"agent":"${lastId}"`))!;
    await suite.cmd.publish(genuine.channel, genuine.message);
    // 4. A ghost in the den (no registry record written by agentd).
    const ghost = uniqueId('ghost');
    await suite.cmd.sadd(`den:${den}:online_agents`, ghost);

    await waitFor('each forgery refused by every peer', () => peers.every((p) => {
      const inv = p.t.daemon.stats().invalid;
      return inv.unsigned === 2 && inv.bad_signature === 1 && inv.channel_mismatch === 1 && inv.replayed === 1;
    })).catch((err: unknown) => {
      throw new Error(`${String(err)}: ${JSON.stringify(peers.map((p) => p.t.daemon.stats().invalid))}`);
    });
    await waitFor('the ghost removed', async () => (await suite.cmd.sismember(`den:${den}:online_agents`, ghost)) === 0);
    // The SREM is seen before the reaper has read the script's reply (and counted it): wait for the count.
    const ghostRemovals = async () => (await Promise.all(peers.map((p) => metricValue(p.t, 'agentd_ghosts_removed_total')))).reduce((x, y) => x + y, 0);
    await waitFor('the ghost removal counted', async () => (await ghostRemovals()) >= 1);
    expect(await ghostRemovals()).toBe(1);
    expect(peers.some((p) => p.t.lines.some((l) => /a ghost/.test(String(l.msg)) && l['peer'] === ghost))).toBe(true);

    // 5. A real death: an agentd-written record, long silent, heartbeat gone.
    const dead = uniqueId('dead');
    await suite.cmd.hset('global:agent_registry', dead, JSON.stringify({ id: dead, den, host: 'dead-host', pid: 1, version: 'x', startedAt: 1, status: 'online', lastSeen: Date.now() - 60_000, instance: 'abcd', heartbeatTtl: 2 }));
    await suite.cmd.sadd(`den:${den}:online_agents`, dead);
    await waitFor('the real agent_down accepted by every peer', () => peers.every((p) => p.seen.some((e) => e.event === 'agent_down' && (e.data as { agent: string }).agent === dead)));
    await new Promise((r) => setTimeout(r, 600)); // several more sweeps
    expect(raw.filter((m) => m.channel === 'agent:events:agent_down' && m.message.includes(`"agent":"${dead}"`))).toHaveLength(1);
    for (const p of peers) {
      // Nothing forged reached a plugin: agent_down of the dead agent only, no agent_offline at all.
      expect(p.seen.filter((e) => e.event === 'agent_down').map((e) => (e.data as { agent: string }).agent)).toEqual([dead]);
      expect(p.seen.filter((e) => e.event === 'agent_offline')).toEqual([]);
      expect(p.seen.filter((e) => e.channel === 'agent:events:task_done')).toEqual([]);
      expect(await metricValue(p.t, 'agentd_agents_down_total')).toBe(1);
      expect(await metricValue(p.t, 'agentd_events_untrusted_total', '{reason="unsigned"}')).toBe(2);
      expect(await metricValue(p.t, 'agentd_events_dropped_total', '{event="invalid",reason="channel_mismatch"}')).toBe(1);
      // The secret appears in no log line and no metric.
      expect(JSON.stringify(p.t.lines)).not.toContain(secret);
      expect(await p.t.daemon.metrics.registry.metrics()).not.toContain(secret);
    }
    expect(await suite.cmd.sismember(`den:${den}:online_agents`, bId)).toBe(1);
    expect(a.t.daemon.stats().invalid.stale).toBe(0);
    listener.disconnect();
  });

  it('a replay is refused even after the fleet\'s own traffic filled the replay window (100,000 ids)', async () => {
    const keysFile = writeKeysFile([['k1', newSecret()]]);
    const keys = loadKeys(keysFile);
    const downs: AgentEvent[] = [];
    const t = await suite.start(makeDaemon(suite.redis.url, { security: { signing: 'require', keysFile } }, [definePlugin({ name: 'rec', handlers: { agent_down: (e) => void downs.push(e), noise: () => undefined } })]));
    const seal = (event: string, data: unknown) => {
      const env = { event, data, id: randomUUID(), source: 'a1', ts: Date.now(), den: 'blue' };
      return sealEnvelope(env, `agent:events:${event}`, keys);
    };
    const down = seal('agent_down', { agent: 'a2', den: 'blue' });
    await suite.cmd.publish('agent:events:agent_down', down);
    await waitFor('the genuine agent_down', () => downs.length === 1);
    // Genuine, signed, fresh traffic (no attacker needed): more ids than the window holds.
    const before = t.daemon.stats().received;
    for (let sent = 0; sent < 100_000; sent += 5_000) {
      const p = suite.cmd.pipeline();
      for (let i = 0; i < 5_000; i++) p.publish('agent:events:noise', seal('noise', i));
      await p.exec();
      // Paced: a subscriber far behind is cut off by Redis (client-output-buffer-limit pubsub).
      await waitFor(`${sent + 5_000} messages taken in`, () => t.daemon.stats().received >= before + sent + 5_000, 30_000);
    }
    // The attacker, who recorded the agent_down, replays it within the tolerance.
    await suite.cmd.publish('agent:events:agent_down', down);
    await waitFor('the replay taken in', () => t.daemon.stats().received >= before + 100_001);
    const inv = t.daemon.stats().invalid;
    expect({ downs: downs.length, refused: inv.replayed + inv.stale }).toEqual({ downs: 1, refused: 1 });
  }, 180_000);

  it('durable entries are signed and verified too: a forged inbox entry, task or reply drives no handler under require', async () => {
    const keys = writeKeysFile([['k1', newSecret()]]);
    const den = uniqueId('den');
    const got: AgentEvent[] = [];
    const mk = (plugins: ReturnType<typeof definePlugin>[]) => makeDaemon(suite.redis.url, { ...fast, agent: { den }, security: { signing: 'require', keysFile: keys } }, plugins);
    const b = await suite.start(mk([definePlugin({ name: 'job', handlers: { job: (e) => { got.push(e); return 'done'; } } })]));
    const a = await suite.start(mk([]));
    const bId = b.config.agent.id;
    const forged = (event: string, extra: object = {}) => JSON.stringify({ event, data: { forged: true }, id: uniqueId('f'), source: 'evil', ts: Date.now(), den, ...extra });
    // redis-cli style: XADD an unsigned envelope into b's inbox and the den's tasks.
    await suite.cmd.xadd(`inbox:${bId}`, '*', 'envelope', forged('job'));
    await suite.cmd.xadd(`den:${den}:tasks`, '*', 'envelope', forged('job'));
    // A genuine (signed) request from a, and its signed reply.
    const answer = a.daemon.durable.request(bId, 'job', { genuine: true }, { timeoutMs: 10_000 });
    expect(await answer).toBe('done');
    await waitFor('the genuine request handled', () => got.some((e) => (e.data as { genuine?: boolean }).genuine === true));
    await waitFor('the forged entries dead-lettered', async () => (await suite.cmd.xlen(`inbox:${bId}:dead`)) >= 1 && (await suite.cmd.xlen(`den:${den}:dead`)) >= 1);
    expect(got.filter((e) => (e.data as { forged?: boolean }).forged === true)).toEqual([]);
    expect(b.lines.some((l) => l['code'] === 'AGENTD_ERR_BAD_EVENT' && l['reason'] === 'unsigned' && typeof l['stream'] === 'string')).toBe(true);
    // A signed entry copied to another inbox fails: the stream key is signed.
    const [reply] = (await suite.cmd.xrange(`inbox:${a.config.agent.id}`, '-', '+')) as Array<[string, string[]]>;
    expect(reply![1][1]).toMatch(/,"sig":"v1,k1,/);
    await suite.cmd.xadd(`inbox:${bId}`, '*', 'envelope', reply![1][1]!);
    await waitFor('the moved reply dead-lettered', async () => (await suite.cmd.xlen(`inbox:${bId}:dead`)) >= 2);
  });

  it('with signing off, behaviour is today\'s: a forged agent_down is dispatched and counted; a ghost is announced', async () => {
    const den = uniqueId('den');
    const p = member(den, 'off', '');
    await suite.start(p.t);
    await suite.cmd.publish('agent:events:agent_down', JSON.stringify({ event: 'agent_down', data: { agent: 'someone', den } }));
    await waitFor('the forged agent_down dispatched', () => p.seen.some((e) => e.event === 'agent_down'));
    const ghost = uniqueId('ghost');
    await suite.cmd.sadd(`den:${den}:online_agents`, ghost);
    await waitFor('the ghost announced as before', () => p.seen.some((e) => e.event === 'agent_down' && (e.data as { agent: string }).agent === ghost));
    expect(p.t.daemon.stats().invalid.unsigned).toBe(0);
  });

  it('warn: a flood of unsigned messages is dispatched, but not logged line by line', async () => {
    const keys = writeKeysFile([['k1', newSecret()]]);
    let seen = 0;
    const t = await suite.start(makeDaemon(suite.redis.url, { security: { signing: 'warn', keysFile: keys } }, [definePlugin({ name: 'rec', handlers: { hello: () => void seen++ } })]));
    const p = suite.cmd.pipeline();
    for (let i = 0; i < 1_000; i++) p.publish('agent:events:hello', JSON.stringify({ event: 'hello', data: i }));
    await p.exec();
    await waitFor('every unsigned event dispatched', () => seen === 1_000, 30_000);
    const warned = t.lines.filter((l) => l['code'] === 'AGENTD_ERR_BAD_EVENT' && l.level === 'warn').length;
    expect(warned).toBeLessThanOrEqual(25);
  });

  it('warn: counts and logs an unsigned message but dispatches it', async () => {
    const keys = writeKeysFile([['k1', newSecret()]]);
    const seen: AgentEvent[] = [];
    const t = await suite.start(makeDaemon(suite.redis.url, { security: { signing: 'warn', keysFile: keys } }, [definePlugin({ name: 'rec', handlers: { hello: (e) => void seen.push(e) } })]));
    await suite.cmd.publish('agent:events:hello', JSON.stringify({ event: 'hello', data: 1 }));
    await waitFor('the unsigned event dispatched', () => seen.length === 1);
    expect(await metricValue(t, 'agentd_events_untrusted_total', '{reason="unsigned"}')).toBe(1);
    expect(t.daemon.stats().invalid.unsigned).toBe(0);
    expect(t.lines.some((l) => l['code'] === 'AGENTD_ERR_BAD_EVENT' && l['reason'] === 'unsigned' && l.level === 'warn')).toBe(true);
  });
});
