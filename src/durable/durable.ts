import type { Redis } from 'ioredis';
import type { Binding, HandlerOutcome } from '../bus/dispatcher.ts';
import type { StreamKind } from '../bus/envelope.ts';
import { makeEnvelope, type Envelope } from '../bus/publish.ts';
import type { KeyRing } from '../security/keys.ts';
import { sealEnvelope } from '../security/signing.ts';
import type { AgentdConfig } from '../config/schema.ts';
import { ID_PATTERN } from '../config/schema.ts';
import { AgentdError, Code, describeError } from '../errors.ts';
import type { Logger } from '../log.ts';
import type { AgentInfo } from '../plugins/types.ts';
import { DURABLE_GROUP, REGISTRY_KEY, deadLetterKey, denMembersKey, denTasksKey, heartbeatKey, inboxKey } from '../redis/keys.ts';
import { withScripts } from '../redis/scripts.ts';
import { DurableConsumer, type ConsumerHooks, type ReplyError } from './consumer.ts';
import { RequestError } from './errors.ts';
import { appendEntry, pendingEntries } from './streams.ts';

export interface RequestOptions {
  /** Reject with reason 'timeout' after this many ms (default 30 000). */
  readonly timeoutMs?: number;
  /** Aborting it rejects the request with the signal's reason (the request entry stays in the target's inbox). */
  readonly signal?: AbortSignal;
}

export interface SubmitOptions {
  /** Den whose members share the work; default: this agent's den. */
  readonly den?: string;
}

/** What plugins get as ctx.send / ctx.request / ctx.submit. */
export interface DurableApi {
  send(agentId: string, type: string, data: unknown): Promise<string>;
  request<T = unknown>(agentId: string, type: string, data: unknown, options?: RequestOptions): Promise<T>;
  submit(type: string, data: unknown, options?: SubmitOptions): Promise<string>;
}

export interface DurableOptions {
  readonly redis: Redis;
  readonly agent: AgentInfo;
  readonly config: AgentdConfig;
  readonly log: Logger;
  readonly hooks?: ConsumerHooks;
  /** Signing keys (security.signing warn or require): every entry written is signed over its stream key; never logged. */
  readonly keys?: KeyRing;
}

interface Waiting {
  readonly target: string;
  resolve(value: unknown): void;
  reject(err: unknown): void;
}

const DEFAULT_REQUEST_TIMEOUT_MS = 30_000;

function checkId(what: string, id: string): void {
  if (typeof id !== 'string' || !ID_PATTERN.test(id)) {
    throw new AgentdError('AGENTD_ERR_USAGE', `${what} must be 1-128 characters of A-Z a-z 0-9 . _ - (got ${JSON.stringify(String(id).slice(0, 140))})`);
  }
}

/** Checks a target before a request: a live heartbeat, else down/offline (known) or never seen. */
export async function targetState(redis: Redis, agentId: string): Promise<'alive' | 'down' | 'unknown'> {
  const [alive, record] = await Promise.all([redis.exists(heartbeatKey(agentId)), redis.hexists(REGISTRY_KEY, agentId)]);
  return alive === 1 ? 'alive' : record === 1 ? 'down' : 'unknown';
}

/**
 * Sends one entry to an inbox or den task stream (XADD + doorbell); resolves
 * with the entry id. Signed over the stream key when `keys` is given
 * (docs/security.md), so it cannot be moved to another stream.
 */
export function appendEnvelope(redis: Redis, key: string, envelope: Envelope, maxLen: number, keys?: KeyRing): Promise<string> {
  return appendEntry(redis, key, sealEnvelope(envelope, key, keys), maxLen);
}

/**
 * Durable coordination for one daemon: the inbox/task consumer, sending,
 * requests and their replies, the hand-over of a dead member's tasks, and the
 * retention of absent agents' inboxes. Uses only the daemon's command
 * connection; the doorbells arrive through the daemon's subscriber.
 */
export class Durable implements DurableApi {
  readonly consumer: DurableConsumer;
  readonly #o: DurableOptions;
  readonly #waiting = new Map<string, Waiting>();
  readonly #maxLen: number;
  #poll: NodeJS.Timeout | undefined;
  #ticks = 0;
  #started = false;

  constructor(options: DurableOptions) {
    this.#o = options;
    const d = options.config.durable;
    this.#maxLen = d.maxLen;
    this.consumer = new DurableConsumer({
      redis: options.redis,
      agent: options.agent,
      log: options.log,
      attempts: d.attempts,
      backoffMs: d.backoffMs,
      backoffMaxMs: d.backoffMaxMs,
      concurrency: d.concurrency,
      maxLen: d.maxLen,
      handlerTimeoutMs: options.config.queue.handlerTimeoutMs,
      maxBytes: options.config.events.maxBytes,
      orphanAfterMs: Math.round(d.orphanAfter * 1000),
      makeReply: (inReplyTo, outcome, stream) => sealEnvelope(this.#replyEnvelope(inReplyTo, outcome), stream, options.keys),
      ...(options.config.security.signing !== 'off' && options.keys ? { trust: { signing: options.config.security.signing, keys: options.keys } } : {}),
      onReply: (raw) => this.#onReply(raw),
      ...(options.hooks ? { hooks: options.hooks } : {}),
    });
  }

  /** Doorbell channels and their listener, for the daemon's subscriber. */
  doorbells(): Map<string, (message: string) => void> {
    return new Map(this.consumer.channels.map((c) => [c, (m: string) => this.consumer.ring(m)]));
  }

  /** Starts reading (after presence join, so a hand-over can already find us in the den). */
  async start(bindings: readonly Binding[]): Promise<void> {
    this.consumer.setBindings(bindings);
    await this.consumer.start();
    this.#started = true;
    const every = this.#o.config.durable.pollInterval * 1000;
    const refreshEvery = Math.max(1, Math.floor((this.#o.config.durable.orphanAfter * 1000) / 4 / every));
    const retentionEvery = Math.max(1, Math.floor(Math.min(60_000, (this.#o.config.durable.retention * 1000) / 10) / every));
    this.#poll = setInterval(() => {
      this.#ticks++;
      this.consumer.poll();
      void this.#maintain(this.#ticks % refreshEvery === 0, this.#ticks % retentionEvery === 0);
    }, every);
    this.#poll.unref();
  }

  async #maintain(refresh: boolean, retention: boolean): Promise<void> {
    if (this.#o.redis.status !== 'ready') return;
    // Each step on its own: a failing one (a broken inbox, say) must not stop the orphan check or retention.
    const steps: Array<[string, () => Promise<unknown>]> = [
      ['refresh', () => (refresh ? this.consumer.refreshClaims() : Promise.resolve())],
      ['orphans', () => this.consumer.claimOrphans()],
      ['retention', () => (retention ? this.expireInboxes() : Promise.resolve())],
    ];
    for (const [step, run] of steps) {
      try {
        await run();
      } catch (err) {
        this.#o.log.debug({ step, err: describeError(err) }, 'durable maintenance failed; retrying at the next tick');
      }
    }
  }

  // --- sending ---------------------------------------------------------------

  async send(agentId: string, type: string, data: unknown): Promise<string> {
    checkId('agent id', agentId);
    const envelope = makeEnvelope(type, data, this.#o.agent);
    await appendEnvelope(this.#o.redis, inboxKey(agentId), envelope, this.#maxLen, this.#o.keys);
    return envelope.id;
  }

  async submit(type: string, data: unknown, options: SubmitOptions = {}): Promise<string> {
    const den = options.den ?? this.#o.agent.den;
    checkId('den', den);
    const envelope = makeEnvelope(type, data, this.#o.agent);
    await appendEnvelope(this.#o.redis, denTasksKey(den), envelope, this.#maxLen, this.#o.keys);
    return envelope.id;
  }

  async request<T = unknown>(agentId: string, type: string, data: unknown, options: RequestOptions = {}): Promise<T> {
    checkId('agent id', agentId);
    if (!this.#started) throw new AgentdError('AGENTD_ERR_USAGE', 'request() needs the durable consumer running (durable.enabled, after start) to receive its reply');
    const envelope = { ...makeEnvelope(type, data, this.#o.agent), replyTo: this.#o.agent.id };
    const id = envelope.id;
    options.signal?.throwIfAborted();
    const state = await targetState(this.#o.redis, agentId);
    if (state === 'unknown') throw new RequestError('no_such_agent', `request ${type} to ${agentId}: no such agent (no heartbeat, no registry record)`, agentId, id);
    if (state === 'down') throw new RequestError('agent_down', `request ${type} to ${agentId}: the agent is down or offline`, agentId, id);
    // Aborted while the target was checked: an 'abort' listener added now would never fire.
    options.signal?.throwIfAborted();
    const timeoutMs = options.timeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
    return new Promise<T>((resolve, reject) => {
      const cleanup = (): void => {
        clearTimeout(timer);
        options.signal?.removeEventListener('abort', onAbort);
        this.#waiting.delete(id);
      };
      const onAbort = (): void => {
        cleanup();
        reject(options.signal?.reason);
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new RequestError('timeout', `request ${type} to ${agentId}: no reply within ${timeoutMs} ms`, agentId, id));
      }, timeoutMs);
      options.signal?.addEventListener('abort', onAbort, { once: true });
      this.#waiting.set(id, {
        target: agentId,
        resolve: (v) => {
          cleanup();
          resolve(v as T);
        },
        reject: (e) => {
          cleanup();
          reject(e);
        },
      });
      appendEnvelope(this.#o.redis, inboxKey(agentId), envelope, this.#maxLen, this.#o.keys).catch((err: unknown) => {
        cleanup();
        reject(err);
      });
    });
  }

  #replyEnvelope(inReplyTo: string, outcome: { ok: true; data: unknown } | { ok: false; error: ReplyError }): Envelope & Readonly<Record<string, unknown>> {
    const base = makeEnvelope('reply', outcome.ok ? outcome.data : null, this.#o.agent);
    return outcome.ok ? { ...base, inReplyTo, ok: true } : { ...base, inReplyTo, ok: false, error: outcome.error };
  }

  #onReply(raw: Record<string, unknown>): boolean {
    const id = raw['inReplyTo'] as string;
    const w = this.#waiting.get(id);
    if (!w) return false;
    if (raw['ok'] === true) {
      w.resolve(raw['data'] === undefined ? null : raw['data']);
      return true;
    }
    const error = (raw['error'] ?? {}) as { code?: unknown; message?: unknown };
    const message = typeof error.message === 'string' ? error.message.slice(0, 2_000) : 'no message';
    const reason = error.code === 'dead_lettered' ? 'dead_lettered' : 'handler_failed';
    w.reject(new RequestError(reason, `request to ${w.target} failed: ${message}`, w.target, id));
    return true;
  }

  /** An agent_down was seen on the bus: requests waiting on that agent fail now rather than at their timeout. */
  peerDown(agentId: string): void {
    for (const [id, w] of this.#waiting) {
      if (w.target === agentId) w.reject(new RequestError('agent_down', `request to ${agentId}: the agent went down while the request waited`, agentId, id));
    }
  }

  // --- hand-over and retention -----------------------------------------------

  /**
   * A watcher reaped `dead` of `den`: its pending den tasks go to a live
   * member at once (min-idle 0) — to this agent when it is in that den, else
   * to a random live member, whose doorbell is rung with "pending".
   */
  async handover(dead: string, den: string): Promise<number> {
    const streamKey = denTasksKey(den);
    let moved = 0;
    try {
      let target = this.#o.agent.id;
      if (den !== this.#o.agent.den) {
        const members = (await this.#o.redis.smembers(denMembersKey(den))).filter((m) => m !== dead);
        if (members.length === 0) return 0; // nobody to take them; a member that joins finds them as orphans
        target = members[Math.floor(Math.random() * members.length)]!;
      }
      for (let round = 0; round < 100; round++) {
        const rows = await pendingEntries(this.#o.redis, streamKey, '-', 1_000, dead);
        if (rows.length === 0) break;
        if (target === this.#o.agent.id) {
          const n = await this.consumer.takeOver(streamKey, rows);
          moved += n;
          if (n === 0) break;
        } else {
          const ids = rows.map((r) => r.id);
          await this.#o.redis.xclaim(streamKey, DURABLE_GROUP, target, 0, ...ids, 'JUSTID');
          moved += ids.length;
        }
      }
      if (target !== this.#o.agent.id && moved > 0) await this.#o.redis.publish(streamKey, 'pending');
      await this.#o.redis.xgroup('DELCONSUMER', streamKey, DURABLE_GROUP, dead).catch(() => undefined);
      if (moved > 0) this.#o.log.warn({ peer: dead, den, stream: streamKey, tasks: moved, to: target }, 'handed over the pending tasks of a dead member');
    } catch (err) {
      this.#o.log.warn({ peer: dead, den, err: describeError(err) }, 'hand-over of a dead member\'s tasks failed; the orphan check will take them');
    }
    return moved;
  }

  /** Dead-letters the inboxes of agents down or offline for longer than durable.retention. */
  async expireInboxes(now: number = Date.now()): Promise<number> {
    const retentionMs = this.#o.config.durable.retention * 1000;
    let moved = 0;
    const registry = await this.#o.redis.hgetall(REGISTRY_KEY);
    for (const [id, raw] of Object.entries(registry)) {
      let rec: { status?: unknown; downAt?: unknown; lastSeen?: unknown };
      try {
        rec = JSON.parse(raw) as typeof rec;
      } catch {
        continue;
      }
      if (rec === null || typeof rec !== 'object' || (rec.status !== 'down' && rec.status !== 'offline')) continue;
      const since = typeof rec.downAt === 'number' ? rec.downAt : typeof rec.lastSeen === 'number' ? rec.lastSeen : undefined;
      if (since === undefined || now - since < retentionMs || !ID_PATTERN.test(id)) continue;
      const inbox = inboxKey(id);
      const n = await withScripts(this.#o.redis).agentdExpireInbox(
        inbox,
        deadLetterKey(inbox),
        heartbeatKey(id),
        DURABLE_GROUP,
        this.#maxLen,
        `recipient ${id} was ${String(rec.status)} for more than durable.retention (${this.#o.config.durable.retention} s)`,
      );
      if (n > 0) {
        moved += n;
        this.#o.hooks?.deadLettered?.('inbox', 'retention');
        this.#o.log.error({ code: Code.AGENTD_ERR_DEAD_LETTERED, peer: id, stream: inbox, entries: n, reason: 'retention' }, 'inbox of an absent agent dead-lettered after durable.retention');
      }
    }
    return moved;
  }

  /**
   * Stops reading, gives running entries up to `drainMs`, then hands this
   * agent's pending den tasks to a live member (a graceful stop reaps nobody).
   * The inbox stays pending for this agent's return.
   */
  async stop(drainMs: number): Promise<void> {
    clearInterval(this.#poll);
    if (!this.#started) return;
    this.#started = false;
    await this.consumer.stop(drainMs);
    for (const [id, w] of this.#waiting) w.reject(new AgentdError('AGENTD_ERR_CLOSED', `request ${id}: daemon closed before the reply came`));
    if (this.#o.redis.status !== 'ready') return;
    try {
      const { key, rows } = await this.consumer.ownPendingTasks();
      if (rows.length === 0) return;
      const members = (await this.#o.redis.smembers(denMembersKey(this.#o.agent.den))).filter((m) => m !== this.#o.agent.id);
      if (members.length === 0) return;
      const target = members[Math.floor(Math.random() * members.length)]!;
      await this.#o.redis.xclaim(key, DURABLE_GROUP, target, 0, ...rows.map((r) => r.id), 'JUSTID');
      await this.#o.redis.publish(key, 'pending');
      this.#o.log.info({ tasks: rows.length, to: target }, 'handed unfinished den tasks to a live member');
    } catch (err) {
      this.#o.log.warn({ err: describeError(err) }, 'could not hand over unfinished den tasks; they wait for this agent or the orphan check');
    }
  }
}

export type { StreamKind, HandlerOutcome };
