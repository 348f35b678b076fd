/**
 * The ceiling for durable throughput: a bare ioredis XREADGROUP / XACK loop on
 * one connection (non-blocking reads of COUNT entries, parse each envelope,
 * one XACK per batch). Prints {"events", "ms"} from the first read to the
 * last acknowledgement once COUNT entries are acknowledged.
 *
 *   node bench/consumers/durable-bare.ts URL STREAM COUNT [BATCH]
 */
import { Redis } from 'ioredis';

const [url = '', stream = '', countText = '0', batchText = '100'] = process.argv.slice(2);
const count = Number(countText);
const batch = Number(batchText);
const redis = new Redis(url);
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
