import { loadKeys } from '../security/keys.ts';
import { sealEnvelope } from '../security/signing.ts';
import { createInterface } from 'node:readline/promises';
import type { Readable, Writable } from 'node:stream';
import type { Redis } from 'ioredis';
import { makeEnvelope } from '../bus/publish.ts';
import { redactConfig, redactUrl } from '../config/load.ts';
import { loadPlugins } from '../plugins/loader.ts';
import type { AgentdConfig } from '../config/schema.ts';
import { ID_PATTERN } from '../config/schema.ts';
import { AgentdError, describeError } from '../errors.ts';
import { AgentMemory, clearAgentMemory, redisMemoryStats } from '../memory/memory.ts';
import { parseRecord, type UntrustedRecord } from '../presence/record.ts';
import { createClient, redisOptions } from '../redis/connection.ts';
import { REGISTRY_KEY, denMembersKey, eventChannel, heartbeatKey } from '../redis/keys.ts';

export interface Io {
  readonly stdout: Writable;
  readonly stderr: Writable;
  readonly stdin?: Readable & { isTTY?: boolean };
}

/** A short-lived client for one CLI command: no retries, so an unreachable Redis fails fast. */
export async function connectOnce(config: AgentdConfig): Promise<Redis> {
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
  /** When a watcher reported it down (down agents only). */
  readonly downAt?: number;
}

/** The den's online members (from its set) and its agents marked down in the registry. */
export async function listMembers(redis: Redis, den: string): Promise<MemberRow[]> {
  const ids = (await redis.smembers(denMembersKey(den))).sort();
  const pipeline = redis.pipeline();
  for (const id of ids) pipeline.pttl(heartbeatKey(id));
  pipeline.hgetall(REGISTRY_KEY);
  const replies = (await pipeline.exec()) ?? [];
  const registry = (replies[ids.length]?.[1] as Record<string, string> | undefined) ?? {};
  // Fields of the wrong type (records other programs wrote) are shown as absent: printing them could fail.
  const str = (v: unknown): string | null => (typeof v === 'string' ? v : null);
  const num = (v: unknown): number | null => (typeof v === 'number' && Number.isFinite(v) ? v : null);
  const row = (id: string, rec: UntrustedRecord, pttl: unknown, status: string | null): MemberRow => ({
    id,
    den,
    host: str(rec.host),
    status,
    ttlMs: typeof pttl === 'number' && pttl >= 0 ? pttl : null,
    lastSeen: num(rec.lastSeen),
    pid: num(rec.pid),
    version: str(rec.version),
    ...(typeof rec.downAt === 'number' ? { downAt: rec.downAt } : {}),
  });
  const online = ids.map((id, i) => {
    const rec = parseRecord(registry[id]);
    return row(id, rec, replies[i]?.[1], typeof rec.status === 'string' ? rec.status : 'online');
  });
  const members = new Set(ids);
  const down = Object.entries(registry)
    .filter(([id]) => !members.has(id))
    .map(([id, raw]) => [id, parseRecord(raw)] as const)
    .filter(([, rec]) => rec.den === den && rec.status === 'down')
    .map(([id, rec]) => row(id, rec, null, 'down'))
    .sort((a, b) => a.id.localeCompare(b.id));
  return [...online, ...down];
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
      io.stdout.write(`no agents in den ${target}\n`);
      return 0;
    }
    const now = Date.now();
    io.stdout.write(
      `${table([
        ['AGENT', 'HOST', 'STATUS', 'TTL', 'LAST BEAT'],
        ...rows.map((r) => [r.id, r.host ?? '-', r.status ?? '-', r.ttlMs === null ? '-' : `${(r.ttlMs / 1000).toFixed(1)}s`, ago(r.lastSeen, now)]),
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
    const keys = config.security.signing === 'off' ? undefined : loadKeys(config.security.keysFile);
    const receivers = await redis.publish(eventChannel(type), sealEnvelope(envelope, eventChannel(type), keys));
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

/**
 * Prints the effective configuration. Imports each plugin module and checks
 * its shape first (as `run` does, without calling setup), so that a plugin
 * that cannot load fails here too, with exit 2.
 */
export async function configCommand(config: AgentdConfig, io: Io): Promise<number> {
  await loadPlugins(config.plugins, config.lifecycle.setupTimeoutMs);
  io.stdout.write(`${JSON.stringify(redactConfig(config), null, 2)}\n`);
  return 0;
}

/** JSON text of a value from the network; too deep for JSON.stringify (which recurses) is said so, not thrown. */
function safeJson(value: unknown): string {
  try {
    return JSON.stringify(value) ?? 'null';
  } catch {
    return '(too deep to show)';
  }
}

function summary(data: unknown): string {
  const text = safeJson(data);
  return text.length > 200 ? `${text.slice(0, 197)}...` : text;
}

/** One line for one event, as `agentd watch` prints it. */
export function describeEvent(channel: string, raw: string): { den: string | undefined; line: string } {
  let env: Record<string, unknown>;
  try {
    const v: unknown = JSON.parse(raw);
    if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new Error('not an object');
    env = v as Record<string, unknown>;
  } catch {
    return { den: undefined, line: `${new Date().toISOString()}  (invalid message on ${channel}, ${raw.length} bytes)` };
  }
  const type = typeof env['event'] === 'string' ? env['event'] : '(no event)';
  const data = env['data'] as Record<string, unknown> | null | undefined;
  const dataDen = data !== null && typeof data === 'object' && typeof data['den'] === 'string' ? data['den'] : undefined;
  const den = dataDen ?? (typeof env['den'] === 'string' ? env['den'] : undefined);
  const time = new Date(typeof env['ts'] === 'number' ? env['ts'] : Date.now()).toISOString();
  let detail: string;
  if ((type === 'agent_online' || type === 'agent_offline' || type === 'agent_down') && data && typeof data === 'object') {
    const first = ['agent', 'den', 'host'];
    detail = Object.entries(data)
      .sort(([a], [b]) => (first.indexOf(a) + 1 || 99) - (first.indexOf(b) + 1 || 99))
      .map(([k, v]) => `${k}=${typeof v === 'string' ? v : safeJson(v)}`)
      .join(' ');
  } else {
    detail = `${typeof env['source'] === 'string' ? `from=${env['source']} ` : ''}data=${summary(data ?? null)}`;
  }
  return { den, line: `${time}  ${type.padEnd(14)} ${detail}` };
}

/** Prints membership changes and events live, one line each, until the signal aborts. */
export async function watchCommand(config: AgentdConfig, den: string | undefined, json: boolean, io: Io, signal: AbortSignal): Promise<number> {
  const redis = await connectOnce(config);
  try {
    redis.on('pmessage', (_pattern: string, channel: string, message: string) => {
      const { den: eventDen, line } = describeEvent(channel, message);
      if (den !== undefined && eventDen !== den) return;
      io.stdout.write(json ? `${JSON.stringify({ channel, message })}\n` : `${line}\n`);
    });
    await redis.psubscribe(...config.events.patterns);
    if (!json) io.stderr.write(`watching ${config.events.patterns.join(', ')}${den ? ` (den ${den})` : ''}; Ctrl-C to stop\n`);
    await new Promise<void>((resolve, reject) => {
      if (signal.aborted) resolve();
      signal.addEventListener('abort', () => resolve(), { once: true });
      redis.once('end', () => reject(new AgentdError('AGENTD_ERR_REDIS', 'connection to redis lost')));
    });
    return 0;
  } finally {
    redis.disconnect();
  }
}

function mib(bytes: number): string {
  return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
}

/** `agentd memory context|clear|stats`. */
export async function memoryCommand(config: AgentdConfig, positionals: readonly string[], flags: { json: boolean; yes: boolean }, io: Io): Promise<number> {
  const [sub, ...rest] = positionals;
  const want = (n: number, usage: string): void => {
    if (rest.length !== n) throw new AgentdError('AGENTD_ERR_USAGE', `usage: agentd memory ${usage}`);
  };
  if (sub === 'context') want(2, 'context AGENT SESSION [--json]');
  else if (sub === 'clear') want(1, 'clear AGENT [--yes]');
  else if (sub === 'stats') want(0, 'stats [--json]');
  else throw new AgentdError('AGENTD_ERR_USAGE', `memory needs a subcommand: context, clear or stats${sub ? ` (got ${JSON.stringify(sub)})` : ''}`);
  const [agent = '', session = ''] = rest;
  if (sub !== 'stats' && (agent === '' || agent.includes(':'))) {
    throw new AgentdError('AGENTD_ERR_USAGE', `AGENT must be a non-empty id without ':' (got ${JSON.stringify(agent)})`);
  }
  if (sub === 'clear' && !flags.yes) {
    if (!io.stdin?.isTTY) throw new AgentdError('AGENTD_ERR_USAGE', `memory clear deletes every agent:${agent}:* key but the heartbeat; pass --yes when not on a terminal`);
    const rl = createInterface({ input: io.stdin, output: io.stderr });
    const answer = await rl.question(`Delete every key under agent:${agent}: (but agent:${agent}:heartbeat) on ${redactUrl(config.redis.url)}? [y/N] `);
    rl.close();
    if (!/^y(es)?$/i.test(answer.trim())) {
      io.stderr.write('nothing deleted\n');
      return 1;
    }
  }
  const redis = await connectOnce(config);
  try {
    if (sub === 'context') {
      const messages = await new AgentMemory(redis, agent).getContext(session);
      if (flags.json) io.stdout.write(`${JSON.stringify(messages)}\n`);
      else if (messages.length === 0) io.stdout.write(`no messages in agent:${agent}:session:${session}:messages\n`);
      else for (const m of messages) io.stdout.write(`${m.role}: ${m.content}\n`);
      return 0;
    }
    if (sub === 'clear') {
      const removed = await clearAgentMemory(redis, agent);
      io.stdout.write(flags.json ? `${JSON.stringify({ agent, removed })}\n` : `removed ${removed} key${removed === 1 ? '' : 's'} of agent ${agent} (its presence key agent:${agent}:heartbeat is kept)\n`);
      return 0;
    }
    const stats = await redisMemoryStats(redis);
    if (flags.json) {
      io.stdout.write(`${JSON.stringify(stats)}\n`);
      return 0;
    }
    const limit = stats.maxBytes > 0 ? mib(stats.maxBytes) : 'none';
    const ratio = stats.ratio === null ? '-' : `${(stats.ratio * 100).toFixed(1)} %`;
    io.stdout.write(
      `${table([
        ['USED', 'PEAK', 'MAXMEMORY', 'USED/MAX', 'POLICY'],
        [mib(stats.usedBytes), mib(stats.peakBytes), limit, ratio, stats.policy],
      ])}\n`,
    );
    if (stats.ratio !== null && stats.ratio > config.memory.warnRatio) {
      io.stderr.write(`warning: above ${Math.round(config.memory.warnRatio * 100)} % of maxmemory; Redis evicts at the limit (${stats.policy})\n`);
    }
    return 0;
  } finally {
    redis.disconnect();
  }
}
