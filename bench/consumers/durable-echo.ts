/**
 * Responders for the request/reply benchmark. `agentd`: a daemon whose `echo`
 * handler returns the request's data. `bare`: an ioredis subscriber that
 * publishes every message of bench:req back on bench:resp. Print
 * {"ready": true} once listening; run until killed.
 *
 *   node bench/consumers/durable-echo.ts --kind agentd|bare --url URL [--id AGENT_ID]
 */
import { Redis } from 'ioredis';
import { parseOptions } from '../args.ts';
import { benchDaemon } from './daemon.ts';

const o = parseOptions('node bench/consumers/durable-echo.ts', 'An echo responder (agentd request/reply or bare pub/sub) until killed.', {
  kind: { type: 'string', choices: ['agentd', 'bare'], help: 'which responder' },
  url: { type: 'string', help: 'Redis URL' },
  id: { type: 'string', default: `echo-${process.pid}`, help: "the agentd responder's agent id" },
});
if (o.kind === 'bare') {
  const sub = new Redis(o.url);
  const pub = new Redis(o.url);
  sub.on('message', (_channel: string, message: string) => void pub.publish('bench:resp', message));
  await sub.subscribe('bench:req');
} else {
  await benchDaemon(o.url, 'bench-rr', [{ name: 'echo', handlers: { echo: (e) => e.data } }], {}, o.id).start();
}
console.log(JSON.stringify({ ready: true }));
