/**
 * Dispatch throughput: how many events per second one consumer handles when
 * it has a backlog to chew through. Each consumer is stopped (SIGSTOP) while
 * the events are published, then let go (SIGCONT): so the publisher's speed
 * does not matter, and every consumer reads the same kind of backlog.
 *   - bare:      an ioredis PSUBSCRIBE loop that only parses the JSON (the ceiling)
 *   - agentd:    the daemon with a no-op plugin (queue.max = the event count: nothing dropped)
 *   - agentd-signed-off / agentd-require: the same daemon fed signed envelopes
 *                (distinct ids, ~250 bytes), with security.signing off and require:
 *                the cost of verification (HMAC, tolerance, replay window)
 *   - moleculer: Moleculer's Redis transporter delivering the events to a service
 *                (its own producer, since it speaks its own packet format)
 *
 *   node bench/dispatch.ts [--events N] [--reps R] [--no-peers] [--json] (--help lists the options)
 */
import { join } from 'node:path';
import { benchOptions } from './args.ts';
import { startRedis } from '../test/helpers/redis.ts';
import { newSecret, writeKeysFile } from '../test/helpers/keys.ts';
import { makeEnvelope } from '../src/bus/publish.ts';
import { parseKeys } from '../src/security/keys.ts';
import { sealEnvelope } from '../src/security/signing.ts';
import { CONSUMERS, ensureBuilt, PEERS_DIR, ensurePeer, flood, startConsumer, sleep } from './lib.ts';
import { median, output } from './stats.ts';

const opts = benchOptions('dispatch', 'Dispatch throughput: a backlog read after SIGCONT, agentd against the bare ioredis loop.');
const EVENTS = opts.events;
const REPS = opts.reps;

// Built before anything is timed (the agentd consumers run dist/).
ensureBuilt();
const server = await startRedis({ requireControl: true });
const admin = server.client();
// Unlimited pubsub output buffers: the backlog waits in Redis while a consumer is stopped.
await admin.config('SET', 'client-output-buffer-limit', 'pubsub 0 0 0');
const url = `${server.url}/0`;

const secret = newSecret();
const keysFile = writeKeysFile([['bench', secret]]);
const ring = parseKeys(`bench ${secret}`, 'bench');

const channel = 'agent:events:bench';
const data = { user_id: 'usr-123', text: 'Hello there, this is a benchmark message' };
/** EVENTS signed envelopes with distinct ids (a replay would be dropped), made before the consumer is stopped. */
const makeSigned = (): string[] => Array.from({ length: EVENTS }, () => sealEnvelope(makeEnvelope('bench', data, { id: 'bench-pub', den: 'bench' }), channel, ring));

/** Publishes them pipelined. */
async function floodSigned(messages: string[]): Promise<void> {
  const c = server.client();
  for (let i = 0; i < messages.length; i += 5000) {
    const p = c.pipeline();
    for (const m of messages.slice(i, i + 5000)) p.publish(channel, m);
    await p.exec();
  }
  c.disconnect();
}

type Kind = keyof typeof CONSUMERS | 'agentd-signed-off' | 'agentd-require';

async function once(kind: Kind): Promise<number> {
  const signed = kind === 'agentd-signed-off' || kind === 'agentd-require';
  const script = signed ? CONSUMERS.agentd : CONSUMERS[kind];
  const args = signed ? ['--signing', kind === 'agentd-require' ? 'require' : 'off', '--keys-file', keysFile] : [];
  const messages = signed ? makeSigned() : [];
  const consumer = await startConsumer(script, kind === 'moleculer' ? [url, String(EVENTS)] : ['--url', url, '--count', String(EVENTS), ...args]);
  if (kind === 'moleculer') {
    // The producer must discover the service before the consumer is stopped.
    const producer = await startConsumer(join(PEERS_DIR, 'producer.mjs'), [url, String(EVENTS)], {}, true);
    consumer.child.kill('SIGSTOP');
    producer.child.stdin!.write('go\n');
    await producer.result;
    producer.child.kill('SIGTERM');
  } else {
    consumer.child.kill('SIGSTOP');
    if (signed) await floodSigned(messages);
    else await flood(server.port, EVENTS);
  }
  await sleep(200);
  consumer.child.kill('SIGCONT');
  const result = await consumer.result;
  await new Promise((r) => (consumer.child.exitCode === null ? consumer.child.once('exit', r) : r(null)));
  return (Number(result['events']) / Number(result['ms'])) * 1000;
}

const kinds: Kind[] = ['bare', 'agentd', 'agentd-signed-off', 'agentd-require'];
if (opts.peers && (await ensurePeer('moleculer'))) kinds.push('moleculer');
const rates: Record<string, number[]> = {};
try {
  for (let r = 0; r < REPS; r++) {
    for (const kind of kinds) (rates[kind] ??= []).push(await once(kind));
  }
} finally {
  await server.stop();
}
const bare = median(rates['bare']!);
const rows: Array<Record<string, string | number>> = kinds.map((kind) => ({
  consumer: kind as string,
  'events/s (median)': Math.round(median(rates[kind]!)),
  runs: rates[kind]!.map((x) => Math.round(x)).join(' '),
  'ratio to bare': median(rates[kind]!) / bare,
}));
// Signing cost: require against off, same signed messages, same run.
const signedOff = median(rates['agentd-signed-off']!);
rows.push({ consumer: 'require / signed-off', 'events/s (median)': Math.round(median(rates['agentd-require']!)), runs: '', 'ratio to bare': median(rates['agentd-require']!) / signedOff });
output(opts.json, 'dispatch', rows, { events: EVENTS, repetitions: REPS }, `dispatch throughput: ${EVENTS} events, ${REPS} runs each, backlog read after SIGCONT`);
