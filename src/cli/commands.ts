import type { Writable } from 'node:stream';
import type { Redis } from 'ioredis';
import { makeEnvelope } from '../bus/publish.ts';
import { redactConfig, redactUrl } from '../config/load.ts';
import type { AgentdConfig } from '../config/schema.ts';
import { ID_PATTERN } from '../config/schema.ts';
import { AgentdError, describeError } from '../errors.ts';
import type { RegistryRecord } from '../presence/presence.ts';
import { createClient, redisOptions } from '../redis/connection.ts';
import { REGISTRY_KEY, denMembersKey, eventChannel, heartbeatKey } from '../redis/keys.ts';

export interface Io {
  readonly stdout: Writable;
  readonly stderr: Writable;
}

/** A short-lived client for one CLI command: no retries, so an unreachable Redis fails fast. */
async function connectOnce(config: AgentdConfig): Promise<Redis> {
  const client = createClient({
    ...redisOptions(config, 'command'),
    connectionName: `agentd-cli:${config.agent.id}`,
    retryStrategy: () => null,
  });
  // connect() rejects with a generic "Connection is closed"; the 'error' event has the cause.
  let cause: unknown;
  client.on('error', (err: unknown) => {
    cause ??= err;
  });
  try {
    await client.connect();
    return client;
  } catch (err) {
    client.disconnect();
    throw new AgentdError('AGENTD_ERR_REDIS', `cannot reach redis at ${redactUrl(config.redis.url)}: ${describeError(cause ?? err)}`);
  }
}

export interface MemberRow {
  readonly id: string;
  readonly den: string;
  readonly host: string | null;
  readonly status: string | null;
  /** Heartbeat TTL left in ms; null when the key is gone. */
  readonly ttlMs: number | null;
  readonly lastSeen: number | null;
  readonly pid: number | null;
  readonly version: string | null;
}

export async function listMembers(redis: Redis, den: string): Promise<MemberRow[]> {
  const ids = (await redis.smembers(denMembersKey(den))).sort();
  if (ids.length === 0) return [];
  const pipeline = redis.pipeline();
  for (const id of ids) pipeline.pttl(heartbeatKey(id));
  pipeline.hmget(REGISTRY_KEY, ...ids);
  const replies = (await pipeline.exec()) ?? [];
  const records = (replies[ids.length]?.[1] as (string | null)[] | undefined) ?? [];
  return ids.map((id, i) => {
    const pttl = replies[i]?.[1] as number | undefined;
    let rec: Partial<RegistryRecord> = {};
    try {
      rec = records[i] ? (JSON.parse(records[i]) as Partial<RegistryRecord>) : {};
    } catch {
      // A record another program wrote badly; show what we can.
    }
    return {
      id,
      den,
      host: rec.host ?? null,
      status: rec.status ?? null,
      ttlMs: typeof pttl === 'number' && pttl >= 0 ? pttl : null,
      lastSeen: rec.lastSeen ?? null,
      pid: rec.pid ?? null,
      version: rec.version ?? null,
    };
  });
}

function table(rows: string[][]): string {
  const widths = rows[0]?.map((_, c) => Math.max(...rows.map((r) => (r[c] ?? '').length))) ?? [];
  return rows.map((r) => r.map((cell, c) => cell.padEnd(widths[c] ?? 0)).join('  ').trimEnd()).join('\n');
}

function ago(ms: number | null, now: number): string {
  if (ms === null) return '-';
  const s = Math.max(0, Math.round((now - ms) / 1000));
  return s < 120 ? `${s}s ago` : `${Math.round(s / 60)}m ago`;
}

export async function membersCommand(config: AgentdConfig, den: string | undefined, json: boolean, io: Io): Promise<number> {
  const target = den ?? config.agent.den;
  if (!ID_PATTERN.test(target)) throw new AgentdError('AGENTD_ERR_USAGE', `--den: must be 1-128 characters of A-Z a-z 0-9 . _ - (got ${JSON.stringify(target)})`);
  const redis = await connectOnce(config);
  try {
    const rows = await listMembers(redis, target);
    if (json) {
      io.stdout.write(`${JSON.stringify(rows)}\n`);
      return 0;
    }
    if (rows.length === 0) {
      io.stdout.write(`no agents online in den ${target}\n`);
      return 0;
    }
    const now = Date.now();
    io.stdout.write(
      `${table([
        ['AGENT', 'HOST', 'STATUS', 'TTL', 'LAST BEAT'],
        ...rows.map((r) => [r.id, r.host ?? '-', r.status ?? '-', r.ttlMs === null ? 'expired' : `${(r.ttlMs / 1000).toFixed(1)}s`, ago(r.lastSeen, now)]),
      ])}\n`,
    );
    return 0;
  } finally {
    redis.disconnect();
  }
}

export async function publishCommand(config: AgentdConfig, positionals: readonly string[], json: boolean, io: Io): Promise<number> {
  const [type, dataText, ...extra] = positionals;
  if (type === undefined) throw new AgentdError('AGENTD_ERR_USAGE', 'publish needs an EVENT type: agentd publish EVENT [JSON]');
  if (extra.length > 0) throw new AgentdError('AGENTD_ERR_USAGE', `publish takes EVENT and one JSON argument; quote the JSON (extra: ${JSON.stringify(extra[0])})`);
  let data: unknown = null;
  if (dataText !== undefined) {
    try {
      data = JSON.parse(dataText);
    } catch (err) {
      throw new AgentdError('AGENTD_ERR_USAGE', `JSON argument does not parse: ${(err as Error).message}`);
    }
  }
  const envelope = makeEnvelope(type, data, { id: config.agent.id, den: config.agent.den });
  const redis = await connectOnce(config);
  try {
    const receivers = await redis.publish(eventChannel(type), JSON.stringify(envelope));
    io.stdout.write(
      json
        ? `${JSON.stringify({ channel: eventChannel(type), id: envelope.id, receivers })}\n`
        : `published ${type} (id ${envelope.id}) on ${eventChannel(type)} to ${receivers} subscriber${receivers === 1 ? '' : 's'}\n`,
    );
    return 0;
  } finally {
    redis.disconnect();
  }
}

export function configCommand(config: AgentdConfig, io: Io): number {
  io.stdout.write(`${JSON.stringify(redactConfig(config), null, 2)}\n`);
  return 0;
}
