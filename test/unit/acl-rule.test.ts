import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { agentAclRule, cliAclRule } from '../../src/cli/acl.ts';
import { loadConfig } from '../../src/config/load.ts';

const config = loadConfig({ env: {}, args: [], file: undefined }).config;

describe('agentd acl', () => {
  it('docs/security.md prints the line the code derives for agent a1 in den blue', () => {
    const doc = readFileSync(new URL('../../docs/security.md', import.meta.url), 'utf8');
    const line = doc.split('\n').find((l) => l.trim().startsWith('ACL SETUSER agent-a1 '))?.trim();
    expect(line).toBe(agentAclRule(config, 'a1', 'blue'));
  });

  it('writes only its own keys, reads peers\' heartbeats, needs a valid id and den', () => {
    const words = agentAclRule(config, 'a1', 'blue').split(' ');
    expect(words.filter((w) => w.startsWith('~') || w.startsWith('%'))).toEqual(['~agent:a1:*', '~inbox:a1', '~den:blue:online_agents', '~global:agent_registry', '%R~agent:*:heartbeat', '~den:blue:sweeper', '~inbox:*', '~den:blue:tasks', '~den:blue:dead']);
    expect(words).not.toContain('+hvals');
    expect(() => agentAclRule(config, undefined, 'blue')).toThrow(/acl needs --agent ID/);
    expect(() => agentAclRule(config, 'a*', 'blue')).toThrow(/--agent ID/);
    expect(() => agentAclRule(config, 'a1', undefined)).toThrow(/--den DEN/);
    const cli = cliAclRule(config).split(' ');
    expect(cli).not.toContain('+publish');
    expect(cli.filter((w) => w.startsWith('~'))).toEqual([]);
  });

  it('follows the database the URL selects: SELECT for the CLI, that database\'s keyspace channel for the agent', () => {
    const db3 = loadConfig({ env: { AGENTD_REDIS_URL: 'redis://127.0.0.1:6379/3' }, args: [], file: undefined }).config;
    expect(cliAclRule(db3).split(' ')).toContain('+select');
    expect(cliAclRule(config).split(' ')).not.toContain('+select');
    expect(agentAclRule(db3, 'a1', 'blue')).toContain('&__keyspace@3__:agent:*:heartbeat');
    expect(agentAclRule(config, 'a1', 'blue')).toContain('&__keyspace@0__:agent:*:heartbeat');
  });
});
