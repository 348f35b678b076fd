import { randomUUID } from 'node:crypto';
import type { Redis } from 'ioredis';
import { AgentdError } from '../errors.ts';
import { eventChannel } from '../redis/keys.ts';
import type { AgentInfo } from '../plugins/types.ts';
import type { KeyRing } from '../security/keys.ts';
import { sealEnvelope } from '../security/signing.ts';

export interface Envelope {
  readonly event: string;
  readonly data: unknown;
  readonly id: string;
  readonly source: string;
  readonly ts: number;
  readonly den: string;
}

/** The seed's `{event, data}` plus the metadata agentd adds. */
export function makeEnvelope(type: string, data: unknown, from: AgentInfo, now: number = Date.now()): Envelope {
  if (typeof type !== 'string' || type.length === 0 || type.length > 256 || /[\s*?[\]]/.test(type)) {
    throw new AgentdError('AGENTD_ERR_USAGE', `event type must be 1-256 characters without spaces or glob characters (got ${JSON.stringify(type)})`);
  }
  return { event: type, data: data === undefined ? null : data, id: randomUUID(), source: from.id, ts: now, den: from.den };
}

/**
 * Publishes an event on `agent:events:<type>` (signed when `keys` is given);
 * resolves with the number of subscribers that received it.
 */
export function publishEvent(redis: Redis, type: string, data: unknown, from: AgentInfo, keys?: KeyRing): Promise<number> {
  const envelope = makeEnvelope(type, data, from);
  const channel = eventChannel(type);
  return redis.publish(channel, sealEnvelope(envelope, channel, keys));
}
