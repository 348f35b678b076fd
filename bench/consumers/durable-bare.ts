/**
 * The ceiling for durable throughput: a bare ioredis XREADGROUP / XACK loop on
 * one connection (non-blocking reads of COUNT entries, parse each envelope,
 * one XACK per batch). Prints {"events", "ms"} from the first read to the
 * last acknowledgement once COUNT entries are acknowledged.
 *
 *   node bench/consumers/durable-bare.ts --url URL --stream KEY --count N [--batch N]
 */
import { Redis } from 'ioredis';
import { parseOptions } from '../args.ts';

const o = parseOptions('node bench/consumers/durable-bare.ts', 'The bare XREADGROUP/XACK loop, from a line on stdin until COUNT entries are acknowledged.', {
  url: { type: 'string', help: 'Redis URL' },
  stream: { type: 'string', help: 'stream key (group agentd)' },
  count: { type: 'number', integer: true, min: 1, help: 'entries to wait for' },
  batch: { type: 'number', integer: true, min: 1, default: 100, help: 'XREADGROUP COUNT' },
});
const { stream, count, batch } = o;
const redis = new Redis(o.url);
console.log(JSON.stringify({ ready: true }));
await new Promise((r) => process.stdin.once('data', r));
let acked = 0;
const t0 = performance.now();
while (acked < count) {
  const reply = (await redis.xreadgroup('GROUP', 'agentd', 'bare', 'COUNT', batch, 'STREAMS', stream, '>')) as Array<[string, Array<[string, string[]]>]> | null;
  const entries = reply?.[0]?.[1] ?? [];
  if (entries.length === 0) continue;
  const ids: string[] = [];
  for (const [id, fields] of entries) {
    JSON.parse(fields[1] ?? 'null');
    ids.push(id);
  }
  await redis.xack(stream, 'agentd', ...ids);
  acked += ids.length;
}
console.log(JSON.stringify({ events: acked, ms: performance.now() - t0 }));
redis.disconnect();
process.exit(0);
