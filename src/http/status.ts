import type { Redis } from 'ioredis';
import type { Registry } from 'prom-client';
import { ID_PATTERN } from '../config/schema.ts';
import type { DaemonStats } from '../daemon.ts';
import { withRedisDeadline } from '../deadline.ts';
import { describeError } from '../errors.ts';
import type { AgentInfo } from '../plugins/types.ts';
import { REGISTRY_KEY, denMembersKey, heartbeatKey } from '../redis/keys.ts';
import { recordObject } from '../presence/record.ts';
import { withScripts } from '../redis/scripts.ts';
import type { Readiness } from './server.ts';

/**
 * The data behind the den status page (/status, /status.json): read-only,
 * collected when asked. Nothing here holds a secret or an event payload:
 * membership events keep only validated ids and short names, and the
 * Redis URL never enters a snapshot.
 */

/** How many membership events the page remembers. */
export const EVENT_RING_SIZE = 50;
/** Rows of the members table; a bigger den shows the first ones (online first) and says how many are left out. */
export const MAX_MEMBERS = 500;
/** Above this many registry entries, only den members and agents named by recent events are looked up (HMGET), not HGETALL. */
export const REGISTRY_SCAN_LIMIT = 2_000;
/** Snapshots are shared by requests this close together, so many open pages cost Redis no more than one. */
const SNAPSHOT_REUSE_MS = 500;
const REDIS_DEADLINE_MS = 2_000;
const MAX_RECORD_CHARS = 4_096;
const MAX_HOST_CHARS = 253;
/** Longest id the script returns (ID_PATTERN allows 128). */
const MAX_ID_CHARS = 128;
/** Characters of a heartbeat value read: 16 digits of ms and one more, so longer values fail the check. */
const HEARTBEAT_CHARS = 16;

const MEMBERSHIP_TYPES = new Set(['agent_online', 'agent_offline', 'agent_down']);

export type MembershipEventType = 'agent_online' | 'agent_offline' | 'agent_down';

export interface DenEvent {
  readonly type: MembershipEventType;
  readonly agent: string;
  readonly den: string;
  /** Unix ms this daemon received it. */
  readonly at: number;
  readonly host?: string;
  readonly rejoined?: true;
  readonly reason?: 'shutdown';
  readonly detectedBy?: string;
  readonly via?: 'expiry' | 'sweep';
}

function isId(v: unknown): v is string {
  return typeof v === 'string' && ID_PATTERN.test(v);
}

/** A host name from the network: printable ASCII only, bounded. */
function hostName(v: unknown): string | undefined {
  if (typeof v !== 'string' || v.length === 0 || v.length > MAX_HOST_CHARS) return undefined;
  return /^[\x21-\x7e]+$/.test(v) ? v : undefined;
}

function finite(v: unknown): number | undefined {
  return typeof v === 'number' && Number.isFinite(v) ? v : undefined;
}

/**
 * The last membership events of one den, as this daemon received them. Data
 * comes from the bus, so only the known fields are kept, each checked.
 */
export class DenEventRing {
  readonly #den: string;
  readonly #size: number;
  readonly #events: DenEvent[] = [];

  constructor(den: string, size = EVENT_RING_SIZE) {
    this.#den = den;
    this.#size = size;
  }

  /** Called for every valid event; ignores all but membership events of this den. Never throws. */
  observe(event: { readonly event: string; readonly data: unknown }): void {
    if (!MEMBERSHIP_TYPES.has(event.event)) return;
    const data = event.data;
    if (data === null || typeof data !== 'object' || Array.isArray(data)) return;
    const d = data as Record<string, unknown>;
    if (!isId(d['agent']) || d['den'] !== this.#den) return;
    const type = event.event as MembershipEventType;
    const host = hostName(d['host']);
    const entry: DenEvent = {
      type,
      agent: d['agent'],
      den: this.#den,
      at: Date.now(),
      ...(host !== undefined ? { host } : {}),
      ...(type === 'agent_online' && d['rejoined'] === true ? { rejoined: true as const } : {}),
      ...(type === 'agent_offline' && d['reason'] === 'shutdown' ? { reason: 'shutdown' as const } : {}),
      ...(type === 'agent_down' && isId(d['detectedBy']) ? { detectedBy: d['detectedBy'] } : {}),
      ...(type === 'agent_down' && (d['via'] === 'expiry' || d['via'] === 'sweep') ? { via: d['via'] } : {}),
    };
    this.#events.push(entry);
    if (this.#events.length > this.#size) this.#events.shift();
  }

  /** Newest first. */
  list(): DenEvent[] {
    return [...this.#events].reverse();
  }

  agents(): string[] {
    return [...new Set(this.#events.map((e) => e.agent))];
  }
}

export type MemberStatus = 'online' | 'expired' | 'down' | 'offline' | 'unknown';

/** What a member's registry record says, each field checked (null: absent, or not a valid value). */
export interface RecordFacts {
  readonly host: string | null;
  readonly pid: number | null;
  readonly version: string | null;
  readonly startedAt: number | null;
  readonly lastSeen: number | null;
  readonly downAt: number | null;
}

export interface MemberRow extends RecordFacts {
  readonly id: string;
  /**
   * online: heartbeat key present; expired: in the den set with no heartbeat (died, not reaped yet);
   * down / offline: the registry's word; unknown: no record and no heartbeat.
   */
  readonly status: MemberStatus;
  readonly inDen: boolean;
  /** ms since the heartbeat key's timestamp; null without a heartbeat. */
  readonly heartbeatAgeMs: number | null;
  /** The agent's TTL in ms as Redis sees it (age + remaining), or this daemon's TTL when Redis cannot tell. */
  readonly heartbeatTtlMs: number;
}

export interface HandlerRow {
  readonly plugin: string;
  readonly ok: number;
  readonly error: number;
  readonly timeout: number;
  readonly aborted: number;
  /** Upper bound of the bucket holding the median / 99th percentile call, in seconds (null: no calls, or above the last bucket). */
  readonly p50Le: number | null;
  readonly p99Le: number | null;
}

/** Depth of the durable inbox and den tasks, and their dead letters (null with durable.enabled=false). */
export interface DurableStatus {
  readonly inbox?: { readonly length: number; readonly pending: number };
  readonly denTasks?: { readonly length: number; readonly pending: number };
  readonly deadLetters?: { readonly inbox: number; readonly denTasks: number };
}

export interface StatusSnapshot {
  readonly generatedAt: number;
  readonly agent: { readonly id: string; readonly den: string; readonly version: string };
  readonly state: string;
  readonly ready: boolean;
  readonly reasons: readonly string[];
  readonly heartbeat: { readonly ttlSeconds: number; readonly intervalSeconds: number; readonly lastBeatAt: number };
  readonly members: readonly MemberRow[];
  /** Den members beyond MAX_MEMBERS that are not listed. */
  readonly membersLeftOut: number;
  /** Set when Redis could not be read; the rest of the snapshot is still this daemon's own data. */
  readonly membersError: string | null;
  readonly events: readonly DenEvent[];
  readonly queue: {
    readonly waiting: number;
    readonly running: number;
    readonly concurrency: number;
    readonly max: number;
    /** Handler calls dropped, by reason (queue_full, evicted, shutdown). */
    readonly dropped: Readonly<Record<string, number>>;
    /** Messages dropped before dispatch, by reason (bad input). */
    readonly invalid: Readonly<Record<string, number>>;
  };
  readonly traffic: { readonly received: number; readonly dispatched: number; readonly unhandled: number };
  readonly handlers: readonly HandlerRow[];
  readonly loop: { readonly lastMaxMs: number; readonly worstMs: number; readonly budgetMs: number };
  readonly redisMemory: { readonly usedBytes: number; readonly maxBytes: number; readonly warnRatio: number } | null;
  /** null with durable messages off, or when Redis did not answer. */
  readonly durable: DurableStatus | null;
}

export interface StatusSource {
  readonly agent: AgentInfo;
  readonly version: string;
  readonly redis: Redis;
  readonly heartbeat: { readonly ttlSeconds: number; readonly intervalSeconds: number };
  readonly queue: { readonly concurrency: number; readonly max: number };
  readonly memoryWarnRatio: number;
  readonly registry: Registry;
  readonly events: DenEventRing;
  readiness(): Readiness;
  stats(): Pick<DaemonStats, 'received' | 'dispatched' | 'unhandled' | 'waiting' | 'running' | 'lastBeatAt' | 'loopDelayMaxMs' | 'dropped' | 'invalid'>;
  loopDelayMs(): number;
  redisMemory(): { readonly usedBytes: number; readonly maxBytes: number } | undefined;
  /** Durable inbox / den-task depth and dead letters (absent with durable.enabled=false). */
  durable?(): Promise<DurableStatus | undefined>;
}

interface ParsedRecord extends RecordFacts {
  readonly den: string | undefined;
  readonly status: string | null;
}

/** A registry value from Redis (untrusted): a bounded JSON object with the fields we know, each checked; else undefined. */
export function checkedRecord(raw: string | null | undefined): ParsedRecord | undefined {
  const r = typeof raw === 'string' && raw.length <= MAX_RECORD_CHARS ? recordObject(raw) : undefined;
  if (r === undefined) return undefined;
  const status = r['status'];
  const version = r['version'];
  return {
    den: isId(r['den']) ? r['den'] : undefined,
    host: hostName(r['host']) ?? null,
    pid: finite(r['pid']) ?? null,
    version: typeof version === 'string' && /^[\x21-\x7e]{1,64}$/.test(version) ? version : null,
    startedAt: finite(r['startedAt']) ?? null,
    status: status === 'online' || status === 'offline' || status === 'down' ? status : null,
    lastSeen: finite(r['lastSeen']) ?? null,
    downAt: finite(r['downAt']) ?? null,
  };
}

const STATUS_ORDER: Record<MemberStatus, number> = { online: 0, expired: 1, down: 2, offline: 3, unknown: 4 };

/** Error text for the page: no URL (it may carry a password), one line, bounded. */
function publicError(err: unknown): string {
  return describeError(err)
    .replace(/rediss?:\/\/\S*/gi, 'redis://…')
    .slice(0, 200);
}

interface SampleValue {
  readonly labels: Record<string, string | number>;
  readonly value: number;
  readonly metricName?: string;
}

async function metricValues(registry: Registry, name: string): Promise<SampleValue[]> {
  const metric = registry.getSingleMetric(name);
  if (!metric) return [];
  const got = (await metric.get()) as { values: SampleValue[] };
  return got.values;
}

function bucketBound(buckets: ReadonlyArray<readonly [number, number]>, count: number, q: number): number | null {
  if (count === 0) return null;
  const rank = q * count;
  for (const [le, cumulative] of buckets) if (cumulative >= rank) return Number.isFinite(le) ? le : null;
  return null;
}

/** Handler outcomes and latency bounds per plugin, read from the metrics registry (one place counts them). */
export async function handlerRows(registry: Registry): Promise<HandlerRow[]> {
  const rows = new Map<string, { ok: number; error: number; timeout: number; aborted: number; buckets: Array<[number, number]>; count: number }>();
  const row = (plugin: string) => {
    let r = rows.get(plugin);
    if (!r) rows.set(plugin, (r = { ok: 0, error: 0, timeout: 0, aborted: 0, buckets: [], count: 0 }));
    return r;
  };
  for (const v of await metricValues(registry, 'agentd_handler_calls_total')) {
    const r = row(String(v.labels['plugin']));
    const outcome = String(v.labels['outcome']);
    if (outcome === 'ok' || outcome === 'error' || outcome === 'timeout' || outcome === 'aborted') r[outcome] += v.value;
  }
  for (const v of await metricValues(registry, 'agentd_handler_duration_seconds')) {
    const r = row(String(v.labels['plugin']));
    if (v.metricName?.endsWith('_bucket')) {
      const le = v.labels['le'] === '+Inf' ? Infinity : Number(v.labels['le']);
      r.buckets.push([le, v.value]);
    } else if (v.metricName?.endsWith('_count')) r.count = v.value;
  }
  return [...rows.entries()]
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([plugin, r]) => {
      const buckets = r.buckets.sort(([a], [b]) => a - b);
      return { plugin, ok: r.ok, error: r.error, timeout: r.timeout, aborted: r.aborted, p50Le: bucketBound(buckets, r.count, 0.5), p99Le: bucketBound(buckets, r.count, 0.99) };
    });
}

/** Builds status snapshots; concurrent and closely spaced requests share one. */
export class StatusCollector {
  readonly #s: StatusSource;
  #last: { at: number; snapshot: Promise<StatusSnapshot>; pending: boolean } | undefined;

  constructor(source: StatusSource) {
    this.#s = source;
  }

  snapshot(): Promise<StatusSnapshot> {
    const now = Date.now();
    // Shared while in flight too: a slow or frozen Redis must not get a new read queued behind the stuck one per poll.
    if (this.#last && (this.#last.pending || now - this.#last.at < SNAPSHOT_REUSE_MS)) return this.#last.snapshot;
    const last: { at: number; snapshot: Promise<StatusSnapshot>; pending: boolean } = { at: now, snapshot: this.#collect(), pending: true };
    last.snapshot.finally(() => (last.pending = false)).catch(() => undefined);
    this.#last = last;
    return last.snapshot;
  }

  async #collect(): Promise<StatusSnapshot> {
    const s = this.#s;
    const stats = s.stats();
    const readiness = s.readiness();
    const [den, handlers, durable] = await Promise.all([
      (s.redis.status === 'ready' ? withRedisDeadline(this.#members(), REDIS_DEADLINE_MS) : Promise.reject(new Error(`the command connection is ${s.redis.status}`))).then(
        (m) => ({ ...m, error: null }),
        (err: unknown) => ({ rows: [] as MemberRow[], leftOut: 0, error: `could not read the den from Redis: ${publicError(err)}` }),
      ),
      handlerRows(s.registry).catch(() => []),
      s.durable ? s.durable().catch(() => undefined) : Promise.resolve(undefined),
    ]);
    const mem = s.redisMemory();
    return {
      generatedAt: Date.now(),
      agent: { id: s.agent.id, den: s.agent.den, version: s.version },
      state: readiness.state,
      ready: readiness.ready,
      reasons: readiness.reasons,
      heartbeat: { ttlSeconds: s.heartbeat.ttlSeconds, intervalSeconds: s.heartbeat.intervalSeconds, lastBeatAt: stats.lastBeatAt },
      members: den.rows,
      membersLeftOut: den.leftOut,
      membersError: den.error,
      events: s.events.list(),
      queue: { waiting: stats.waiting, running: stats.running, concurrency: s.queue.concurrency, max: s.queue.max, dropped: { ...stats.dropped }, invalid: { ...stats.invalid } },
      traffic: { received: stats.received, dispatched: stats.dispatched, unhandled: stats.unhandled },
      handlers,
      loop: { lastMaxMs: s.loopDelayMs(), worstMs: stats.loopDelayMaxMs, budgetMs: (s.heartbeat.ttlSeconds - s.heartbeat.intervalSeconds) * 1000 },
      redisMemory: mem ? { usedBytes: mem.usedBytes, maxBytes: mem.maxBytes, warnRatio: s.memoryWarnRatio } : null,
      durable: durable ?? null,
    };
  }

  /**
   * Den set + registry records + heartbeat keys, joined into rows. Every
   * read is bounded whatever is in Redis: one script returns at most
   * MAX_MEMBERS den members and only records up to MAX_RECORD_CHARS
   * (den-status-2.lua), and heartbeats are read with GETRANGE.
   */
  async #members(): Promise<{ rows: MemberRow[]; leftOut: number }> {
    const { redis, agent } = this.#s;
    const extra = [...new Set([agent.id, ...this.#s.events.agents()])].slice(0, EVENT_RING_SIZE + 1);
    const reply = await withScripts(redis).agentdDenStatus(denMembersKey(agent.den), REGISTRY_KEY, agent.den, MAX_MEMBERS, MAX_RECORD_CHARS, REGISTRY_SCAN_LIMIT, MAX_ID_CHARS, ...extra);
    const denSize = typeof reply[0] === 'number' ? reply[0] : 0;
    const n = typeof reply[1] === 'number' ? reply[1] : 0;
    const setMembers = reply.slice(2, 2 + n).map(String);
    const inDen = new Set(setMembers.filter(isId));
    const records = new Map<string, ParsedRecord>();
    for (let i = 2 + n; i + 1 < reply.length; i += 2) {
      const id = String(reply[i]);
      if (!isId(id)) continue;
      const rec = checkedRecord(String(reply[i + 1]));
      if (rec && (rec.den === agent.den || inDen.has(id))) records.set(id, rec);
    }
    // Den members the script did not return (the set is bigger than MAX_MEMBERS) are left out too.
    const unlisted = Math.max(0, denSize - setMembers.length);
    // Online first, then the dead, then the ones that left; bounded.
    const candidates = [...new Set([...inDen, ...records.keys()])];
    const rank = (id: string): number => {
      const st = records.get(id)?.status;
      return inDen.has(id) ? 0 : st === 'down' ? 1 : 2;
    };
    candidates.sort((a, b) => rank(a) - rank(b) || a.localeCompare(b));
    const listed = candidates.slice(0, MAX_MEMBERS);
    const pipe = redis.pipeline();
    // GETRANGE, not GET: a heartbeat is a ms timestamp, whatever size a hostile writer made the value.
    for (const id of listed) pipe.getrange(heartbeatKey(id), 0, HEARTBEAT_CHARS).pttl(heartbeatKey(id));
    const replies = listed.length ? ((await pipe.exec()) ?? []) : [];
    const now = Date.now();
    const ownTtlMs = this.#s.heartbeat.ttlSeconds * 1000;
    const rows = listed.map((id, i): MemberRow => {
      const [beatErr, beat] = replies[2 * i] ?? [null, null];
      const [ttlErr, pttl] = replies[2 * i + 1] ?? [null, -2];
      const beatAt = !beatErr && typeof beat === 'string' && /^\d{1,16}$/.test(beat) ? Number(beat) : undefined;
      // PTTL -2: no such key (GETRANGE answers '' for a missing key).
      const hasBeat = !ttlErr && typeof pttl === 'number' && pttl !== -2;
      const remaining = !ttlErr && typeof pttl === 'number' && pttl > 0 ? pttl : undefined;
      const ageMs = beatAt !== undefined ? Math.max(0, now - beatAt) : null;
      const rec = records.get(id);
      const status: MemberStatus = hasBeat ? 'online' : inDen.has(id) ? 'expired' : rec?.status === 'down' ? 'down' : rec?.status === 'offline' ? 'offline' : rec?.status === 'online' ? 'expired' : 'unknown';
      return {
        id,
        status,
        inDen: inDen.has(id),
        host: rec?.host ?? null,
        pid: rec?.pid ?? null,
        version: rec?.version ?? null,
        startedAt: rec?.startedAt ?? null,
        lastSeen: rec?.lastSeen ?? null,
        downAt: rec?.downAt ?? null,
        heartbeatAgeMs: hasBeat ? ageMs : null,
        heartbeatTtlMs: ageMs !== null && remaining !== undefined ? ageMs + remaining : ownTtlMs,
      };
    });
    rows.sort((a, b) => STATUS_ORDER[a.status] - STATUS_ORDER[b.status] || a.id.localeCompare(b.id));
    return { rows, leftOut: candidates.length - listed.length + unlisted };
  }
}
