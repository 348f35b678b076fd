/**
 * Detection time: kill -9 an agent, measure how long until its peers publish
 * agent_down, over many kills; with keyspace expiry notifications and with
 * the sweep alone. Also checks that every death is reported exactly once.
 *
 *   node bench/detection.ts [--kills N] [--json] (--help lists the options)
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { spawnAgentd, type DaemonProcess } from '../test/helpers/daemon.ts';
import { startRedis } from '../test/helpers/redis.ts';
import { benchOptions } from './args.ts';
import { output, summarize } from './stats.ts';

const opts = benchOptions('detection', 'Detection time: kill -9 an agent, time until its peers publish agent_down; with and without expiry notifications.');

const TTL = 2;
const INTERVAL = 0.5;
const SWEEP = 0.5;
const WATCHERS = 3;
const kills = opts.kills;

interface Down {
  agent: string;
  via: string;
  at: number;
}

async function run(notifications: 'enable' | 'off') {
  const server = await startRedis({ requireControl: true });
  const observer = server.client();
  const downs: Down[] = [];
  const online = new Set<string>();
  observer.on('pmessage', (_p: string, channel: string, message: string) => {
    const env = JSON.parse(message) as { event: string; data: { agent: string; via?: string } };
    if (env.event === 'agent_down') downs.push({ agent: env.data.agent, via: env.data.via ?? '?', at: Date.now() });
    if (env.event === 'agent_online') online.add(env.data.agent);
    void channel;
  });
  await observer.psubscribe('agent:events:agent_*');
  if (notifications === 'off') await observer.config('SET', 'notify-keyspace-events', '');

  const env = (id: string, watch: boolean): Record<string, string> => ({
    AGENTD_REDIS_URL: server.url,
    AGENTD_AGENT_ID: id,
    AGENTD_DEN: 'bench',
    AGENTD_HEARTBEAT_TTL: String(TTL),
    AGENTD_HEARTBEAT_INTERVAL: String(INTERVAL),
    AGENTD_SWEEP_INTERVAL: String(SWEEP),
    AGENTD_WATCH: watch ? 'on' : 'off',
    AGENTD_WATCH_NOTIFICATIONS: notifications,
    AGENTD_LOG_LEVEL: 'warn',
  });
  const watchers: DaemonProcess[] = [];
  for (let i = 0; i < WATCHERS; i++) watchers.push(spawnAgentd(['run'], { env: env(`watcher-${i}`, true) }));
  while (online.size < WATCHERS) await sleep(20);

  const delays: number[] = [];
  const byVia: Record<string, number> = {};
  let duplicates = 0;
  for (let k = 0; k < kills; k++) {
    const id = `victim-${k}`;
    const victim = spawnAgentd(['run'], { env: env(id, false) });
    while (!online.has(id)) await sleep(5);
    // Die at a random point of the beat cycle, as real crashes do.
    await sleep(Math.random() * INTERVAL * 1000 + INTERVAL * 1000);
    victim.signal('SIGKILL');
    const killedAt = Date.now();
    await victim.exited;
    while (!downs.some((d) => d.agent === id)) {
      if (Date.now() - killedAt > (TTL + SWEEP) * 1000 * 3) throw new Error(`${id} was never reported down`);
      await sleep(5);
    }
    const first = downs.find((d) => d.agent === id)!;
    delays.push(first.at - killedAt);
    byVia[first.via] = (byVia[first.via] ?? 0) + 1;
  }
  await sleep(SWEEP * 3000);
  for (let k = 0; k < kills; k++) if (downs.filter((d) => d.agent === `victim-${k}`).length !== 1) duplicates++;
  await Promise.all(watchers.map((w) => w.stop()));
  await server.stop();
  const s = summarize(delays);
  return {
    notifications,
    kills,
    'p50 ms': Math.round(s.p50),
    'p99 ms': Math.round(s.p99),
    'min ms': Math.round(s.min),
    'max ms': Math.round(s.max),
    'bound ms (TTL+sweep)': (TTL + SWEEP) * 1000,
    via: Object.entries(byVia)
      .map(([k, v]) => `${k}:${v}`)
      .join(' '),
    'not exactly once': duplicates,
  };
}

const rows = [await run('enable'), await run('off')];
output(opts.json, 'detection', rows, { ttl: TTL, interval: INTERVAL, sweep: SWEEP, watchers: WATCHERS }, `TTL ${TTL} s, interval ${INTERVAL} s, sweep ${SWEEP} s, ${WATCHERS} watchers`);
