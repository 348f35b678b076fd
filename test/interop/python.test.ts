import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import type { AgentEvent } from '../../src/bus/envelope.ts';
import { AgentMemory } from '../../src/memory/memory.ts';
import { definePlugin } from '../../src/plugins/types.ts';
import { makeDaemon, redisSuite } from '../helpers/inproc.ts';
import { uniqueId, waitFor } from '../helpers/util.ts';

const run = promisify(execFile);
const SCRIPT = new URL('./seed_agent.py', import.meta.url).pathname;

const suite = redisSuite();

async function py(agent: string, ...args: string[]): Promise<unknown> {
  const { stdout } = await run('/usr/bin/python3', [SCRIPT, suite.redis.url, agent, ...args]);
  return JSON.parse(stdout) as unknown;
}

describe('interop with a Python agent (redis-py, the article conventions)', () => {
  it('Python writes messages, agentd reads them; agentd appends, Python reads them', async () => {
    const agent = uniqueId('py');
    const mem = new AgentMemory(suite.cmd, agent);
    await py(agent, 'add-message', 's1', 'user', "What's the weather in Nashville?");
    await py(agent, 'add-message', 's1', 'assistant', 'Currently 68°F and sunny in Nashville.');
    await mem.addMessage('s1', { role: 'user', content: 'Thanks — and tomorrow? 🌦' });
    const expected = [
      { role: 'user', content: "What's the weather in Nashville?" },
      { role: 'assistant', content: 'Currently 68°F and sunny in Nashville.' },
      { role: 'user', content: 'Thanks — and tomorrow? 🌦' },
    ];
    expect(await mem.getContext('s1')).toEqual(expected);
    expect(await py(agent, 'context', 's1')).toEqual(expected);
  });

  it('stores messages byte for byte as the Python snippet does', async () => {
    const agent = uniqueId('py');
    const content = 'Grüße, "quotes", back\\slash, tab\there, emoji 🙂, newline\nend';
    await py(agent, 'add-message', 'py', 'user', content);
    await new AgentMemory(suite.cmd, agent).addMessage('js', { role: 'user', content });
    const [fromPython] = (await py(agent, 'raw-messages', 'py')) as string[];
    const [fromAgentd] = await suite.cmd.lrange(`agent:${agent}:session:js:messages`, 0, -1);
    expect(fromAgentd).toBe(fromPython);
  });

  it('shares the LLM cache both ways (same sha256 key)', async () => {
    const agent = uniqueId('py');
    const mem = new AgentMemory(suite.cmd, agent);
    const prompt = 'Summarise: naïve café ☕';
    expect(await py(agent, 'cache-key', prompt, 'claude-3-5-sonnet')).toBe(mem.cacheKey(prompt, 'claude-3-5-sonnet'));
    await py(agent, 'cache-set', prompt, 'claude-3-5-sonnet', 'from python');
    expect(await mem.getCached(prompt, 'claude-3-5-sonnet')).toBe('from python');
    let computed = 0;
    expect(await mem.cached(prompt, 'claude-3-5-sonnet', async () => String(++computed))).toBe('from python');
    expect(computed).toBe(0);
    await mem.setCached('second prompt', 'gpt', 'from agentd');
    expect(await py(agent, 'cache-get', 'second prompt', 'gpt')).toBe('from agentd');
  });

  it('shares task status both ways', async () => {
    const agent = uniqueId('py');
    const mem = new AgentMemory(suite.cmd, agent);
    await py(agent, 'task-set', 'job-1', 'done');
    expect(await mem.getTaskStatus('job-1')).toBe('done');
    await mem.setTaskStatus('job-2', 'running');
    expect(await py(agent, 'task-get', 'job-2')).toBe('running');
  });

  it('the article snippet clears what agentd wrote; agentd clears what Python wrote', async () => {
    const agent = uniqueId('py');
    const mem = new AgentMemory(suite.cmd, agent);
    await mem.addMessage('s', { role: 'user', content: 'x' });
    await mem.setTaskStatus('t', 'done');
    expect(await py(agent, 'clear')).toBe(2);
    await py(agent, 'add-message', 's', 'user', 'y');
    await py(agent, 'task-set', 't', 'running');
    expect(await mem.clear()).toBe(2);
  });

  it('a Python publisher reaches an agentd plugin', async () => {
    const seen: AgentEvent[] = [];
    const t = makeDaemon(suite.redis.url, {}, [definePlugin({ name: 'rec', handlers: { new_message: (e) => void seen.push(e) } })]);
    suite.track(t.daemon);
    await t.daemon.start();
    expect(await py('publisher', 'publish', 'new_message', '{"user_id": "usr-123", "text": "Hello!"}')).toBeGreaterThanOrEqual(1);
    await waitFor('the event from Python', () => seen.length === 1);
    expect(seen[0]).toEqual({ event: 'new_message', data: { user_id: 'usr-123', text: 'Hello!' }, channel: 'agent:events:new_message' });
  });
});
