/**
 * Every Redis key and channel name agentd reads or writes. These names are a
 * contract with agents written in other languages: change nothing here
 * without changing docs/keys.md and the interop tests.
 */

export const REGISTRY_KEY = 'global:agent_registry';
export const EVENT_CHANNEL_PREFIX = 'agent:events:';

export const HEARTBEAT_PREFIX = 'agent:';
export const HEARTBEAT_SUFFIX = ':heartbeat';

export function heartbeatKey(agentId: string): string {
  return HEARTBEAT_PREFIX + agentId + HEARTBEAT_SUFFIX;
}

/** The agent id in a heartbeat key, or undefined for any other key. */
export function agentOfHeartbeatKey(key: string): string | undefined {
  if (!key.startsWith(HEARTBEAT_PREFIX) || !key.endsWith(HEARTBEAT_SUFFIX)) return undefined;
  const id = key.slice(HEARTBEAT_PREFIX.length, -HEARTBEAT_SUFFIX.length);
  return id.length > 0 && !id.includes(':') ? id : undefined;
}

/**
 * The keyspace-notification pattern for heartbeat keys of database `db`
 * (notify-keyspace-events with K and x): the channel names the key, the
 * message is the event (`expired`). Only heartbeat keys match, so the
 * expiries of every other key in the database never reach the daemon.
 */
export function heartbeatKeyspacePattern(db: number): string {
  return `__keyspace@${db}__:${HEARTBEAT_PREFIX}*${HEARTBEAT_SUFFIX}`;
}

/** The key a keyspace-notification channel of database `db` is about, or undefined for another channel. */
export function keyOfKeyspaceChannel(db: number, channel: string): string | undefined {
  const prefix = `__keyspace@${db}__:`;
  return channel.startsWith(prefix) ? channel.slice(prefix.length) : undefined;
}

export function denMembersKey(den: string): string {
  return `den:${den}:online_agents`;
}

/**
 * The sweeper lease of a den (agentd's own, not the seed's): the holder's
 * token, with a TTL of a few sweep intervals. Only its holder sweeps the den.
 */
export function denSweeperKey(den: string): string {
  return `den:${den}:sweeper`;
}

export function eventChannel(eventType: string): string {
  return EVENT_CHANNEL_PREFIX + eventType;
}

/** A private channel the daemon publishes to itself to prove its subscriber connection is live. */
export function probeChannel(agentId: string, nonce: string): string {
  return `agentd:probe:${agentId}:${nonce}`;
}

/** Short-term memory keys (the reference article's `agent:<id>:<category>:<identifier>` scheme). */
export const memoryKeys = {
  messages: (agentId: string, sessionId: string): string => `agent:${agentId}:session:${sessionId}:messages`,
  topic: (agentId: string, topic: string): string => `agent:${agentId}:memory:${topic}`,
  llmCache: (agentId: string, hexDigest: string): string => `agent:${agentId}:llm_cache:${hexDigest}`,
  rateLimit: (agentId: string, window: string): string => `agent:${agentId}:ratelimit:${window}`,
  taskStatus: (agentId: string, taskId: string): string => `agent:${agentId}:task:${taskId}:status`,
  prefs: (agentId: string, userId: string): string => `agent:${agentId}:prefs:${userId}`,
  /** SCAN pattern for every key of one agent, with glob characters in the id escaped. */
  allOf: (agentId: string): string => `agent:${agentId.replace(/[*?[\]\\]/g, '\\$&')}:*`,
};

/**
 * Durable messages (Redis Streams, contract.md "Durable messages"): outside
 * the `agent:<id>:` prefix on purpose, so the seed's clear_agent_memory
 * never deletes pending work. Each stream's doorbell channel has the same name.
 */
export const DURABLE_GROUP = 'agentd';
export const ENVELOPE_FIELD = 'envelope';

export function inboxKey(agentId: string): string {
  return `inbox:${agentId}`;
}

export function denTasksKey(den: string): string {
  return `den:${den}:tasks`;
}

/** The dead-letter stream of an inbox or task stream: inbox:<id>:dead, den:<den>:dead. */
export function deadLetterKey(stream: string): string {
  return stream.startsWith('inbox:') ? `${stream}:dead` : stream.replace(/:tasks$/, ':dead');
}

/** The stream a dead-letter stream belongs to (the inverse of deadLetterKey), or undefined. */
export function streamOfDeadLetter(dead: string): string | undefined {
  if (/^inbox:[^:]+:dead$/.test(dead)) return dead.slice(0, -':dead'.length);
  if (/^den:[^:]+:dead$/.test(dead)) return dead.replace(/:dead$/, ':tasks');
  return undefined;
}
