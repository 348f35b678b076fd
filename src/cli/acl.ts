import { AgentdError } from '../errors.ts';
import type { AgentdConfig } from '../config/schema.ts';
import { ID_PATTERN } from '../config/schema.ts';
import { REGISTRY_KEY, deadLetterKey, denMembersKey, denSweeperKey, denTasksKey, eventChannel, heartbeatKey, heartbeatKeyspacePattern, inboxKey } from '../redis/keys.ts';
import { redisDb } from '../redis/connection.ts';
import { neededCommands } from '../redis/preflight.ts';

/**
 * `agentd acl`: the ACL SETUSER line for one agent (least privilege on a
 * shared Redis, docs/security.md), or with --cli for the CLI's read-only
 * commands. Redis 7: `resetchannels`, `%R~` read-only key patterns.
 */

/** What ctx.memory runs (docs/memory.md), on the agent's own keys only. */
const MEMORY_COMMANDS = ['get', 'set', 'del', 'unlink', 'rpush', 'ltrim', 'llen', 'lrange', 'expire', 'incr', 'pttl', 'hset', 'hgetall', 'scan', 'evalsha', 'eval'];

function checkId(what: string, id: string | undefined): string {
  if (id === undefined || !ID_PATTERN.test(id)) {
    throw new AgentdError('AGENTD_ERR_USAGE', `acl needs ${what}: 1-128 characters of A-Z a-z 0-9 . _ - (got ${JSON.stringify(id ?? '')})`);
  }
  return id;
}

/**
 * One agent's user: the daemon's commands and ctx.memory's; write access only
 * to agent:<id>:*, inbox:<id> and its den's set (its watcher removes dead
 * peers from it) and the registry hash (its own record — and, when reaping, a
 * dead peer's: Redis cannot limit a hash to some fields); read-only access to
 * every heartbeat (the watcher's EXISTS); its event channels, its own probe
 * channels and the heartbeat keyspace pattern (granted literally).
 */
export function agentAclRule(config: AgentdConfig, agentId: string | undefined, den: string | undefined, user?: string): string {
  const id = checkId('--agent ID', agentId);
  const d = checkId('--den DEN', den);
  const cfg = { ...config, agent: { id, den: d }, watch: { ...config.watch, dens: [] as string[] } } as AgentdConfig;
  const commands = new Set<string>(['+multi', '+exec', '+discard', '+ping', '+client|setname', '+quit']);
  for (const c of neededCommands(cfg, `agentd:probe:${id}:x`)) commands.add(`+${(c.args[0] ?? '').toLowerCase()}`);
  for (const c of MEMORY_COMMANDS) commands.add(`+${c}`);
  commands.delete('+hvals');
  const keys = [`~agent:${id}:*`, `~inbox:${id}`, `~${denMembersKey(d)}`, `~${REGISTRY_KEY}`, `%R~${heartbeatKey('*')}`];
  if (config.watch.enabled && config.watch.sweeper === 'lease') keys.push(`~${denSweeperKey(d)}`);
  const channels = [...new Set([...config.events.patterns, eventChannel('*'), `agentd:probe:${id}:*`])];
  if (config.durable.enabled) {
    // Sending and replying append to other agents' inboxes (and ring their doorbells); the den's tasks
    // and dead letters are the den's. Redis cannot tell XADD from XACK by key: docs/security.md.
    keys.push(`~${inboxKey('*')}`, `~${denTasksKey(d)}`, `~${deadLetterKey(denTasksKey(d))}`);
    channels.push(inboxKey('*'), denTasksKey(d));
  }
  if (config.watch.enabled && config.watch.notifications !== 'off') channels.push(heartbeatKeyspacePattern(redisDb(config.redis.url)));
  return [`ACL SETUSER ${user ?? `agent-${id}`} on >PASSWORD resetkeys resetchannels -@all`, ...commands, ...keys, ...channels.map((c) => `&${c}`)].join(' ');
}

/** The CLI's read-only commands (members, watch, memory context, memory stats): read keys, subscribe. */
export function cliAclRule(config: AgentdConfig, user = 'agentd-cli'): string {
  const commands = ['+ping', '+client|setname', '+quit', '+info', '+smembers', '+pttl', '+hgetall', '+hget', '+lrange', '+psubscribe', '+punsubscribe'];
  if (redisDb(config.redis.url) !== 0) commands.push('+select');
  const keys = ['%R~agent:*', '%R~den:*', `%R~${REGISTRY_KEY}`];
  const channels = [...new Set([...config.events.patterns, eventChannel('*')])];
  return [`ACL SETUSER ${user} on >PASSWORD resetkeys resetchannels -@all`, ...commands, ...keys, ...channels.map((c) => `&${c}`)].join(' ');
}
