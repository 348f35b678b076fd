import { eventChannel } from '../redis/keys.ts';

/** The default of events.patterns: every event of the fleet. */
export const DEFAULT_EVENT_PATTERNS: readonly string[] = ['agent:events:*'];

/** The membership types the daemon itself counts (agentd_agent_down_total and friends), always received. */
export const OWN_EVENT_TYPES: readonly string[] = ['agent_online', 'agent_offline', 'agent_down'];

/**
 * The exact channels to SUBSCRIBE to instead of PSUBSCRIBE-ing to the
 * patterns, or undefined to keep the patterns: with events.subscribe = auto,
 * the default patterns, and no '*' handler, the channels of the handled types
 * and of agentd's own membership types. A pattern costs Redis a match per
 * published message per pattern subscriber, and delivers every event to
 * every daemon; exact channels cost a hash lookup and deliver each event only
 * to the daemons that handle it.
 */
export function exactEventChannels(
  events: { readonly subscribe: 'auto' | 'pattern'; readonly patterns: readonly string[] },
  bindings: readonly { readonly on: string }[],
): string[] | undefined {
  if (events.subscribe !== 'auto') return undefined;
  const defaults = events.patterns.length === DEFAULT_EVENT_PATTERNS.length && events.patterns.every((p, i) => p === DEFAULT_EVENT_PATTERNS[i]);
  if (!defaults) return undefined;
  if (bindings.some((b) => b.on === '*')) return undefined;
  const types = new Set([...OWN_EVENT_TYPES, ...bindings.map((b) => b.on)]);
  return [...types].sort().map(eventChannel);
}
