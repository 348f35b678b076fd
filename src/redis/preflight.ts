/**
 * The server check at start: is this a server agentd can work with, and may
 * its user do everything the features that are on need? What cannot work is
 * one AgentdError (exit 2, one line); what may pass (a server still loading,
 * a dropped connection) is retried with a backoff and logged once.
 *
 * Permissions are checked without changing anything: every command is sent
 * inside MULTI and the transaction is then DISCARDed. Redis checks ACLs when a
 * command is queued (command, keys and channels), so each one is answered
 * QUEUED or NOPERM and none of them runs. EXEC and DISCARD are tried outside a
 * transaction, where an allowed one answers "ERR ... without MULTI".
 * Commands that Lua scripts run are checked the same way, with the keys the
 * scripts touch.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { Redis } from 'ioredis';
import type { AgentdConfig } from '../config/schema.ts';
import { AgentdError, describeError } from '../errors.ts';
import type { Logger } from '../log.ts';
import { redisDb } from './connection.ts';
import { DURABLE_GROUP, REGISTRY_KEY, deadLetterKey, denMembersKey, denSweeperKey, denTasksKey, eventChannel, heartbeatKey, heartbeatKeyspacePattern, inboxKey } from './keys.ts';

/** A command the daemon sends, with the keys/channels of one example call, and the feature that needs it. */
export interface NeededCommand {
  readonly feature: string;
  readonly args: readonly string[];
  /** What to name when refused: the command, and the key or channel it was tried on. */
  readonly what: string;
}

export interface ServerInfo {
  readonly version: string;
  readonly mode: string;
  readonly role: string;
}

export interface PreflightOptions {
  readonly config: AgentdConfig;
  /** The daemon's own probe channel (agentd:probe:<id>:<nonce>). */
  readonly probeChannel: string;
  readonly log: Logger;
  /** Makes the short-lived connection the check runs on (same options as the command connection). */
  readonly connect: () => Redis;
  readonly signal?: AbortSignal;
}

/** A sample peer: the watcher reads any agent's heartbeat key, the key patterns must allow it. */
const SAMPLE_PEER = 'agentd-preflight-peer';
const ANY_SHA = '0000000000000000000000000000000000000000';

/**
 * The pattern the watcher subscribes to for heartbeat expiries (only heartbeat
 * keys' keyspace channels), or undefined when it does not. An ACL grants it
 * only when written literally: Redis matches a PSUBSCRIBE pattern against the
 * rule's patterns as a string.
 */
export function expiryChannelOf(config: AgentdConfig): string | undefined {
  return config.watch.enabled && config.watch.notifications !== 'off' ? heartbeatKeyspacePattern(redisDb(config.redis.url)) : undefined;
}

/** Every command the daemon itself sends with the settings given (plugins' own commands are not here). */
export function neededCommands(config: AgentdConfig, probe: string): NeededCommand[] {
  const { id, den } = config.agent;
  const hb = heartbeatKey(id);
  const denKey = denMembersKey(den);
  const out: NeededCommand[] = [];
  const add = (feature: string, what: string, ...args: string[]): void => {
    out.push({ feature, what, args });
  };
  const db = redisDb(config.redis.url);
  if (db !== 0) add('connection', `SELECT ${db}`, 'SELECT', String(db));
  add('connection', 'INFO', 'INFO', 'server');
  // Presence: one MULTI per beat and per leave.
  add('presence', `SET ${hb}`, 'SET', hb, '0', 'EX', '1');
  add('presence', `SADD ${denKey}`, 'SADD', denKey, id);
  add('presence', `HSET ${REGISTRY_KEY}`, 'HSET', REGISTRY_KEY, id, '{}');
  add('presence', `SREM ${denKey}`, 'SREM', denKey, id);
  add('presence', `DEL ${hb}`, 'DEL', hb);
  // Every beat reads Redis's clock: lastSeen is written in it, so peers' clocks do not matter.
  add('presence', 'TIME', 'TIME');
  // Under OOM the beat falls back to renewing the heartbeat's TTL alone.
  add('presence', `PEXPIRE ${hb}`, 'PEXPIRE', hb, '1000');
  // The leave script (only our own instance's record): EVALSHA first, EVAL after a restart.
  add('presence', `EVALSHA (keys ${hb}, ${denKey}, ${REGISTRY_KEY})`, 'EVALSHA', ANY_SHA, '3', hb, denKey, REGISTRY_KEY);
  add('presence', `EVAL (keys ${hb}, ${denKey}, ${REGISTRY_KEY})`, 'EVAL', 'return 0', '3', hb, denKey, REGISTRY_KEY);
  for (const type of ['agent_online', 'agent_offline']) add('presence', `PUBLISH ${eventChannel(type)}`, 'PUBLISH', eventChannel(type), '{}');
  // The subscription and its probe.
  for (const pattern of config.events.patterns) add('events', `PSUBSCRIBE ${pattern}`, 'PSUBSCRIBE', pattern);
  add('events', 'PUNSUBSCRIBE', 'PUNSUBSCRIBE', config.events.patterns[0] ?? 'agent:events:*');
  add('events', `SUBSCRIBE ${probe}`, 'SUBSCRIBE', probe);
  add('events', 'UNSUBSCRIBE', 'UNSUBSCRIBE', probe);
  add('events', `PUBLISH ${probe}`, 'PUBLISH', probe, 'x');
  if (config.watch.enabled) {
    const expiry = expiryChannelOf(config);
    if (expiry !== undefined) add('watch.notifications', `PSUBSCRIBE ${expiry}`, 'PSUBSCRIBE', expiry);
    const watched = config.watch.dens.length === 0 || config.watch.dens[0] === '*' ? den : (config.watch.dens[0] ?? den);
    const watchedKey = denMembersKey(watched);
    const peerHb = heartbeatKey(SAMPLE_PEER);
    // The sweep and reap scripts: EVALSHA first, EVAL after a Redis restart (NOSCRIPT).
    // The reap declares the den set and the registry only: it reads the peer's heartbeat without declaring it.
    add('watch', `EVALSHA (keys ${watchedKey}, ${REGISTRY_KEY})`, 'EVALSHA', ANY_SHA, '2', watchedKey, REGISTRY_KEY);
    add('watch', `EVAL (keys ${watchedKey}, ${REGISTRY_KEY})`, 'EVAL', 'return 0', '2', watchedKey, REGISTRY_KEY);
    // What the scripts run (checked against the user's ACL when the script runs).
    add('watch', `SMEMBERS ${watchedKey} (in the sweep script)`, 'SMEMBERS', watchedKey);
    add('watch', `EXISTS ${peerHb} (in the sweep script)`, 'EXISTS', peerHb);
    add('watch', `SREM ${watchedKey} (in the reap script)`, 'SREM', watchedKey, SAMPLE_PEER);
    add('watch', `SISMEMBER ${watchedKey} (in the reap script)`, 'SISMEMBER', watchedKey, SAMPLE_PEER);
    add('watch', `HGET ${REGISTRY_KEY}`, 'HGET', REGISTRY_KEY, SAMPLE_PEER);
    add('watch', `HSET ${REGISTRY_KEY} (in the reap script)`, 'HSET', REGISTRY_KEY, SAMPLE_PEER, '{}');
    add('watch', `PUBLISH ${eventChannel('agent_down')} (in the reap script)`, 'PUBLISH', eventChannel('agent_down'), '{}');
    if (config.watch.dens[0] === '*') add('watch', `HVALS ${REGISTRY_KEY}`, 'HVALS', REGISTRY_KEY);
    if (config.watch.sweeper === 'lease') {
      // One sweeper per den: the lease script, and the expiry path's sample of the den.
      const lease = denSweeperKey(watched);
      add('watch', `EVALSHA (keys ${lease})`, 'EVALSHA', ANY_SHA, '1', lease);
      add('watch', `GET ${lease} (in the lease script)`, 'GET', lease);
      add('watch', `SET ${lease} (in the lease script)`, 'SET', lease, 'x', 'PX', '1000');
      add('watch', `PEXPIRE ${lease} (in the lease script)`, 'PEXPIRE', lease, '1000');
      add('watch', `PTTL ${lease} (in the lease script)`, 'PTTL', lease);
      add('watch', `DEL ${lease} (in the lease script)`, 'DEL', lease);
      add('watch', `SCARD ${watchedKey} (in the sample script)`, 'SCARD', watchedKey);
      add('watch', `SRANDMEMBER ${watchedKey} (in the sample script)`, 'SRANDMEMBER', watchedKey, '1');
    }
  }
  if (config.durable.enabled) {
    // This agent's inbox and its den's tasks: read through the group, acknowledged, claimed, dead-lettered.
    const inbox = inboxKey(id);
    const tasks = denTasksKey(den);
    const peerInbox = inboxKey(SAMPLE_PEER);
    for (const stream of [inbox, tasks]) {
      add('durable', `XGROUP CREATE ${stream}`, 'XGROUP', 'CREATE', stream, DURABLE_GROUP, '0', 'MKSTREAM');
      add('durable', `XREADGROUP ${stream}`, 'XREADGROUP', 'GROUP', DURABLE_GROUP, id, 'COUNT', '1', 'STREAMS', stream, '>');
      add('durable', `XACK ${stream}`, 'XACK', stream, DURABLE_GROUP, '0-1');
      add('durable', `XCLAIM ${stream}`, 'XCLAIM', stream, DURABLE_GROUP, id, '0', '0-1', 'JUSTID');
      add('durable', `XAUTOCLAIM ${stream}`, 'XAUTOCLAIM', stream, DURABLE_GROUP, id, '0', '0-0', 'COUNT', '1');
      add('durable', `XPENDING ${stream}`, 'XPENDING', stream, DURABLE_GROUP);
      add('durable', `XRANGE ${stream}`, 'XRANGE', stream, '-', '+', 'COUNT', '1');
      add('durable', `XLEN ${stream}`, 'XLEN', stream);
      add('durable', `XADD ${deadLetterKey(stream)}`, 'XADD', deadLetterKey(stream), '*', 'envelope', '{}');
      add('durable', `SUBSCRIBE ${stream}`, 'SUBSCRIBE', stream);
    }
    // Sending and replying: append to another agent's inbox (a script: XADD, then the doorbell).
    add('durable', `XADD ${peerInbox}`, 'XADD', peerInbox, '*', 'envelope', '{}');
    add('durable', `PUBLISH ${peerInbox}`, 'PUBLISH', peerInbox, '0-1');
    add('durable', `EVALSHA (keys ${peerInbox})`, 'EVALSHA', ANY_SHA, '1', peerInbox);
    add('durable', `EVALSHA (keys ${inbox}, ${deadLetterKey(inbox)}, ${heartbeatKey(id)})`, 'EVALSHA', ANY_SHA, '3', inbox, deadLetterKey(inbox), heartbeatKey(id));
    add('durable', `HGET ${REGISTRY_KEY}`, 'HGET', REGISTRY_KEY, SAMPLE_PEER);
  }
  if (config.http.port !== 0) add('metrics', `SCARD ${denKey}`, 'SCARD', denKey);
  if (config.http.port !== 0 && config.http.statusPage) {
    // The den status page: one read-only script over the den set and the registry, heartbeats by GETRANGE.
    add('statusPage', `EVALSHA (keys ${denKey}, ${REGISTRY_KEY})`, 'EVALSHA', ANY_SHA, '2', denKey, REGISTRY_KEY);
    for (const c of ['SSCAN', 'HKEYS', 'HLEN', 'HSTRLEN']) add('statusPage', `${c} (in the status script)`, c, c.startsWith('S') ? denKey : REGISTRY_KEY, ...(c === 'SSCAN' ? ['0'] : c === 'HSTRLEN' ? [SAMPLE_PEER] : []));
    add('statusPage', `GETRANGE ${heartbeatKey(SAMPLE_PEER)}`, 'GETRANGE', heartbeatKey(SAMPLE_PEER), '0', '16');
    if (config.durable.enabled) add('statusPage', `XLEN ${inboxKey(id)}`, 'XLEN', inboxKey(id));
  }
  return out;
}

/** Every command the daemon itself may send, whatever the settings (a refusal of one of these degrades it). */
export const DAEMON_COMMANDS: ReadonlySet<string> = new Set([
  'multi', 'exec', 'discard', 'ping', 'info', 'select', 'set', 'sadd', 'hset', 'srem', 'del', 'publish', 'psubscribe', 'punsubscribe',
  'subscribe', 'unsubscribe', 'evalsha', 'eval', 'smembers', 'sismember', 'exists', 'hget', 'hvals', 'scard', 'pexpire',
  'sscan', 'hkeys', 'xlen', 'get', 'pttl', 'srandmember', 'hlen', 'hstrlen', 'getrange', 'time', 'xgroup', 'xreadgroup', 'xack', 'xclaim', 'xautoclaim', 'xpending', 'xrange', 'xadd',
]);

/**
 * The least-privilege ACL rule for the settings given (the daemon alone; a
 * plugin's own commands come on top). Keys: every heartbeat (the watcher
 * reads its peers'), every den set, the registry. Channels: the event
 * channels, this agent's probe channels, the expiry channel.
 */
export function aclRule(config: AgentdConfig, user = 'agentd'): string {
  const commands = new Set<string>(['+multi', '+exec', '+discard', '+ping', '+client|setname', '+quit']);
  for (const c of neededCommands(config, 'agentd:probe:x:y')) commands.add(`+${(c.args[0] ?? '').toLowerCase()}`);
  const durable = config.durable.enabled ? [inboxKey('*'), denTasksKey('*')] : [];
  const channels = [...new Set([...config.events.patterns, eventChannel('*'), 'agentd:probe:*', ...(expiryChannelOf(config) ? [expiryChannelOf(config) as string] : []), ...durable])];
  const keys = [heartbeatKey('*'), denMembersKey('*'), REGISTRY_KEY, ...(config.watch.enabled && config.watch.sweeper === 'lease' ? [denSweeperKey('*')] : []), ...durable, ...(config.durable.enabled ? [deadLetterKey(denTasksKey('*'))] : [])];
  return [`ACL SETUSER ${user} on >PASSWORD resetkeys resetchannels -@all`, ...commands, ...keys.map((k) => `~${k}`), ...channels.map((c) => `&${c}`)].join(' ');
}

const isNoPerm = (err: unknown): boolean => /\bNOPERM\b/.test(describeError(err));

/** Transient: loading, busy, a dropped or slow connection. Anything else from the check is permanent. */
function isTransient(err: unknown): boolean {
  const text = describeError(err);
  return /\b(LOADING|BUSY|MASTERDOWN|TRYAGAIN|ETIMEDOUT|ECONNRESET|ECONNREFUSED|EPIPE|EHOSTUNREACH|ENETUNREACH)\b|Connection is closed|timed out|Socket timeout|connect deadline|Stream isn't writeable/i.test(text);
}

function parseInfo(text: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const line of text.split(/\r?\n/)) {
    const i = line.indexOf(':');
    if (i > 0 && !line.startsWith('#')) out.set(line.slice(0, i), line.slice(i + 1).trim());
  }
  return out;
}

function refusedError(config: AgentdConfig, refused: ReadonlyArray<{ c: NeededCommand; err: string }>): AgentdError {
  const user = decodeURIComponent(new URL(config.redis.url).username) || 'default';
  // Redis says which kind of permission is missing: the command, a key, or a channel.
  const commands = new Map<string, Set<string>>();
  const keys: string[] = [];
  const channels: string[] = [];
  const other: string[] = [];
  for (const { c, err } of refused) {
    const cmd = /permissions to run the '([^']+)' command/.exec(err)?.[1];
    if (cmd !== undefined) {
      const name = cmd.toUpperCase();
      if (!commands.has(name)) commands.set(name, new Set());
      commands.get(name)?.add(c.feature);
    } else if (/\bkeys?\b/.test(err)) keys.push(`${c.what} [${c.feature}]`);
    else if (/\bchannels?\b/.test(err)) channels.push(`${c.what} [${c.feature}]`);
    else other.push(`${c.what} [${c.feature}]: ${err}`);
  }
  const parts: string[] = [];
  if (commands.size > 0) parts.push(`commands ${[...commands].map(([name, f]) => `${name} [${[...f].join(', ')}]`).join(', ')}`);
  if (keys.length > 0) parts.push(`the keys of ${keys.join(', ')}`);
  if (channels.length > 0) parts.push(`the channels of ${channels.join(', ')}`);
  if (other.length > 0) parts.push(other.join(', '));
  return new AgentdError(
    'AGENTD_ERR_REDIS_PERMISSION',
    `redis user "${user}" lacks permissions agentd needs (NOPERM): ${parts.join('; ')}. Grant them (docs/operations.md, "Redis server and ACL") or turn the feature off`,
  );
}

/** One pass of the check on an open connection. Throws AgentdError for what cannot work. */
export async function checkServer(redis: Redis, config: AgentdConfig, probe: string): Promise<ServerInfo> {
  const target = new URL(config.redis.url).host;
  // A server or proxy without INFO (renamed or not offered): the mode and role cannot be checked.
  const unknownCommand = (err: unknown): boolean => /unknown command|ERR unknown|not supported/i.test(describeError(err));
  // Both INFO sections asked at once (one round trip); the replication answer is used only for a data server.
  const replicationReply = redis.call('INFO', 'replication');
  replicationReply.catch(() => undefined);
  let server: Map<string, string>;
  try {
    server = parseInfo(String(await redis.call('INFO', 'server')));
  } catch (err) {
    if (isNoPerm(err)) throw refusedError(config, [{ c: { feature: 'connection', what: 'INFO', args: ['INFO'] }, err: describeError(err) }]);
    if (!unknownCommand(err)) throw err;
    server = new Map([['redis_mode', 'unknown']]);
  }
  const mode = server.get('redis_mode') ?? 'standalone';
  const version = server.get('redis_version') ?? 'unknown';
  if (mode === 'cluster') {
    throw new AgentdError(
      'AGENTD_ERR_REDIS_UNSUPPORTED',
      `redis at ${target} runs in cluster mode (redis_mode:cluster), which agentd does not support (its presence transactions span keys in different slots): point redis.url at a standalone server or a Sentinel-managed primary`,
    );
  }
  if (mode === 'sentinel') {
    throw new AgentdError('AGENTD_ERR_REDIS_UNSUPPORTED', `redis at ${target} is a Sentinel (redis_mode:sentinel), not a data server: point redis.url at the primary it manages`);
  }
  let replication: Map<string, string>;
  try {
    replication = mode === 'unknown' ? new Map([['role', 'unknown']]) : parseInfo(String(await replicationReply));
  } catch (err) {
    // An ACL that lets INFO run for some sections only (+info|server): refused like INFO itself.
    if (isNoPerm(err)) throw refusedError(config, [{ c: { feature: 'connection', what: 'INFO replication', args: ['INFO', 'replication'] }, err: describeError(err) }]);
    if (!unknownCommand(err)) throw err;
    replication = new Map([['role', 'unknown']]);
  }
  const role = replication.get('role') ?? 'master';
  if (role !== 'master' && role !== 'unknown') {
    const master = replication.get('master_host') ? ` of ${replication.get('master_host')}:${replication.get('master_port') ?? '?'}` : '';
    throw new AgentdError(
      'AGENTD_ERR_REDIS_UNSUPPORTED',
      `redis at ${target} is a read-only replica${master} (role:${role}): agentd writes presence and needs the primary; point redis.url at it`,
    );
  }

  // Permissions: queue everything in a transaction that is then discarded.
  const refused: Array<{ c: NeededCommand; err: string }> = [];
  const needed = neededCommands(config, probe);
  // EXEC and DISCARD outside a transaction: refused by the ACL, or "without MULTI" (allowed). Sent together.
  const outside = await Promise.allSettled([redis.call('EXEC'), redis.call('DISCARD')]);
  (['EXEC', 'DISCARD'] as const).forEach((name, i) => {
    const a = outside[i];
    if (a?.status === 'rejected' && isNoPerm(a.reason)) refused.push({ c: { feature: 'presence', what: name, args: [name] }, err: describeError(a.reason) });
  });
  let inMulti = false;
  try {
    await redis.call('MULTI');
    inMulti = true;
  } catch (err) {
    if (isNoPerm(err)) refused.push({ c: { feature: 'presence', what: 'MULTI', args: ['MULTI'] }, err: describeError(err) });
    else if (unknownCommand(err)) {
      throw new AgentdError('AGENTD_ERR_REDIS_UNSUPPORTED', `redis at ${target} does not run MULTI (${describeError(err)}): agentd's presence needs transactions; connect to Redis directly, not through a proxy that lacks them`);
    } else throw err;
  }
  // SUBSCRIBE and friends are tried for real, after the transaction: in MULTI their QUEUED
  // answer would confuse the client's subscriber-mode bookkeeping. A subscription on this
  // short-lived connection has no effect on anything else.
  const isSub = (c: NeededCommand): boolean => /^P?(UN)?SUBSCRIBE$/.test(c.args[0] ?? '');
  if (inMulti) {
    try {
      // Sent together (one round trip), answered in order.
      const queued = needed.filter((x) => !isSub(x));
      const answers = await Promise.allSettled(queued.map((c) => redis.call((c.args[0] as string).toLowerCase(), ...c.args.slice(1))));
      answers.forEach((a, i) => {
        // Anything but NOPERM (e.g. "not allowed inside a transaction") means the ACL let it through.
        if (a.status === 'rejected' && isNoPerm(a.reason)) refused.push({ c: queued[i] as NeededCommand, err: describeError(a.reason) });
      });
    } finally {
      await redis.call('DISCARD').catch(() => undefined);
    }
  }
  let subscribed = false;
  const subs = needed.filter(isSub);
  for (const c of [...subs.filter((x) => !/UNSUB/.test(x.args[0] ?? '')), ...subs.filter((x) => /UNSUB/.test(x.args[0] ?? ''))]) {
    const unsub = /UNSUBSCRIBE$/.test(c.args[0] ?? '');
    if (unsub && !subscribed) continue; // meaningless outside subscriber mode; refused ones were named above
    try {
      await redis.call((c.args[0] as string).toLowerCase(), ...c.args.slice(1));
      if (!unsub) subscribed = true;
    } catch (err) {
      if (isNoPerm(err)) refused.push({ c, err: describeError(err) });
      else throw err;
    }
  }
  if (refused.length > 0) throw refusedError(config, refused);
  return { version, mode, role };
}

/**
 * Runs the check on its own short-lived connection (so nothing else is sent
 * inside its transaction), retrying transient failures with a backoff up to
 * 5 s and logging the first one. Resolves with what the server is.
 */
export async function preflight(o: PreflightOptions): Promise<ServerInfo> {
  let delay = 250;
  let logged = false;
  for (;;) {
    o.signal?.throwIfAborted();
    const redis = o.connect();
    redis.on('error', () => undefined);
    try {
      await redis.connect();
      const info = await checkServer(redis, o.config, o.probeChannel);
      if (info.mode === 'unknown') o.log.warn('redis server does not answer INFO: cannot check for cluster mode or a replica; permissions were checked');
      o.log.info({ redisVersion: info.version, mode: info.mode, role: info.role }, 'redis server check passed');
      return info;
    } catch (err) {
      if (!isTransient(err) || o.signal?.aborted) throw err;
      if (!logged) {
        logged = true;
        o.log.warn({ err: describeError(err), retryMs: delay }, 'redis server check failed; retrying with backoff');
      }
    } finally {
      redis.disconnect(false);
    }
    // Cut short by the signal (the abort ends the wait, not the check: the loop sees it).
    await sleep(delay, undefined, { ref: false, ...(o.signal ? { signal: o.signal } : {}) }).catch(() => undefined);
    delay = Math.min(5_000, delay * 2);
  }
}
