/**
 * Responders for the request/reply benchmark. `agentd`: a daemon whose `echo`
 * handler returns the request's data. `bare`: an ioredis subscriber that
 * publishes every message of bench:req back on bench:resp. Print
 * {"ready": true} once listening; run until killed.
 *
 *   node bench/consumers/durable-echo.ts agentd|bare URL [AGENT_ID]
 */
import { Redis } from 'ioredis';
import { AgentDaemon } from '../../src/daemon.ts';
import { loadConfig } from '../../src/config/load.ts';
import { createLogger } from '../../src/log.ts';

const [kind = '', url = '', id = `echo-${process.pid}`] = process.argv.slice(2);
if (kind === 'bare') {
  const sub = new Redis(url);
  const pub = new Redis(url);
  sub.on('message', (_channel: string, message: string) => void pub.publish('bench:resp', message));
  await sub.subscribe('bench:req');
} else {
  const { config } = loadConfig({
    env: {},
    overrides: { redis: { url }, agent: { id, den: 'bench-rr' }, http: { port: 0 }, watch: { enabled: false }, log: { level: 'warn' } },
  });
  const daemon = new AgentDaemon({
    config,
    logger: createLogger({ level: 'error', destination: process.stderr }),
    plugins: [{ name: 'echo', handlers: { echo: (e) => e.data } }],
  });
  await daemon.start();
}
console.log(JSON.stringify({ ready: true }));
