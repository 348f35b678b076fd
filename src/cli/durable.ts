/**
 * `agentd send | request | submit | inbox | dead-letter`: durable messages
 * from the command line (docs/durable.md). Each run uses one short-lived
 * connection of its own, so `request` may block on it.
 */
import { randomBytes } from 'node:crypto';
import type { Redis } from 'ioredis';
import { makeEnvelope } from '../bus/publish.ts';
import type { AgentdConfig } from '../config/schema.ts';
import { ID_PATTERN } from '../config/schema.ts';
import { appendEnvelope, targetState } from '../durable/durable.ts';
import { REQUEST_FAILURE_CODES, type RequestFailure } from '../durable/errors.ts';
import { appendEntry, entryTime, parseEntries } from '../durable/streams.ts';
import { AgentdError } from '../errors.ts';
import { loadKeys, type KeyRing } from '../security/keys.ts';
import { DURABLE_GROUP, deadLetterKey, denTasksKey, inboxKey, streamOfDeadLetter } from '../redis/keys.ts';
import type { Io } from './commands.ts';

export type Connect = (config: AgentdConfig) => Promise<Redis>;

function usage(message: string): never {
  throw new AgentdError('AGENTD_ERR_USAGE', message);
}

function checkId(what: string, id: string | undefined, usageLine: string): string {
  if (id === undefined) usage(`${usageLine}: missing ${what}`);
  if (!ID_PATTERN.test(id)) usage(`${what} must be 1-128 characters of A-Z a-z 0-9 . _ - (got ${JSON.stringify(id.slice(0, 140))})`);
  return id;
}

function parseJson(text: string | undefined): unknown {
  if (text === undefined) return null;
  try {
    return JSON.parse(text) as unknown;
  } catch (err) {
    usage(`JSON argument does not parse: ${(err as Error).message}`);
  }
}

function noExtra(extra: readonly string[], usageLine: string): void {
  if (extra.length > 0) usage(`${usageLine}: quote the JSON (extra argument ${JSON.stringify(extra[0])})`);
}

function table(rows: string[][]): string {
  const widths = rows[0]?.map((_, c) => Math.max(...rows.map((r) => (r[c] ?? '').length))) ?? [];
  return rows.map((r) => r.map((cell, c) => cell.padEnd(widths[c] ?? 0)).join('  ').trimEnd()).join('\n');
}

async function withRedis<T>(connect: Connect, config: AgentdConfig, work: (r: Redis) => Promise<T>): Promise<T> {
  const redis = await connect(config);
  try {
    return await work(redis);
  } finally {
    redis.disconnect();
  }
}

/** The signing keys (security.signing warn or require): what the CLI writes to a stream is signed like a daemon's. */
function signingKeys(config: AgentdConfig): KeyRing | undefined {
  return config.security.signing === 'off' ? undefined : loadKeys(config.security.keysFile);
}

/** `agentd send AGENT EVENT [JSON]` and `agentd submit EVENT [JSON] [--den D]`. */
export async function sendCommand(kind: 'send' | 'submit', config: AgentdConfig, positionals: readonly string[], den: string | undefined, json: boolean, io: Io, connect: Connect): Promise<number> {
  const line = kind === 'send' ? 'agentd send AGENT EVENT [JSON]' : 'agentd submit EVENT [JSON] [--den D]';
  const [first, second, third, ...extra] = positionals;
  const target = kind === 'send' ? checkId('AGENT', first, line) : checkId('den', den ?? config.agent.den, line);
  const type = kind === 'send' ? second : first;
  const dataText = kind === 'send' ? third : second;
  if (type === undefined) usage(`${line}: missing EVENT`);
  noExtra(kind === 'send' ? extra : [third, ...extra].filter((x): x is string => x !== undefined), line);
  const envelope = makeEnvelope(type, parseJson(dataText), { id: config.agent.id, den: config.agent.den });
  const key = kind === 'send' ? inboxKey(target) : denTasksKey(target);
  const entry = await withRedis(connect, config, (r) => appendEnvelope(r, key, envelope, config.durable.maxLen, signingKeys(config)));
  io.stdout.write(json ? `${JSON.stringify({ stream: key, entry, id: envelope.id })}\n` : `${kind === 'send' ? 'sent' : 'submitted'} ${type} (id ${envelope.id}) to ${key} as entry ${entry}\n`);
  return 0;
}

/** `agentd request AGENT EVENT [JSON] [--timeout MS]`: prints the reply's data; exit 1 on any failure. */
export async function requestCommand(config: AgentdConfig, positionals: readonly string[], timeoutText: string | undefined, json: boolean, io: Io, connect: Connect): Promise<number> {
  const line = 'agentd request AGENT EVENT [JSON] [--timeout MS]';
  const [agent, type, dataText, ...extra] = positionals;
  const target = checkId('AGENT', agent, line);
  if (type === undefined) usage(`${line}: missing EVENT`);
  noExtra(extra, line);
  const timeoutMs = timeoutText === undefined ? 30_000 : Number(timeoutText);
  if (!Number.isSafeInteger(timeoutMs) || timeoutMs < 1) usage(`--timeout must be a whole number of ms, at least 1 (got ${JSON.stringify(timeoutText)})`);
  // A reply inbox of this run's own: a daemon with the same agent id must not take the reply.
  const replyTo = `cli-${config.agent.id.slice(0, 100)}-${randomBytes(4).toString('hex')}`;
  const envelope = { ...makeEnvelope(type, parseJson(dataText), { id: config.agent.id, den: config.agent.den }), replyTo };
  const fail = (reason: RequestFailure, what: string): number => {
    const message = `${what} [${REQUEST_FAILURE_CODES[reason]}]`;
    io.stderr.write(`agentd: ${message}\n`);
    if (json) io.stdout.write(`${JSON.stringify({ ok: false, reason, message, id: envelope.id })}\n`);
    return 1;
  };
  return withRedis(connect, config, async (r) => {
    const state = await targetState(r, target);
    if (state === 'unknown') return fail('no_such_agent', `request ${type} to ${target}: no such agent (no heartbeat, no registry record)`);
    if (state === 'down') return fail('agent_down', `request ${type} to ${target}: the agent is down or offline`);
    const reply = inboxKey(replyTo);
    try {
      await appendEnvelope(r, inboxKey(target), envelope, config.durable.maxLen, signingKeys(config));
      const deadline = Date.now() + timeoutMs;
      let last = '0';
      while (Date.now() < deadline) {
        const block = Math.max(1, Math.min(1_000, deadline - Date.now()));
        const got = (await r.xread('COUNT', 10, 'BLOCK', block, 'STREAMS', reply, last)) as Array<[string, unknown]> | null;
        for (const [, raw] of got ?? []) {
          for (const e of parseEntries(raw)) {
            last = e.id;
            let env: Record<string, unknown>;
            try {
              env = JSON.parse(e.envelope ?? '') as Record<string, unknown>;
            } catch {
              continue;
            }
            if (env['event'] !== 'reply' || env['inReplyTo'] !== envelope.id) continue;
            if (env['ok'] === true) {
              io.stdout.write(json ? `${JSON.stringify({ ok: true, data: env['data'] ?? null, id: envelope.id })}\n` : `${JSON.stringify(env['data'] ?? null)}\n`);
              return 0;
            }
            const error = (env['error'] ?? {}) as { code?: unknown; message?: unknown };
            const code = error.code === 'dead_lettered' ? 'dead_lettered' : 'handler_failed';
            return fail(code, `request ${type} to ${target} failed: ${String(error.message ?? 'no message')}`);
          }
        }
      }
      return fail('timeout', `request ${type} to ${target}: no reply within ${timeoutMs} ms`);
    } finally {
      await r.del(reply).catch(() => undefined);
    }
  });
}

export interface InboxInfo {
  readonly stream: string;
  readonly length: number;
  readonly pending: number;
  /** Entries not yet read by the group (null when the server cannot tell). */
  readonly unread: number | null;
  /** Unix ms of the oldest unacknowledged entry (pending or unread), null when none. */
  readonly oldest: number | null;
  readonly consumers: ReadonlyArray<{ readonly name: string; readonly pending: number; readonly idleMs: number }>;
  readonly deadLetters: number;
}

function fieldsOf(row: unknown): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  if (!Array.isArray(row)) return out;
  for (let i = 0; i + 1 < row.length; i += 2) out[String(row[i])] = row[i + 1];
  return out;
}

/** Length, pending, unread, oldest unacknowledged and dead letters of one durable stream. */
export async function streamInfo(r: Redis, stream: string): Promise<InboxInfo> {
  const [length, dead] = await Promise.all([r.xlen(stream), r.xlen(deadLetterKey(stream))]);
  let pending = 0;
  let unread: number | null = 0;
  let oldest: number | null = null;
  let consumers: InboxInfo['consumers'] = [];
  if (length > 0) {
    const groups = ((await r.xinfo('GROUPS', stream).catch(() => [])) as unknown[]).map(fieldsOf);
    const g = groups.find((x) => x['name'] === DURABLE_GROUP);
    if (!g) {
      unread = length;
      const [first] = parseEntries(await r.xrange(stream, '-', '+', 'COUNT', 1));
      oldest = first ? entryTime(first.id) : null;
    } else {
      pending = Number(g['pending'] ?? 0);
      unread = g['lag'] === null || g['lag'] === undefined ? null : Number(g['lag']);
      const summary = (await r.xpending(stream, DURABLE_GROUP)) as unknown[];
      const minPending = typeof summary[1] === 'string' ? entryTime(summary[1]) : null;
      const [firstUnread] = parseEntries(await r.xrange(stream, `(${String(g['last-delivered-id'])}`, '+', 'COUNT', 1));
      const candidates = [minPending, firstUnread ? entryTime(firstUnread.id) : null].filter((x): x is number => x !== null);
      oldest = candidates.length > 0 ? Math.min(...candidates) : null;
      consumers = ((await r.xinfo('CONSUMERS', stream, DURABLE_GROUP)) as unknown[]).map(fieldsOf).map((c) => ({
        name: String(c['name']),
        pending: Number(c['pending'] ?? 0),
        idleMs: Number(c['idle'] ?? 0),
      }));
    }
  }
  return { stream, length, pending, unread, oldest, consumers, deadLetters: dead };
}

/** `agentd inbox AGENT` (or `agentd inbox --den D` for a den's task stream). */
export async function inboxCommand(config: AgentdConfig, positionals: readonly string[], den: string | undefined, json: boolean, io: Io, connect: Connect): Promise<number> {
  const [agent, ...extra] = positionals;
  if (extra.length > 0) usage(`agentd inbox AGENT takes one AGENT (extra: ${JSON.stringify(extra[0])})`);
  const stream = agent !== undefined ? inboxKey(checkId('AGENT', agent, 'agentd inbox AGENT')) : denTasksKey(checkId('den', den ?? config.agent.den, 'agentd inbox --den D'));
  const info = await withRedis(connect, config, (r) => streamInfo(r, stream));
  if (json) {
    io.stdout.write(`${JSON.stringify(info)}\n`);
    return 0;
  }
  const age = info.oldest === null ? '-' : `${Math.max(0, Math.round((Date.now() - info.oldest) / 1000))}s ago`;
  io.stdout.write(
    `${table([
      ['STREAM', 'LENGTH', 'PENDING', 'UNREAD', 'OLDEST UNACKED', 'DEAD LETTERS'],
      [info.stream, String(info.length), String(info.pending), info.unread === null ? '?' : String(info.unread), age, String(info.deadLetters)],
    ])}\n`,
  );
  if (info.consumers.length > 0) io.stdout.write(`${table([['CONSUMER', 'PENDING', 'IDLE'], ...info.consumers.map((c) => [c.name, String(c.pending), `${(c.idleMs / 1000).toFixed(1)}s`])])}\n`);
  return 0;
}

/** `agentd dead-letter list|retry|purge [AGENT] [--den D] [--yes]`. */
export async function deadLetterCommand(config: AgentdConfig, positionals: readonly string[], flags: { den: string | undefined; json: boolean; yes: boolean }, io: Io, connect: Connect): Promise<number> {
  const line = 'agentd dead-letter list|retry|purge [AGENT] [--den D]';
  const [sub, agent, ...extra] = positionals;
  if (sub !== 'list' && sub !== 'retry' && sub !== 'purge') usage(`dead-letter needs a subcommand: list, retry or purge${sub ? ` (got ${JSON.stringify(sub)})` : ''}`);
  if (extra.length > 0) usage(`${line}: one AGENT at most (extra: ${JSON.stringify(extra[0])})`);
  const source = agent !== undefined ? inboxKey(checkId('AGENT', agent, line)) : denTasksKey(checkId('den', flags.den ?? config.agent.den, line));
  const dead = deadLetterKey(source);
  if (sub === 'purge' && !flags.yes) usage(`dead-letter purge deletes ${dead}; pass --yes`);
  return withRedis(connect, config, async (r) => {
    const entries = parseEntries(await r.xrange(dead, '-', '+', 'COUNT', 10_000));
    if (sub === 'list') {
      const rows = entries.map((e) => {
        let event: unknown = null;
        try {
          event = (JSON.parse(e.envelope ?? '') as { event?: unknown }).event ?? null;
        } catch {
          // shown as null
        }
        return { id: e.id, at: entryTime(e.id), event, error: e.fields['error'] ?? null, attempts: Number(e.fields['attempts'] ?? 0), sourceId: e.fields['source_id'] ?? null, envelope: e.envelope ?? null };
      });
      if (flags.json) io.stdout.write(`${JSON.stringify({ stream: dead, entries: rows })}\n`);
      else if (rows.length === 0) io.stdout.write(`no dead letters in ${dead}\n`);
      else io.stdout.write(`${table([['ID', 'EVENT', 'ATTEMPTS', 'ERROR'], ...rows.map((x) => [x.id, String(x.event), String(x.attempts), String(x.error).slice(0, 120)])])}\n`);
      return 0;
    }
    if (sub === 'purge') {
      const removed = await r.del(dead);
      io.stdout.write(flags.json ? `${JSON.stringify({ stream: dead, purged: removed === 1 ? entries.length : 0 })}\n` : `purged ${dead} (${entries.length} entr${entries.length === 1 ? 'y' : 'ies'})\n`);
      return 0;
    }
    const back = streamOfDeadLetter(dead)!;
    let retried = 0;
    for (const e of entries) {
      if (e.envelope === undefined || e.envelope === '') continue;
      // Append first, delete second: a crash in between leaves a duplicate, never a loss.
      await appendEntry(r, back, e.envelope, config.durable.maxLen);
      await r.xdel(dead, e.id);
      retried++;
    }
    io.stdout.write(flags.json ? `${JSON.stringify({ stream: back, retried })}\n` : `moved ${retried} dead letter${retried === 1 ? '' : 's'} back to ${back}\n`);
    return 0;
  });
}
