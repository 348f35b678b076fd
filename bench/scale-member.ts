/**
 * One process of den members for bench/scale.ts. Runs `--daemons` embedded
 * AgentDaemon instances (each with its own two connections, subscription,
 * presence and watcher) and `--count` light members: the daemon's own
 * Presence and PeerWatcher classes on a few shared connections, so they send
 * Redis exactly the commands a daemon's presence and watcher send, without a
 * subscriber connection, dispatcher or metrics each. With --notify the
 * process subscribes once to the heartbeat keyspace pattern and hands every
 * notification to each light watcher (each then makes its own Redis calls, as
 * N daemons would; only the N deliveries are not reproduced).
 *
 * stdout: {"ready": true, ...} once every member has joined; stdin: "kill"
 * (the victims stop beating and watching, as a kill -9 would leave them),
 * "quit".
 */
import { createInterface } from 'node:readline';
import { Redis } from 'ioredis';
import { parseOptions } from './args.ts';
import { AgentDaemon, loadConfig } from '../src/index.ts';
import { createLogger } from '../src/log.ts';
import { Presence } from '../src/presence/presence.ts';
import { PeerWatcher } from '../src/presence/watcher.ts';
import { heartbeatKeyspacePattern } from '../src/redis/keys.ts';

const a = parseOptions('node bench/scale-member.ts', 'One process of den members for bench/scale.ts (stdin: kill, stats, quit).', {
  url: { type: 'string', help: 'Redis URL' },
  den: { type: 'string', default: 'scale', help: 'the den' },
  prefix: { type: 'string', default: 'm', help: 'agent id prefix' },
  count: { type: 'number', integer: true, min: 0, default: 0, help: 'light members' },
  daemons: { type: 'number', integer: true, min: 0, default: 0, help: 'embedded AgentDaemons' },
  victims: { type: 'number', integer: true, min: 0, default: 0, help: 'light members that stop beating on "kill"' },
  sweeper: { type: 'string', default: 'lease', choices: ['lease', 'every'], help: 'watch.sweeper' },
  ttl: { type: 'number', min: 1, default: 60, help: 'heartbeat.ttl, seconds' },
  interval: { type: 'number', min: 0.1, default: 20, help: 'heartbeat.interval, seconds' },
  sweep: { type: 'number', min: 0.1, default: 5, help: 'watch.sweepInterval, seconds' },
  'victim-ttl': { type: 'number', min: 1, default: 6, help: "the victims' heartbeat.ttl" },
  'victim-interval': { type: 'number', min: 0.1, default: 2, help: "the victims' heartbeat.interval" },
  conns: { type: 'number', integer: true, min: 1, default: 4, help: 'shared connections of the light members' },
  notify: { type: 'boolean', help: "the daemons listen to expiry notifications" },
  'notify-lights': { type: 'boolean', help: 'hand expiry notifications to the light members too' },
});
const url = a.url;
const { sweeper, ttl, interval, sweep } = a;
const log = createLogger({ level: 'fatal' });

const conns = Array.from({ length: a.conns }, () => new Redis(url, { enableAutoPipelining: false, maxRetriesPerRequest: null }));
interface Light {
  readonly id: string;
  readonly presence: Presence;
  readonly watcher: PeerWatcher;
}
const lights: Light[] = [];
const victims: Light[] = [];
const count = a.count;
const nVictims = a.victims;
for (let i = 0; i < count + nVictims; i++) {
  const victim = i >= count;
  const id = `${a.prefix}-${i}`;
  const redis = conns[i % conns.length]!;
  const agent = { id, den: a.den };
  const t = victim ? a['victim-ttl'] : ttl;
  const iv = victim ? a['victim-interval'] : interval;
  const presence = new Presence({ redis, agent, host: 'bench', pid: process.pid, version: 'bench', ttlSeconds: t, intervalMs: iv * 1000, log });
  const watcher = new PeerWatcher({
    redis,
    agent,
    dens: [],
    sweepIntervalMs: sweep * 1000,
    notifications: a['notify-lights'] ? 'listen' : 'off',
    log,
    ttlMs: t * 1000,
    healthy: () => presence.healthy,
    sweeper,
  });
  (victim ? victims : lights).push({ id, presence, watcher });
}

const daemons: AgentDaemon[] = [];
for (let i = 0; i < a.daemons; i++) {
  const { config } = loadConfig({
    env: {},
    overrides: {
      redis: { url },
      agent: { id: `${a.prefix}-d${i}`, den: a.den },
      heartbeat: { ttl, interval },
      watch: { sweepInterval: sweep, sweeper, notifications: a.notify ? 'listen' : 'off' },
      http: { port: 0 },
      log: { level: 'error' },
    },
  });
  daemons.push(new AgentDaemon({ config, logger: log, plugins: [] }));
}

await Promise.all(conns.map((c) => (c.status === 'ready' ? undefined : new Promise((r) => c.once('ready', r)))));
const all = [...lights, ...victims];
// Join in small batches: a whole den starting in the same millisecond is not what is measured here.
for (let i = 0; i < all.length; i += 100) {
  await Promise.all(all.slice(i, i + 100).map((m) => m.presence.join()));
}
for (const m of all) m.watcher.start();
await Promise.all(daemons.map((d) => d.start()));

let notifier: Redis | undefined;
if (a['notify-lights'] && all.length > 0) {
  notifier = new Redis(url);
  notifier.on('pmessage', (_p: string, channel: string, message: string) => {
    for (const m of all) m.watcher.onKeyspace(0, channel, message);
  });
  await notifier.psubscribe(heartbeatKeyspacePattern(0));
}

console.log(JSON.stringify({ ready: true, lights: lights.length, victims: victims.length, daemons: daemons.length }));

const stdin = createInterface({ input: process.stdin });
stdin.on('line', (line) => {
  if (line === 'kill') {
    for (const v of victims) {
      v.presence.stop();
      v.watcher.stop();
    }
    console.log(JSON.stringify({ killed: victims.map((v) => v.id), at: Date.now() }));
  } else if (line === 'stats') {
    const sweeps = all.reduce((s, m) => s + m.watcher.sweeps, 0);
    console.log(JSON.stringify({ sweeps, leases: all.filter((m) => m.watcher.leases.length > 0).map((m) => m.id) }));
  } else if (line === 'quit') {
    for (const m of all) {
      m.presence.stop();
      m.watcher.stop();
    }
    void Promise.all(daemons.map((d) => d.close({ drainTimeoutMs: 100 }))).finally(() => process.exit(0));
    setTimeout(() => process.exit(0), 5_000).unref();
  }
});
