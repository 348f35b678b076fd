import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import type { AgentEvent } from '../../src/bus/envelope.ts';
import type { AgentdConfig, DeepPartial } from '../../src/config/schema.ts';
import { RequestError } from '../../src/durable/errors.ts';
import { definePlugin, type Plugin } from '../../src/plugins/types.ts';
import { makeDaemon, redisSuite, type TestDaemon } from '../helpers/inproc.ts';
import { gate, uniqueId, waitFor } from '../helpers/util.ts';

const suite = redisSuite();

/** Short settings: every bound in these tests is derived from them. */
const FAST: DeepPartial<AgentdConfig> = {
  heartbeat: { ttl: 2, interval: 0.5 },
  watch: { sweepInterval: 0.5 },
  durable: { pollInterval: 0.2, backoffMs: 50, backoffMaxMs: 200, attempts: 3 },
};

function cfg(den: string, extra: DeepPartial<AgentdConfig> = {}): DeepPartial<AgentdConfig> {
  return { ...FAST, ...extra, agent: { den, ...extra.agent }, durable: { ...FAST.durable, ...extra.durable } };
}

async function startAgent(den: string, plugin: Plugin, extra: DeepPartial<AgentdConfig> = {}): Promise<TestDaemon> {
  return suite.start(makeDaemon(suite.redis.url, cfg(den, extra), [plugin as Plugin]));
}

async function pendingCount(key: string): Promise<number> {
  const summary = (await suite.cmd.xpending(key, 'agentd')) as [number, ...unknown[]];
  return Number(summary[0]);
}

describe('den tasks (shared work)', () => {
  it('a task submitted to a den of three is handled by exactly one member, and acknowledged', async () => {
    const den = uniqueId('den');
    const handled: Array<{ agent: string; id: string; attempt: number }> = [];
    const mk = (name: string): Plugin =>
      definePlugin({
        name: 'worker',
        handlers: {
          job: (e, ctx) => {
            handled.push({ agent: ctx.agent.id, id: (e.data as { n: number }).n.toString(), attempt: e.delivery!.attempt });
            return undefined;
          },
        },
      }) as Plugin;
    const agents = await Promise.all(['a', 'b', 'c'].map((n) => startAgent(den, mk(n))));
    const N = 60;
    for (let n = 0; n < N; n++) await agents[n % 3]!.daemon.durable.submit('job', { n });
    await waitFor(`${N} tasks handled`, () => handled.length >= N, 10_000);
    await waitFor('every task acknowledged', async () => (await pendingCount(`den:${den}:tasks`)) === 0);
    await sleep(500); // two more poll intervals: nothing is handled again
    expect(handled.length).toBe(N);
    expect(new Set(handled.map((h) => h.id)).size).toBe(N);
    expect(handled.every((h) => h.attempt === 1)).toBe(true);
  });

  it('a handler that fails twice then succeeds is acknowledged after the third attempt', async () => {
    const den = uniqueId('den');
    const attempts: number[] = [];
    const t = await startAgent(den, definePlugin({
      name: 'flaky',
      handlers: {
        job: (e) => {
          attempts.push(e.delivery!.attempt);
          if (e.delivery!.attempt < 3) throw new Error(`boom ${e.delivery!.attempt}`);
        },
      },
    }) as Plugin);
    const id = await t.daemon.durable.submit('job', { x: 1 });
    expect(id).toMatch(/[0-9a-f-]{36}/);
    await waitFor('three attempts', () => attempts.length === 3);
    await waitFor('acknowledged', async () => (await pendingCount(`den:${den}:tasks`)) === 0);
    expect(attempts).toEqual([1, 2, 3]);
    expect(await suite.cmd.xlen(`den:${den}:dead`)).toBe(0);
    expect(t.daemon.durable.consumer.counts.acked).toBe(1);
  });

  it('a handler that always fails lands in the dead-letter stream with its error and attempt count', async () => {
    const den = uniqueId('den');
    let calls = 0;
    const t = await startAgent(den, definePlugin({
      name: 'broken',
      handlers: {
        job: () => {
          calls++;
          throw new Error('disk on fire');
        },
      },
    }) as Plugin);
    await t.daemon.durable.submit('job', { x: 1 });
    await waitFor('a dead letter', async () => (await suite.cmd.xlen(`den:${den}:dead`)) === 1);
    const [[deadId, fields]] = (await suite.cmd.xrange(`den:${den}:dead`, '-', '+')) as [[string, string[]]];
    const f = Object.fromEntries(fields.reduce<string[][]>((acc, v, i) => (i % 2 ? (acc[acc.length - 1]!.push(v), acc) : [...acc, [v]]), []));
    expect(deadId).toBeTruthy();
    expect(f['error']).toContain('disk on fire');
    expect(f['attempts']).toBe('3');
    expect(JSON.parse(f['envelope']!)).toMatchObject({ event: 'job', data: { x: 1 } });
    const [[sourceId]] = (await suite.cmd.xrange(`den:${den}:tasks`, "-", "+")) as unknown as [[string]];
    expect(f['source_id']).toBe(sourceId);
    expect(calls).toBe(3);
    expect(await pendingCount(`den:${den}:tasks`)).toBe(0);
  });

  it('a running handler keeps its claim: nothing is redelivered while it runs past orphanAfter', async () => {
    const den = uniqueId('den');
    const starts: string[] = [];
    const release = gate();
    const mk = (): Plugin =>
      definePlugin({
        name: 'slow',
        handlers: {
          job: async (_e, ctx) => {
            starts.push(ctx.agent.id);
            await release.promise;
          },
        },
      }) as Plugin;
    // orphanAfter 0.8 s: the running handler's claim is refreshed every 0.8 / 4 s (one poll tick).
    const extra = { durable: { orphanAfter: 0.8 } };
    const [a] = await Promise.all([startAgent(den, mk(), extra), startAgent(den, mk(), extra), startAgent(den, mk(), extra)]);
    await a!.daemon.durable.submit('job', {});
    await waitFor('the task started', () => starts.length === 1);
    await sleep(0.8 * 1000 * 5); // five times orphanAfter
    release.open();
    await waitFor('acknowledged', async () => (await pendingCount(`den:${den}:tasks`)) === 0);
    expect(starts.length).toBe(1);
  });
});

describe('inbox (directed)', () => {
  it('an entry sent before the agent ever started is handled once it starts, with the delivery', async () => {
    const den = uniqueId('den');
    const target = uniqueId('agent');
    const seen: AgentEvent[] = [];
    const sender = await startAgent(den, definePlugin({ name: 'none', handlers: {} }) as Plugin);
    await sender.daemon.durable.send(target, 'note', { text: 'hi' });
    await startAgent(den, definePlugin({ name: 'rec', handlers: { note: (e) => void seen.push(e) } }) as Plugin, { agent: { id: target } });
    await waitFor('the note', () => seen.length === 1);
    expect(seen[0]).toMatchObject({ event: 'note', data: { text: 'hi' }, channel: `inbox:${target}`, source: sender.config.agent.id });
    expect(seen[0]!.delivery).toMatchObject({ stream: `inbox:${target}`, kind: 'inbox', attempt: 1, maxAttempts: 3 });
    await waitFor('acknowledged', async () => (await pendingCount(`inbox:${target}`)) === 0);
  });

  it('an entry without a doorbell is read by the poll', async () => {
    const den = uniqueId('den');
    const seen: AgentEvent[] = [];
    const t = await startAgent(den, definePlugin({ name: 'rec', handlers: { note: (e) => void seen.push(e) } }) as Plugin);
    await suite.cmd.xadd(`inbox:${t.config.agent.id}`, '*', 'envelope', JSON.stringify({ event: 'note', data: 1 }));
    await waitFor('the polled note', () => seen.length === 1, 0.2 * 1000 * 5);
  });
});

describe('request/reply', () => {
  it('resolves with the handler\'s return value', async () => {
    const den = uniqueId('den');
    const server = await startAgent(den, definePlugin({ name: 'calc', handlers: { add: (e) => (e.data as number[]).reduce((a, b) => a + b, 0) } }) as Plugin);
    const client = await startAgent(den, definePlugin({ name: 'none', handlers: {} }) as Plugin);
    expect(await client.daemon.durable.request(server.config.agent.id, 'add', [1, 2, 3], { timeoutMs: 5_000 })).toBe(6);
  });

  it('rejects with handler_failed and the handler\'s message after the attempts', async () => {
    const den = uniqueId('den');
    const server = await startAgent(den, definePlugin({ name: 'calc', handlers: { add: () => { throw new Error('cannot add'); } } }) as Plugin);
    const client = await startAgent(den, definePlugin({ name: 'none', handlers: {} }) as Plugin);
    const err = await client.daemon.durable.request(server.config.agent.id, 'add', [1], { timeoutMs: 5_000 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(RequestError);
    expect((err as RequestError).reason).toBe('handler_failed');
    expect((err as RequestError).code).toBe('AGENTD_ERR_REQUEST_FAILED');
    expect((err as RequestError).message).toContain('cannot add');
  });

  it('rejects with dead_lettered when the target has no handler for the type', async () => {
    const den = uniqueId('den');
    const server = await startAgent(den, definePlugin({ name: 'none', handlers: {} }) as Plugin);
    const client = await startAgent(den, definePlugin({ name: 'none', handlers: {} }) as Plugin);
    const err = (await client.daemon.durable.request(server.config.agent.id, 'nope', null, { timeoutMs: 5_000 }).catch((e: unknown) => e)) as RequestError;
    expect(err.reason).toBe('dead_lettered');
    expect(await suite.cmd.xlen(`inbox:${server.config.agent.id}:dead`)).toBe(1);
  });

  it('rejects with timeout when no reply comes in time', async () => {
    const den = uniqueId('den');
    const hold = gate();
    const server = await startAgent(den, definePlugin({ name: 'slow', handlers: { slow: () => hold.promise } }) as Plugin);
    const client = await startAgent(den, definePlugin({ name: 'none', handlers: {} }) as Plugin);
    const t0 = Date.now();
    const err = (await client.daemon.durable.request(server.config.agent.id, 'slow', null, { timeoutMs: 300 }).catch((e: unknown) => e)) as RequestError;
    expect(err.reason).toBe('timeout');
    expect(err.code).toBe('AGENTD_ERR_REQUEST_TIMEOUT');
    expect(Date.now() - t0).toBeGreaterThanOrEqual(300);
    hold.open();
  });

  it('rejects with no_such_agent and agent_down', async () => {
    const den = uniqueId('den');
    const client = await startAgent(den, definePlugin({ name: 'none', handlers: {} }) as Plugin);
    const unknown = (await client.daemon.durable.request(uniqueId('ghost'), 'x', null).catch((e: unknown) => e)) as RequestError;
    expect(unknown.reason).toBe('no_such_agent');
    const gone = await startAgent(den, definePlugin({ name: 'none', handlers: {} }) as Plugin);
    await gone.daemon.close();
    const down = (await client.daemon.durable.request(gone.config.agent.id, 'x', null).catch((e: unknown) => e)) as RequestError;
    expect(down.reason).toBe('agent_down');
    expect(down.code).toBe('AGENTD_ERR_AGENT_DOWN');
  });
});

describe('bounds, hand-over at stop, retention, metrics', () => {
  it('reads only as fast as handlers finish: at most 2 x concurrency entries are out of Redis, none dropped', async () => {
    const den = uniqueId('den');
    const hold = gate();
    let started = 0;
    let finished = 0;
    const t = await startAgent(den, definePlugin({
      name: 'slow',
      handlers: {
        job: async () => {
          started++;
          await hold.promise;
          finished++;
        },
      },
    }) as Plugin, { durable: { concurrency: 2 } });
    const N = 50;
    for (let n = 0; n < N; n++) await t.daemon.durable.submit('job', { n });
    await waitFor('two running', () => started === 2);
    await sleep(0.2 * 1000 * 3); // three poll intervals and many doorbells later
    const key = `den:${den}:tasks`;
    expect(await pendingCount(key)).toBeLessThanOrEqual(4);
    expect(t.daemon.durable.consumer.inFlight).toBeLessThanOrEqual(4);
    expect(started).toBe(2);
    hold.open();
    await waitFor(`all ${N} handled`, () => finished === N, 10_000);
    await waitFor('all acknowledged', async () => (await pendingCount(key)) === 0);
  });

  it('a backlog read in batches, mixing synchronous, failing and asynchronous handlers: each handled and acked, never more than concurrency running', async () => {
    const den = uniqueId('den');
    const key = `den:${den}:tasks`;
    const N = 60; // many reads of at most `concurrency` entries, with a read ahead
    for (let n = 0; n < N; n++) await suite.cmd.xadd(key, '*', 'envelope', JSON.stringify({ event: 'job', data: n }));
    const attempts = new Map<number, number>();
    let running = 0;
    let maxRunning = 0;
    const plugin = definePlugin({
      name: 'mixed',
      handlers: {
        job: (e) => {
          const n = e.data as number;
          attempts.set(n, (attempts.get(n) ?? 0) + 1);
          if (n % 3 === 1) return undefined; // synchronous, succeeds
          if (n % 3 === 2) {
            if (e.delivery!.attempt === 1) throw new Error(`first try of ${n}`); // synchronous, fails once
            return undefined;
          }
          running++;
          maxRunning = Math.max(maxRunning, running);
          return sleep(20).then(() => void running--); // asynchronous
        },
      },
    }) as Plugin;
    const t = await startAgent(den, plugin, { durable: { concurrency: 4, backoffMs: 20, backoffMaxMs: 50 } });
    await waitFor(`all ${N} acknowledged`, () => t.daemon.durable.consumer.counts.acked === N, 15_000);
    await waitFor('nothing pending', async () => (await pendingCount(key)) === 0 && t.daemon.durable.consumer.inFlight === 0);
    for (let n = 0; n < N; n++) expect(attempts.get(n), `entry ${n}`).toBe(n % 3 === 2 ? 2 : 1);
    expect(maxRunning).toBeLessThanOrEqual(4);
    expect(maxRunning).toBeGreaterThan(1); // they did run side by side
    expect(t.daemon.durable.consumer.counts.failedAttempts).toBe(N / 3);
    expect(await suite.cmd.xlen(`den:${den}:dead`)).toBe(0);
  });

  it('an entry trimmed before it was acknowledged is counted and logged, not silently lost', async () => {
    const den = uniqueId('den');
    const key = `den:${den}:tasks`;
    await suite.cmd.xgroup('CREATE', key, 'agentd', '0', 'MKSTREAM');
    await suite.cmd.xadd(key, '*', 'envelope', JSON.stringify({ event: 'job', data: 1 }));
    await suite.cmd.xreadgroup('GROUP', 'agentd', 'ghost', 'COUNT', 1, 'STREAMS', key, '>');
    await suite.cmd.xtrim(key, 'MAXLEN', 0);
    const t = await startAgent(den, definePlugin({ name: 'w', handlers: { job: () => undefined } }) as Plugin, { durable: { orphanAfter: 0.8 } });
    await waitFor('the trimmed entry counted', () => t.daemon.durable.consumer.counts.trimmed === 1);
    expect(t.lines.some((l) => l['code'] === 'AGENTD_ERR_TRIMMED')).toBe(true);
    await waitFor('its pending id cleared', async () => (await pendingCount(key)) === 0);
    const metrics = await t.daemon.metrics.registry.metrics();
    expect(metrics).toMatch(/agentd_durable_trimmed_total\{kind="tasks"\} 1/);
  });

  it('a graceful stop hands its unfinished den tasks to a live member', async () => {
    const den = uniqueId('den');
    const doneBy: Array<{ agent: string; n: number }> = [];
    const mk = (): Plugin =>
      definePlugin({
        name: 'w',
        handlers: {
          job: async (e, ctx) => {
            await new Promise<void>((resolve, reject) => {
              const timer = setTimeout(resolve, 300);
              ctx.signal.addEventListener('abort', () => {
                clearTimeout(timer);
                reject(new Error('aborted'));
              });
            });
            doneBy.push({ agent: ctx.agent.id, n: (e.data as { n: number }).n });
          },
        },
      }) as Plugin;
    const a = await startAgent(den, mk(), { durable: { concurrency: 1 } });
    for (let n = 0; n < 4; n++) await a.daemon.durable.submit('job', { n });
    await sleep(100);
    const b = await startAgent(den, mk(), { durable: { concurrency: 4 } });
    await a.daemon.close({ drainTimeoutMs: 50 });
    await waitFor('all four done', () => new Set(doneBy.map((d) => d.n)).size === 4, 10_000);
    expect(doneBy.filter((d) => d.agent === b.config.agent.id).length).toBeGreaterThanOrEqual(3);
    await waitFor('acknowledged', async () => (await pendingCount(`den:${den}:tasks`)) === 0);
  });

  it('the inbox of an agent absent longer than durable.retention is dead-lettered; a live agent\'s is kept', async () => {
    const den = uniqueId('den');
    const gone = uniqueId('gone');
    const alive = uniqueId('alive');
    const inbox = `inbox:${gone}`;
    await suite.cmd.hset('global:agent_registry', gone, JSON.stringify({ id: gone, den, status: 'down', downAt: Date.now() - 5_000, lastSeen: Date.now() - 7_000 }));
    await suite.cmd.hset('global:agent_registry', alive, JSON.stringify({ id: alive, den, status: 'down', downAt: Date.now() - 5_000 }));
    await suite.cmd.set(`agent:${alive}:heartbeat`, String(Date.now()), 'EX', 60);
    await suite.cmd.xgroup('CREATE', inbox, 'agentd', '0', 'MKSTREAM');
    await suite.cmd.xadd(inbox, '*', 'envelope', JSON.stringify({ event: 'note', data: 'read, not acked' }));
    await suite.cmd.xreadgroup('GROUP', 'agentd', gone, 'COUNT', 1, 'STREAMS', inbox, '>');
    await suite.cmd.xadd(inbox, '*', 'envelope', JSON.stringify({ event: 'note', data: 'never read' }));
    await suite.cmd.xadd(`inbox:${alive}`, '*', 'envelope', JSON.stringify({ event: 'note', data: 'kept' }));
    const t = await startAgent(den, definePlugin({ name: 'w', handlers: {} }) as Plugin, { durable: { retention: 3 } });
    await waitFor('both entries dead-lettered', async () => (await suite.cmd.xlen(`${inbox}:dead`)) === 2);
    expect(await suite.cmd.exists(inbox)).toBe(0);
    expect(await suite.cmd.xlen(`inbox:${alive}`)).toBe(1);
    const dead = (await suite.cmd.xrange(`${inbox}:dead`, '-', '+')) as Array<[string, string[]]>;
    expect(dead.map(([, f]) => f[f.indexOf('error') + 1])).toEqual([expect.stringContaining('durable.retention'), expect.stringContaining('durable.retention')]);
    expect(dead.map(([, f]) => f[f.indexOf('attempts') + 1])).toEqual(['1', '0']);
    expect(t.lines.some((l) => l['code'] === 'AGENTD_ERR_DEAD_LETTERED' && l['reason'] === 'retention')).toBe(true);
  });

  it('exports acknowledged, redelivered, dead-lettered and ack latency metrics', async () => {
    const den = uniqueId('den');
    const t = await startAgent(den, definePlugin({ name: 'w', handlers: { job: (e) => { if ((e.data as number) < 0) throw new Error('negative'); } } }) as Plugin, { durable: { attempts: 1 } });
    await t.daemon.durable.submit('job', 1);
    await t.daemon.durable.submit('job', -1);
    await waitFor('one acked, one dead', async () => (await suite.cmd.xlen(`den:${den}:dead`)) === 1 && t.daemon.durable.consumer.counts.acked === 1);
    const m = await t.daemon.metrics.registry.metrics();
    expect(m).toMatch(/agentd_durable_acked_total\{kind="tasks"\} 1/);
    expect(m).toMatch(/agentd_durable_dead_lettered_total\{kind="tasks",reason="failed"\} 1/);
    expect(m).toMatch(/agentd_durable_ack_latency_seconds_count\{kind="tasks"\} 1/);
    expect(m).toMatch(/agentd_durable_pending 0/);
  });
});

describe('poison tasks and requests to a dying agent', () => {
  it('an entry delivered durable.attempts times without an acknowledgement is dead-lettered as redelivered, not run again', async () => {
    const den = uniqueId('den');
    const key = `den:${den}:tasks`;
    await suite.cmd.xgroup('CREATE', key, 'agentd', '0', 'MKSTREAM');
    const id = (await suite.cmd.xadd(key, '*', 'envelope', JSON.stringify({ event: 'job', data: 'poison' }))) as string;
    await suite.cmd.xreadgroup('GROUP', 'agentd', 'ghost', 'COUNT', 1, 'STREAMS', key, '>');
    // Three deliveries counted (three members died running it), as many as durable.attempts.
    await suite.cmd.xclaim(key, 'agentd', 'ghost', 0, id, 'RETRYCOUNT', 3);
    let ran = 0;
    const t = await startAgent(den, definePlugin({ name: 'w', handlers: { job: () => void ran++ } }) as Plugin, { durable: { orphanAfter: 0.8 } });
    await waitFor('dead-lettered', async () => (await suite.cmd.xlen(`den:${den}:dead`)) === 1);
    const [[, fields]] = (await suite.cmd.xrange(`den:${den}:dead`, '-', '+')) as [[string, string[]]];
    expect(fields[fields.indexOf('error') + 1]).toContain('delivered 3 times');
    expect(fields[fields.indexOf('attempts') + 1]).toBe('3');
    expect(ran).toBe(0);
    expect(t.lines.some((l) => l['code'] === 'AGENTD_ERR_DEAD_LETTERED' && l['reason'] === 'redelivered')).toBe(true);
  });

  it('a request waiting on an agent that is announced down rejects with agent_down at once', async () => {
    const den = uniqueId('den');
    const hold = gate();
    const server = await startAgent(den, definePlugin({ name: 'slow', handlers: { slow: () => hold.promise } }) as Plugin);
    const client = await startAgent(den, definePlugin({ name: 'none', handlers: {} }) as Plugin);
    const pending = client.daemon.durable.request(server.config.agent.id, 'slow', null, { timeoutMs: 20_000 }).catch((e: unknown) => e);
    await sleep(200);
    const t0 = Date.now();
    await suite.cmd.publish('agent:events:agent_down', JSON.stringify({ event: 'agent_down', data: { agent: server.config.agent.id, den } }));
    const err = (await pending) as RequestError;
    expect(err).toBeInstanceOf(RequestError);
    expect(err.reason).toBe('agent_down');
    expect(Date.now() - t0).toBeLessThan(5_000);
    hold.open();
  });
});

describe('requests from durable handlers', () => {
  it('a durable handler holding the only slot still gets the reply to its own request', async () => {
    const den = uniqueId('den');
    const server = await startAgent(den, definePlugin({ name: 'calc', handlers: { add: (e) => (e.data as number[]).reduce((a, b) => a + b, 0) } }) as Plugin);
    const results: unknown[] = [];
    const asker = await startAgent(den, definePlugin({
      name: 'asker',
      handlers: {
        ask: async (_e, ctx) => {
          results.push(await ctx.request(server.config.agent.id, 'add', [2, 3], { timeoutMs: 20_000 }));
        },
      },
    }) as Plugin, { durable: { concurrency: 1 } });
    await server.daemon.durable.send(asker.config.agent.id, 'ask', null);
    await waitFor('the answer', () => results.length === 1, 5_000);
    expect(results).toEqual([5]);
  });
});

describe('hostile stream entries', () => {
  it('bad envelopes never reach a handler: each is dead-lettered with its reason, the daemon carries on', async () => {
    const den = uniqueId('den');
    const seen: AgentEvent[] = [];
    const t = await startAgent(den, definePlugin({ name: 'rec', handlers: { note: (e) => void seen.push(e) } }) as Plugin);
    const inbox = `inbox:${t.config.agent.id}`;
    await suite.cmd.xadd(inbox, '*', 'envelope', 'not json');
    await suite.cmd.xadd(inbox, '*', 'other', 'no envelope field');
    await suite.cmd.xadd(inbox, '*', 'envelope', '{"event":"note","data":{"__proto__":{"admin":true}}}');
    await suite.cmd.xadd(inbox, '*', 'envelope', '[1,2,3]');
    await suite.cmd.xadd(inbox, '*', 'envelope', JSON.stringify({ event: 'note', data: 'x'.repeat(2_000_000) }));
    await suite.cmd.xadd(inbox, '*', 'envelope', '{"event":"reply","inReplyTo":"nobody","ok":true,"data":{"__proto__":{}}}');
    await suite.cmd.xadd(inbox, '*', 'envelope', JSON.stringify({ event: 'note', data: 'fine' }));
    await waitFor('the good entry', () => seen.length === 1);
    await waitFor('six dead letters', async () => (await suite.cmd.xlen(`${inbox}:dead`)) === 6);
    const dead = (await suite.cmd.xrange(`${inbox}:dead`, '-', '+')) as Array<[string, string[]]>;
    const errors = dead.map(([, f]) => f[f.indexOf('error') + 1]);
    expect(errors.sort()).toEqual(
      ['bad envelope: not_json', 'entry has no envelope field', 'bad envelope: forbidden_key', 'bad envelope: not_object', 'bad envelope: too_large', 'bad envelope: forbidden_key'].sort(),
    );
    expect(seen[0]!.data).toBe('fine');
    await waitFor('all acknowledged', async () => (await pendingCount(inbox)) === 0);
  });
});

describe('durable settings', () => {
  it('refuses a poll slower than orphanAfter / 4 (running handlers would look orphaned), naming both settings', async () => {
    const { loadConfig } = await import('../../src/config/load.ts');
    expect(() => loadConfig({ env: { AGENTD_DURABLE_POLL_INTERVAL: '40' } })).toThrow(/durable\.pollInterval: must be at most durable\.orphanAfter \/ 4 \(got pollInterval 40 s with orphanAfter 120 s\)/);
    expect(() => loadConfig({ env: { AGENTD_DURABLE_ATTEMPTS: '0' } })).toThrow(/durable\.attempts/);
    expect(loadConfig({ env: {} }).config.durable).toMatchObject({ enabled: true, attempts: 5, maxLen: 10_000, pollInterval: 1, orphanAfter: 120, retention: 86_400 });
  });
});
