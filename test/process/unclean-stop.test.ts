/**
 * `agentd run` as a real child process, stopped in ways that are not an
 * ordinary SIGTERM at steady state: SIGTERM during start (right when the first
 * beat goes out, and right after agent_online), SIGHUP, and plugins that call
 * process.exit(0), try to close ctx.redis, or throw / reject from a timer.
 * Every one ends with no presence left and no peer reporting agent_down; no
 * unclean stop exits 0; SIGHUP and ctx.redis.quit() do not stop the daemon.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Redis } from 'ioredis';
import { beforeAll, describe, expect, it } from 'vitest';
import { fixture, httpGet, isAlive, processSuite, type Agent, type AgentOptions } from '../helpers/process.ts';
import { collect, type Collected, hasMsg, keys, seedMessage, uniqueId, waitFor } from '../helpers/util.ts';

const TTL_S = 2;
const SWEEP_S = 0.3;
const MISBEHAVES = fixture('misbehaves.js');

const suite = processSuite({
  redis: { requireControl: true },
  env: { AGENTD_HEARTBEAT_TTL: String(TTL_S), AGENTD_HEARTBEAT_INTERVAL: '0.5', AGENTD_SWEEP_INTERVAL: String(SWEEP_S) },
});

describe('agentd run: unclean and early stops (child process)', () => {
  let c: Redis;
  let downs: Collected[];
  let offline: Collected[];
  let peer: Agent;
  const den = uniqueId('usden');
  const ids: string[] = [];

  beforeAll(async () => {
    c = suite.cmd;
    downs = await collect(suite.redis.client({ connectionName: 'unclean-down' }), keys.channel('agent_down'));
    offline = await collect(suite.redis.client({ connectionName: 'unclean-offline' }), keys.channel('agent_offline'));
    // A live peer in the same den, watching it: it reports any of ours left behind.
    peer = await suite.spawn({ id: uniqueId('peer'), den });
    await peer.ready(15_000);
  });

  /** One of the daemons under test, in the peer's den (its id is checked for presence at the end). */
  function spawn(id: string, env: Record<string, string> = {}, more: AgentOptions = {}): Promise<Agent> {
    ids.push(id);
    return suite.spawn({ ...more, id, den, env });
  }

  async function expectNoPresence(id: string): Promise<void> {
    expect(await c.exists(keys.heartbeat(id)), 'heartbeat key').toBe(0);
    expect(await c.sismember(keys.den(den), id), 'den membership').toBe(0);
    const raw = await c.hget(keys.registry, id);
    if (raw !== null) expect((JSON.parse(raw) as { status: string }).status, 'registry status').toBe('offline');
  }

  const offlineOf = (id: string): Record<string, unknown> | undefined =>
    offline.map((m) => m.json?.['data'] as Record<string, unknown> | undefined).find((d) => d?.['agent'] === id);

  describe('SIGTERM during start', () => {
    for (const at of ['event subscription confirmed', 'agentd started']) {
      it(`right at "${at}": exits 0 and leaves no presence`, async () => {
        const id = uniqueId('early');
        const d = await spawn(id, { AGENTD_LOG_LEVEL: 'debug' });
        await d.waitForLog(hasMsg(at), 15_000);
        d.signal('SIGTERM');
        const exit = await d.exited;
        expect(exit).toEqual({ code: 0, signal: null });
        await expectNoPresence(id);
      });
    }
  });

  it('SIGHUP does not stop the daemon: it says reload is not supported and names what changed', async () => {
    const id = uniqueId('hup');
    const file = join(suite.tmp, `${id}.json`);
    writeFileSync(file, JSON.stringify({ queue: { concurrency: 4 } }));
    const d = await spawn(id, { AGENTD_CONFIG: file });
    await d.waitForLog(hasMsg('agentd ready'), 15_000);
    d.signal('SIGHUP');
    await d.waitForLog(hasMsg(/^SIGHUP: reload is not supported; the configuration is unchanged/));
    writeFileSync(file, JSON.stringify({ queue: { concurrency: 8 } }));
    d.signal('SIGHUP');
    const line = await d.waitForLog(hasMsg(/^SIGHUP: reload is not supported; these settings changed/));
    expect(line['changed']).toEqual(['queue.concurrency']);
    writeFileSync(file, '{ not json');
    d.signal('SIGHUP');
    await d.waitForLog(hasMsg(/^SIGHUP: the configuration on disk is invalid/));
    // Still alive, still beating, still in its den.
    const before = Number(await c.get(keys.heartbeat(id)));
    await waitFor('a fresh beat after SIGHUP', async () => Number(await c.get(keys.heartbeat(id))) > before, 3_000);
    expect(isAlive(d)).toBe(true);
    expect(await c.sismember(keys.den(den), id)).toBe(1);
    d.signal('SIGTERM');
    expect(await d.exited).toEqual({ code: 0, signal: null });
    await expectNoPresence(id);
  });

  describe('plugins', () => {
    const misbehaving = (id: string): Promise<Agent> => spawn(id, { AGENTD_PLUGINS: MISBEHAVES });

    for (const [event, data, why, reason] of [
      ['exit', 0, /^process\.exit\(\) called by a plugin or a dependency$/, /^fatal: process\.exit\(0\) called$/],
      ['exit', 3, /^process\.exit\(\) called by a plugin or a dependency$/, /^fatal: process\.exit\(3\) called$/],
      ['throw-later', null, /^uncaught exception$/, /^fatal: uncaught exception$/],
      ['reject-later', null, /^unhandled promise rejection$/, /^fatal: unhandled promise rejection$/],
    ] as const) {
      it(`${event}(${String(data)}): exits 1 after leaving, agent_offline says why`, async () => {
        const id = uniqueId(event);
        const d = await misbehaving(id);
        await d.waitForLog(hasMsg('agentd ready'), 15_000);
        await c.publish(keys.channel(event), seedMessage(event, data));
        const exit = await d.exited;
        expect(exit).toEqual({ code: 1, signal: null });
        const fatal = d.logs.find((l) => l['level'] === 'fatal');
        expect(fatal?.['msg']).toMatch(why);
        expect(d.logs.some(hasMsg('misbehaves: process.exit returned')), 'the code after process.exit() ran').toBe(false);
        await expectNoPresence(id);
        const left = await waitFor('agent_offline', () => offlineOf(id));
        expect(String(left['reason'])).toMatch(reason);
        if (event === 'exit') expect(fatal?.['exitCode']).toBe(data);
        if (event === 'throw-later') expect(String(fatal?.['err'])).toContain('boom from a plugin timer');
      });
    }

    it('ctx.redis cannot be closed, subscribed or re-selected: each is refused, the daemon stays ready', async () => {
      const id = uniqueId('quit');
      const d = await spawn(id, { AGENTD_PLUGINS: MISBEHAVES }, { http: true });
      const port = d.httpPort;
      await d.waitForLog(hasMsg('agentd ready'), 15_000);
      await c.publish(keys.channel('quit'), seedMessage('quit', null));
      const line = await d.waitForLog(hasMsg('misbehaves: tried to close the connection'));
      const refused = line['refused'] as Array<{ what: string; message: string }>;
      expect(refused.map((r) => r.what)).toEqual(['quit', 'disconnect', 'call', 'subscribe', 'select', 'multi.quit', 'client']);
      for (const r of refused) expect(r.message).toMatch(/^plugin misbehaves: ctx\.redis\.\S+ is refused: ctx\.redis is agentd's shared command connection/);
      expect(line['pong']).toBe('PONG');
      // Still working: beats land and no degraded line.
      const before = Number(await c.get(keys.heartbeat(id)));
      await waitFor('a fresh beat after the attempts', async () => Number(await c.get(keys.heartbeat(id))) > before, 3_000);
      expect(d.logs.filter(hasMsg('agentd degraded'))).toEqual([]);
      const ready = await httpGet(port, '/readyz');
      expect(ready.status, ready.body).toBe(200);
      expect(isAlive(d)).toBe(true);
      d.signal('SIGTERM');
      expect(await d.exited).toEqual({ code: 0, signal: null });
    });
  });

  it('no watching peer reported any of them down', async () => {
    expect(ids.length).toBeGreaterThanOrEqual(8);
    await sleep(TTL_S * 1000 + SWEEP_S * 3 * 1000);
    for (const id of ids) await expectNoPresence(id);
    const buried = downs.map((m) => (m.json?.['data'] as { agent?: string } | undefined)?.agent).filter((a) => a !== undefined && ids.includes(a));
    expect(buried).toEqual([]);
    expect(isAlive(peer)).toBe(true);
  });
});
