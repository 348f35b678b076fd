import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { Redis } from 'ioredis';
import { parseRecord } from '../presence/record.ts';
import type { KeyRing } from '../security/keys.ts';
import { sealEnvelope } from '../security/signing.ts';
import { HEARTBEAT_PREFIX, HEARTBEAT_SUFFIX, REGISTRY_KEY, denMembersKey, denSweeperKey, eventChannel, heartbeatKey } from './keys.ts';

/**
 * The Lua scripts, one `.lua` file each (`<name>-<numberOfKeys>.lua`, with a
 * header listing KEYS, ARGV and output), registered with defineCommand so
 * ioredis sends EVALSHA and falls back to EVAL after a Redis restart.
 */

const SCRIPTS = {
  agentdReapPeer: 'reap-peer-2.lua',
  agentdLeaveAgent: 'leave-agent-3.lua',
  agentdSweepDen: 'sweep-den-1.lua',
  agentdSweeperLease: 'sweeper-lease-1.lua',
  agentdSampleDen: 'sample-den-1.lua',
  agentdRateLimit: 'rate-limit-1.lua',
  agentdAppendMessage: 'append-message-1.lua',
  agentdDenStatus: 'den-status-2.lua',
  agentdAppendEntry: 'append-entry-1.lua',
  agentdRefreshClaims: 'refresh-claims-1.lua',
  agentdExpireInbox: 'expire-inbox-3.lua',
} as const;

type ScriptName = keyof typeof SCRIPTS;

interface ScriptCommands {
  agentdReapPeer(
    den: string,
    registry: string,
    id: string,
    now: number,
    agentDen: string,
    watcherId: string,
    watcherDen: string,
    via: string,
    eventId: string,
    channel: string,
    minAgeMs: number,
    ghosts: string,
    hadRecord: string,
    record: string,
    sealed: string,
    seenMissingLongEnough: string,
  ): Promise<[number, string, string?]>;
  agentdLeaveAgent(
    heartbeat: string,
    den: string,
    registry: string,
    id: string,
    instance: string,
    record: string,
    channel: string,
    envelope: string,
  ): Promise<[number, string]>;
  agentdSweepDen(den: string, prefix: string, suffix: string): Promise<[number, ...string[]]>;
  agentdSweeperLease(lease: string, holder: string, ms: number, heartbeatPrefix: string, heartbeatSuffix: string): Promise<[number, number, string?]>;
  agentdSampleDen(den: string, prefix: string, suffix: string, size: number): Promise<[number, number, number]>;
  agentdRateLimit(key: string, windowSeconds: number): Promise<[number, number]>;
  agentdAppendMessage(key: string, message: string, keep: number, ttlSeconds: number): Promise<number>;
  agentdDenStatus(den: string, registry: string, ...args: Array<string | number>): Promise<[number, number, ...string[]]>;
  agentdAppendEntry(key: string, maxLen: number, ...fields: string[]): Promise<string>;
  agentdRefreshClaims(key: string, group: string, consumer: string, ...ids: string[]): Promise<string[]>;
  agentdExpireInbox(inbox: string, dead: string, heartbeat: string, group: string, maxLen: number, error: string): Promise<number>;
}

const sources = new Map<ScriptName, string>();

function source(name: ScriptName): string {
  let lua = sources.get(name);
  if (lua === undefined) {
    lua = readFileSync(new URL(`./scripts/${SCRIPTS[name]}`, import.meta.url), 'utf8');
    sources.set(name, lua);
  }
  return lua;
}

function numberOfKeys(file: string): number {
  return Number(/-(\d+)\.lua$/.exec(file)?.[1]);
}

/** Adds the scripts to a client (idempotent) and returns it typed with them. */
export function withScripts(redis: Redis): Redis & ScriptCommands {
  for (const name of Object.keys(SCRIPTS) as ScriptName[]) {
    if (typeof (redis as unknown as Record<string, unknown>)[name] !== 'function') {
      redis.defineCommand(name, { numberOfKeys: numberOfKeys(SCRIPTS[name]), lua: source(name) });
    }
  }
  return redis as Redis & ScriptCommands;
}

/** RPUSH + LTRIM + EXPIRE in one script call; resolves with the length after trimming. */
export function appendMessage(redis: Redis, key: string, message: string, keep: number, ttlSeconds: number): Promise<number> {
  return withScripts(redis).agentdAppendMessage(key, message, keep, ttlSeconds);
}

/** Counts one hit on a fixed-window counter; returns the count and the ms until the window resets. */
export async function rateLimitHit(redis: Redis, key: string, windowSeconds: number): Promise<{ count: number; resetMs: number }> {
  const [count, resetMs] = await withScripts(redis).agentdRateLimit(key, windowSeconds);
  return { count, resetMs };
}

export type ReapOutcome =
  | { readonly reaped: true; readonly envelope: string; readonly record: 'marked' | 'kept' | 'none' }
  | { readonly reaped: false; readonly reason: 'alive' | 'absent' | 'fresh' | 'unsure' | 'changed' | 'ghost' };

export interface ReapRequest {
  readonly id: string;
  readonly den: string;
  readonly now: number;
  readonly watcher: { readonly id: string; readonly den: string };
  readonly via: 'expiry' | 'sweep';
  /**
   * The registry record's lastSeen must be at least this old (ms) as well: a
   * deleted heartbeat key is not a death. The watcher passes the heartbeat TTL; default 0.
   */
  readonly minAgeMs?: number;
  /**
   * How long (ms) the caller has itself seen the heartbeat key missing. A
   * member without a credible lastSeen is reaped only once this reaches
   * minAgeMs (default: no such requirement).
   */
  readonly missingForMs?: number;
  /**
   * Sign the agent_down with these keys: the envelope is built here from the
   * registry record read first, and the script publishes it only if the record is unchanged.
   */
  readonly keys?: KeyRing;
  /** No ghosts: a member without an agentd registry record is removed quietly (reason 'ghost'). */
  readonly ghosts?: boolean;
}

/** host and lastSeen of a registry record, read exactly as the reap script reads them. */
function recordFacts(raw: string | null): { host: string | null; lastSeen: number | null } {
  const rec = raw !== null && /^\s*\{/.test(raw) ? parseRecord(raw) : {};
  return {
    host: typeof rec.host === 'string' ? rec.host : null,
    lastSeen: typeof rec.lastSeen === 'number' && Number.isFinite(rec.lastSeen) ? rec.lastSeen : null,
  };
}

/**
 * Removes a dead agent from its den, marks it down (when the record can be
 * rewritten losslessly) and publishes agent_down — if and only if its
 * heartbeat is still gone, its lastSeen is old enough and it is still a member.
 */
export async function reapAgent(redis: Redis, r: ReapRequest): Promise<ReapOutcome> {
  // Signed: the record can change between our read and the script (a peer coming back); then read again.
  for (let attempt = 0; ; attempt++) {
    const eventId = randomUUID();
    const channel = eventChannel('agent_down');
    let hadRecord = '0';
    let record = '';
    let sealed = '';
    if (r.keys !== undefined) {
      const raw = await redis.hget(REGISTRY_KEY, r.id);
      hadRecord = raw === null ? '0' : '1';
      record = raw ?? '';
      const { host, lastSeen } = recordFacts(raw);
      const data = { agent: r.id, den: r.den, host, lastSeen, detectedBy: r.watcher.id, via: r.via };
      const envelope = { event: 'agent_down', data, id: eventId, source: r.watcher.id, ts: r.now, den: r.watcher.den };
      sealed = sealEnvelope(envelope, channel, r.keys);
    }
    const [won, detail, state] = await withScripts(redis).agentdReapPeer(
      denMembersKey(r.den),
      REGISTRY_KEY,
      r.id,
      r.now,
      r.den,
      r.watcher.id,
      r.watcher.den,
      r.via,
      eventId,
      channel,
      Math.max(0, Math.round(r.minAgeMs ?? 0)),
      r.ghosts === true ? '1' : '0',
      hadRecord,
      record,
      sealed,
      r.missingForMs === undefined || r.missingForMs >= (r.minAgeMs ?? 0) ? '1' : '0',
    );
    if (won === 1) return { reaped: true, envelope: detail, record: state === 'marked' || state === 'kept' ? state : 'none' };
    if (won === 2) return { reaped: false, reason: 'ghost' };
    if (detail === 'changed' && attempt < 2) continue;
    return { reaped: false, reason: detail === 'alive' || detail === 'fresh' || detail === 'changed' || detail === 'unsure' ? detail : 'absent' };
  }
}

export type LeaveOutcome = { readonly left: true } | { readonly left: false; readonly owner: string };

/** Graceful leave, only if the registry record is this instance's; otherwise nothing and the owner's record. */
export async function leaveAgent(
  redis: Redis,
  l: { readonly id: string; readonly den: string; readonly instance: string; readonly record: string; readonly envelope: string },
): Promise<LeaveOutcome> {
  const [left, detail] = await withScripts(redis).agentdLeaveAgent(
    heartbeatKey(l.id),
    denMembersKey(l.den),
    REGISTRY_KEY,
    l.id,
    l.instance,
    l.record,
    eventChannel('agent_offline'),
    l.envelope,
  );
  return left === 1 ? { left: true } : { left: false, owner: detail };
}

/** Members of a den whose heartbeat key is gone, and how many members the den has. */
export async function sweepDen(redis: Redis, den: string): Promise<{ members: number; missing: string[] }> {
  const [members, ...missing] = await withScripts(redis).agentdSweepDen(denMembersKey(den), HEARTBEAT_PREFIX, HEARTBEAT_SUFFIX);
  return { members, missing };
}

export type LeaseOutcome = { readonly held: true; readonly ms: number } | { readonly held: false; readonly pttlMs: number; readonly holder: string };

/**
 * Takes or renews the sweeper lease of a den for `ms` (compare-and-set on the
 * holder token); `ms` 0 releases it if it is ours.
 */
export async function sweeperLease(redis: Redis, den: string, holder: string, ms: number): Promise<LeaseOutcome> {
  const [held, detail, other] = await withScripts(redis).agentdSweeperLease(denSweeperKey(den), holder, Math.max(0, Math.round(ms)), HEARTBEAT_PREFIX, HEARTBEAT_SUFFIX);
  if (held === 1) return { held: true, ms: detail };
  return { held: false, pttlMs: typeof detail === 'number' ? detail : 0, holder: other ?? '' };
}

/** A random sample of a den (the whole den when it is no larger): members, sampled, missing in the sample. */
export async function sampleDen(redis: Redis, den: string, size: number): Promise<{ members: number; sampled: number; missing: number }> {
  const [members, sampled, missing] = await withScripts(redis).agentdSampleDen(denMembersKey(den), HEARTBEAT_PREFIX, HEARTBEAT_SUFFIX, size);
  return { members, sampled, missing };
}
