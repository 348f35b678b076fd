/**
 * A first run of agentd, start to finish, in about fifteen seconds:
 * a throwaway Redis, three agents in one den running the example plugins,
 * a few events, one agent killed with SIGKILL and its peers reporting it
 * down — exactly once — then everything cleaned up.
 *
 *   npm run demo
 *
 * Redis comes from a local `redis-server` on a free port, or from
 * testcontainers when a Docker engine answers (test/helpers/redis.ts).
 *
 * alpha serves the den status page (http.statusPage); the demo prints its
 * URL. Run from a terminal, it waits for Enter before the kill and before
 * the stop, so there is time to watch the page (--no-pause: never wait).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { freePort } from '../test/helpers/ports.ts';
import { startRedis, type TestRedis } from '../test/helpers/redis.ts';

const ENTRY = fileURLToPath(new URL('../src/bin/agentd.ts', import.meta.url));
const PLUGINS = ['log-events.js', 'task-runner.js'].map((p) => fileURLToPath(new URL(`./plugins/${p}`, import.meta.url))).join(',');
const DEN = 'demo';
const AGENTS = ['alpha', 'bravo', 'charlie'];
const VICTIM = 'charlie';
const TTL = 3;
const INTERVAL = 1;
const SWEEP = 1;
/** The agent that serves the den status page. */
const PAGE_AGENT = 'alpha';
const INTERACTIVE = Boolean(process.stdin.isTTY && process.stdout.isTTY) && !process.argv.includes('--no-pause');

const t0 = Date.now();
const since = (): string => `${((Date.now() - t0) / 1000).toFixed(1).padStart(5)} s`;
const say = (text: string): void => console.log(`${since()}  ${text}`);

interface Envelope {
  event: string;
  data: Record<string, unknown> | null;
  source?: string;
}

async function until(what: string, check: () => boolean, timeoutMs = 15_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > end) throw new Error(`gave up waiting for ${what}`);
    await sleep(25);
  }
}

/** In a terminal: wait for Enter, so the status page can be watched. */
async function pause(prompt: string): Promise<void> {
  if (!INTERACTIVE) return;
  const rl = createInterface({ input: process.stdin, output: process.stdout });
  try {
    await rl.question(`${since()}  ${prompt} `);
  } finally {
    rl.close();
  }
}

function agent(redisUrl: string, id: string, httpPort = 0): ChildProcess {
  const strip = process.features.typescript ? [] : ['--experimental-strip-types'];
  return spawn(process.execPath, [...strip, '--disable-warning=ExperimentalWarning', ENTRY, 'run'], {
    env: {
      PATH: process.env['PATH'] ?? '',
      AGENTD_REDIS_URL: redisUrl,
      AGENTD_AGENT_ID: id,
      AGENTD_DEN: DEN,
      AGENTD_PLUGINS: PLUGINS,
      AGENTD_HEARTBEAT_TTL: String(TTL),
      AGENTD_HEARTBEAT_INTERVAL: String(INTERVAL),
      AGENTD_SWEEP_INTERVAL: String(SWEEP),
      AGENTD_HTTP_PORT: String(httpPort),
      ...(httpPort !== 0 ? { AGENTD_HTTP_STATUS_PAGE: 'true' } : {}),
      AGENTD_LOG_LEVEL: 'warn',
    },
    stdio: ['ignore', 'ignore', 'inherit'],
  });
}

let redis: TestRedis | undefined;
const children = new Map<string, ChildProcess>();
let failed = false;

async function main(): Promise<void> {
  console.log('agentd demo: three agents in one den, a throwaway Redis, one agent killed\n');
  redis = await startRedis({ requireControl: true });
  say(`redis    ${redis.kind === 'container' ? 'container' : 'redis-server'} on ${redis.url}`);

  const observer = redis.client();
  const seen: Envelope[] = [];
  observer.on('pmessage', (_p: string, _c: string, message: string) => {
    const env = JSON.parse(message) as Envelope;
    seen.push(env);
    const d = env.data ?? {};
    if (env.event === 'agent_online') say(`event    agent_online   ${String(d['agent'])}${d['rejoined'] ? ' (rejoined)' : ''}`);
    else if (env.event === 'agent_offline') say(`event    agent_offline  ${String(d['agent'])}`);
    else if (env.event === 'agent_down')
      say(`event    agent_down     ${String(d['agent'])}  reported by ${String(d['detectedBy'])} via ${String(d['via'])}, ${((Date.now() - killedAt) / 1000).toFixed(1)} s after the kill`);
    else say(`event    ${env.event.padEnd(14)} ${JSON.stringify(d)}${env.source ? ` from ${env.source}` : ''}`);
  });
  await observer.psubscribe('agent:events:*');

  say(`agents   starting ${AGENTS.join(', ')} in den "${DEN}" (heartbeat TTL ${TTL} s, beat every ${INTERVAL} s, sweep every ${SWEEP} s)`);
  const pagePort = await freePort();
  for (const id of AGENTS) children.set(id, agent(redis.url, id, id === PAGE_AGENT ? pagePort : 0));
  await until('three agents online', () => AGENTS.every((id) => seen.some((e) => e.event === 'agent_online' && e.data?.['agent'] === id)));
  say(`status   http://127.0.0.1:${pagePort}/status  (den "${DEN}" as ${PAGE_AGENT} sees it, live; open it in a browser)`);
  const publisher = redis.client();
  say(`den      ${(await publisher.smembers(`den:${DEN}:online_agents`)).sort().join(', ')} online`);
  const publish = (event: string, data: unknown) => publisher.publish(`agent:events:${event}`, JSON.stringify({ event, data }));
  say('publish  task_request for alpha (the task-runner plugin works on it for 500 ms)');
  await publish('task_request', { task_id: 'demo-task-1', agent: 'alpha' });
  await publish('new_message', { user_id: 'usr-123', text: 'Hello, den!' });
  await until('task_complete', () => seen.some((e) => e.event === 'task_complete'));
  say(`memory   agent:alpha:task:demo-task-1:status = ${String(await publisher.get('agent:alpha:task:demo-task-1:status'))}`);

  await pause(`press Enter to kill ${VICTIM} and watch the page`);
  const victim = children.get(VICTIM)!;
  say(`kill     SIGKILL ${VICTIM} (pid ${victim.pid}): no goodbye, its heartbeat key just stops being refreshed`);
  killedAt = Date.now();
  victim.kill('SIGKILL');
  children.delete(VICTIM);
  await until('agent_down', () => seen.some((e) => e.event === 'agent_down'));
  await sleep(SWEEP * 2000); // more sweeps by both survivors: still one report
  const downs = seen.filter((e) => e.event === 'agent_down' && e.data?.['agent'] === VICTIM).length;
  const members = (await publisher.smembers(`den:${DEN}:online_agents`)).sort();
  const record = JSON.parse((await publisher.hget('global:agent_registry', VICTIM)) ?? '{}') as Record<string, unknown>;
  say(`den      ${members.join(', ')} online; registry says ${VICTIM} is ${String(record['status'])}`);

  await pause('press Enter to stop the agents (the page goes away with alpha)');
  say('stop     SIGTERM alpha and bravo: they drain, leave their den and say goodbye');
  await Promise.all(
    [...children.values()].map(
      (c) =>
        new Promise<void>((resolve) => {
          c.once('exit', () => resolve());
          c.kill('SIGTERM');
        }),
    ),
  );
  children.clear();
  await until('agent_offline twice', () => seen.filter((e) => e.event === 'agent_offline').length === 2, 5_000);

  const ok = downs === 1 && members.length === 2 && !members.includes(VICTIM) && record['status'] === 'down';
  console.log(`\nsummary  ${seen.length} events seen; agent_down for ${VICTIM}: ${downs} (${downs === 1 ? 'exactly once' : 'NOT exactly once'}); ${ok ? 'all as expected' : 'SOMETHING IS OFF'}; ${since().trim()}`);
  failed = !ok;
}

let killedAt = 0;
try {
  await main();
} catch (err) {
  failed = true;
  console.error(`demo failed: ${(err as Error).message}`);
} finally {
  for (const c of children.values()) c.kill('SIGKILL');
  await redis?.stop();
  console.log('cleanup  agents stopped, Redis removed');
}
process.exitCode = failed ? 1 : 0;
