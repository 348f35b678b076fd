import type { RedisOptions } from 'ioredis';
import type { AgentdConfig } from '../config/schema.ts';
import { parseHostPort } from '../config/formats.ts';

/**
 * ioredis's own Sentinel support, for redis.sentinels: ask the Sentinels for
 * the primary of redis.sentinelName, connect there, and ask again on every
 * reconnect.
 *
 * - `failoverDetector`: ioredis also subscribes to `+switch-master` on the
 *   Sentinels and drops its connection when the primary changes. Without it
 *   ioredis relies on the old primary closing its clients' connections
 *   (ioredis #1314): a primary that hangs, or a network that drops packets
 *   instead of resetting, would keep a daemon talking to the old primary.
 *   Its disconnect waits `disconnectTimeout` for the old primary to close the
 *   socket; a hung one never does, so that is 100 ms here, not 2 s.
 * - A subscriber that stays connected but silent after the switch (ioredis
 *   #420) cannot go unnoticed: after every reconnect the subscription is
 *   confirmed by a probe the daemon publishes to itself (src/bus/subscriber.ts).
 * - The primary's `READONLY` reply (a demoted primary) makes ioredis reconnect
 *   through the Sentinels (`reconnectOnError`), so a write after a switch
 *   finds the new primary.
 */
export function sentinelOptions(config: AgentdConfig, base: RedisOptions): RedisOptions {
  const sentinels = config.redis.sentinels.map((entry) => parseHostPort(entry)).filter((x): x is { host: string; port: number } => x !== undefined);
  return {
    sentinels,
    name: config.redis.sentinelName,
    role: 'master',
    failoverDetector: true,
    // The detector's disconnect ends the socket and waits this long for the peer before destroying it:
    // a hung primary never answers, and ioredis's default (2 s) would all be added to the failover.
    disconnectTimeout: 100,
    // The Sentinels themselves: the same backoff as the data connection, never giving up.
    sentinelRetryStrategy: base.retryStrategy as (times: number) => number,
    ...(base.tls ? { enableTLSForSentinelMode: true, sentinelTLS: base.tls } : {}),
    reconnectOnError: (err: Error) => (/^READONLY\b/.test(err.message) ? 1 : false),
  };
}
