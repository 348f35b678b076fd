/**
 * Every Redis key and channel name agentd reads or writes. These names are a
 * contract with agents written in other languages: change nothing here
 * without changing docs/keys.md and the interop tests.
 */

export const REGISTRY_KEY = 'global:agent_registry';
export const EVENT_CHANNEL_PREFIX = 'agent:events:';

export function heartbeatKey(agentId: string): string {
  return `agent:${agentId}:heartbeat`;
}

export function denMembersKey(den: string): string {
  return `den:${den}:online_agents`;
}

export function eventChannel(eventType: string): string {
  return EVENT_CHANNEL_PREFIX + eventType;
}

/** A private channel the daemon publishes to itself to prove its subscriber connection is live. */
export function probeChannel(agentId: string, nonce: string): string {
  return `agentd:probe:${agentId}:${nonce}`;
}
