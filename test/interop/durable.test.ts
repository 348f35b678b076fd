import { execFile, spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import type { AgentEvent } from '../../src/bus/envelope.ts';
import { definePlugin, type Plugin } from '../../src/plugins/types.ts';
import { makeDaemon, redisSuite } from '../helpers/inproc.ts';
import { uniqueId, waitFor } from '../helpers/util.ts';

const run = promisify(execFile);
const SCRIPT = new URL('./durable_agent.py', import.meta.url).pathname;
const suite = redisSuite();

async function py(...args: string[]): Promise<unknown> {
  const { stdout } = await run('/usr/bin/python3', [SCRIPT, suite.redis.url, ...args]);
  return JSON.parse(stdout) as unknown;
}

const FAST = { durable: { pollInterval: 0.2 } };

describe('durable messages with a Python agent (redis-py)', () => {
  it('Python sends to an inbox and submits a den task; agentd handles both', async () => {
    const seen: AgentEvent[] = [];
    const plugin = definePlugin({ name: 'rec', handlers: { note: (e) => void seen.push(e), job: (e) => void seen.push(e) } }) as Plugin;
    const t = await suite.start(makeDaemon(suite.redis.url, FAST, [plugin]));
    await py('send', t.config.agent.id, 'note', '{"text": "from python"}');
    await py('submit', t.config.agent.den, 'job', '{"n": 7}');
    await waitFor('both entries', () => seen.length === 2);
    const note = seen.find((e) => e.event === 'note')!;
    const job = seen.find((e) => e.event === 'job')!;
    expect(note).toMatchObject({ data: { text: 'from python' }, channel: `inbox:${t.config.agent.id}`, delivery: { kind: 'inbox', attempt: 1 } });
    expect(job).toMatchObject({ data: { n: 7 }, channel: `den:${t.config.agent.den}:tasks`, delivery: { kind: 'tasks', attempt: 1 } });
  });

  it('Python requests, agentd\'s handler answers, Python reads the reply', async () => {
    const plugin = definePlugin({ name: 'calc', handlers: { add: (e) => ({ sum: (e.data as number[]).reduce((a, b) => a + b, 0) }) } }) as Plugin;
    const t = await suite.start(makeDaemon(suite.redis.url, FAST, [plugin]));
    const reply = (await py('request', uniqueId('py'), t.config.agent.id, 'add', '[1, 2, 39]', '5000')) as Record<string, unknown>;
    expect(reply).toMatchObject({ event: 'reply', ok: true, data: { sum: 42 }, source: t.config.agent.id });
  });

  it('agentd requests, a Python agent replies', async () => {
    const me = uniqueId('pyserver');
    const child = spawn('/usr/bin/python3', [SCRIPT, suite.redis.url, 'serve', me, '1'], { stdio: ['ignore', 'pipe', 'inherit'] });
    const out: string[] = [];
    createInterface({ input: child.stdout }).on('line', (l) => out.push(l));
    await waitFor('the Python agent serving', () => out.length >= 1);
    const t = await suite.start(makeDaemon(suite.redis.url, FAST, [definePlugin({ name: 'none', handlers: {} }) as Plugin]));
    const value = await t.daemon.durable.request(me, 'double', 21, { timeoutMs: 5_000 });
    expect(value).toEqual({ doubled: 42, by: me });
    await new Promise((r) => child.once('exit', r));
  });
});
