/**
 * `npm run bench -- scale`: what one den of N agents costs one Redis, with
 * the sweeper lease (watch.sweeper = lease, the default) and with every
 * member sweeping (every, the old behaviour), in the same run.
 *
 * For each size and mode: a fresh local redis-server; member processes
 * (bench/scale-member.ts) with a few embedded AgentDaemons each and the
 * rest as light members (the daemon's own Presence and PeerWatcher on shared
 * connections: the same Redis commands, without a connection pair each);
 * default heartbeat.ttl 60 s, interval 20 s, watch.sweepInterval 5 s.
 * 10 more members beat with ttl 6 s / interval 2 s. Measured over a steady
 * window (nobody dies): Redis CPU (INFO used_cpu_sys + used_cpu_user),
 * commands/s (total_commands_processed, which counts the commands scripts
 * call too) and memory per agent (used_memory without mem_clients_normal,
 * after the joins minus before, over the members). Then the 10 stop beating
 * (as kill -9 would leave them): their agent_down is timed, and the Redis CPU
 * and commands from the stop to the last agent_down are reported.
 *
 * Second part: Redis's delivery ceiling, PUBLISH fan-out to S subscribers
 * that PSUBSCRIBE agent:events:* or SUBSCRIBE the published channel.
 *
 *   npm run bench -- scale [--sizes 100,1000,5000,10000] [--modes lease,every]
 *     [--window 20] [--daemons 20] [--processes 2] [--no-notify] [--notify-lights] [--part presence,delivery] [--json]
 *   (--help lists the options)
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { connect, type Socket } from 'node:net';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { startRedis, type TestRedis } from '../test/helpers/redis.ts';
import { benchOptions } from './args.ts';
import { flood, sleep } from './lib.ts';
import { printTable } from './stats.ts';
import { readFileSync } from 'node:fs';

const SWEEP_LUA = readFileSync(new URL('../src/redis/scripts/sweep-den-1.lua', import.meta.url), 'utf8');

process.env['AGENTD_TEST_REDIS'] ??= 'local';
const args = benchOptions('scale', 'What one den of N agents costs one Redis, sweeper lease against every member sweeping; PUBLISH fan-out ceiling.');
const { sizes, modes } = args;
const windowS = args.window;
const parts = new Set(args.part);
const VICTIMS = 10;
const VICTIM_TTL = 6;
const VICTIM_INTERVAL = 2;
const SWEEP = 5;
const MEMBER = fileURLToPath(new URL('./scale-member.ts', import.meta.url));

interface Member {
  readonly child: ChildProcess;
  readonly lines: AsyncIterator<string>;
  send(cmd: string): void;
  next(): Promise<Record<string, unknown>>;
}

function startMember(argv: string[]): Member {
  const strip = process.features.typescript ? [] : ['--experimental-strip-types'];
  const child = spawn(process.execPath, [...strip, '--max-old-space-size=1536', '--disable-warning=ExperimentalWarning', MEMBER, ...argv], { stdio: ['pipe', 'pipe', 'inherit'] });
  const lines = createInterface({ input: child.stdout! })[Symbol.asyncIterator]();
  return {
    child,
    lines,
    send: (cmd) => child.stdin!.write(`${cmd}\n`),
    next: async () => {
      const r = await lines.next();
      if (r.done) throw new Error('member process ended');
      return JSON.parse(r.value) as Record<string, unknown>;
    },
  };
}

async function info(c: ReturnType<TestRedis['client']>): Promise<{ cpu: number; commands: number; memory: number; clients: number }> {
  const text = await c.info();
  const num = (k: string): number => Number(new RegExp(`^${k}:([\\d.]+)`, 'm').exec(text)?.[1] ?? Number.NaN);
  return {
    cpu: num('used_cpu_sys') + num('used_cpu_user'),
    commands: num('total_commands_processed'),
    // The data: used_memory without the clients' buffers (the bench's connection count is not the fleet's).
    memory: num('used_memory') - num('mem_clients_normal'),
    clients: num('mem_clients_normal'),
  };
}

async function presenceRun(n: number, mode: 'lease' | 'every'): Promise<Record<string, string | number>> {
  const server = await startRedis({ requireControl: true });
  const c = server.client();
  try {
    await c.config('SET', 'notify-keyspace-events', args.notify ? 'Kx' : '');
    const downs = new Map<string, number>();
    const observer = server.client();
    observer.on('message', (_ch: string, msg: string) => {
      const env = JSON.parse(msg) as { data: { agent: string } };
      if (!downs.has(env.data.agent)) downs.set(env.data.agent, Date.now());
      else downs.set(`${env.data.agent}#dup${downs.size}`, Date.now());
    });
    await observer.subscribe('agent:events:agent_down');
    const before = await info(c);

    const processes = Math.max(1, Math.min(args.processes, Math.ceil(n / 500)));
    const daemons = Math.min(args.daemons, n);
    const members: Member[] = [];
    let assigned = 0;
    for (let p = 0; p < processes; p++) {
      const d = Math.floor(daemons / processes) + (p < daemons % processes ? 1 : 0);
      const share = Math.floor((n - daemons) / processes) + (p < (n - daemons) % processes ? 1 : 0);
      assigned += d + share;
      members.push(
        startMember([
          '--url', server.url, '--prefix', `p${p}`, '--count', String(share), '--daemons', String(d),
          '--victims', p === 0 ? String(VICTIMS) : '0', '--sweeper', mode, '--sweep', String(SWEEP),
          '--victim-ttl', String(VICTIM_TTL), '--victim-interval', String(VICTIM_INTERVAL), ...(args.notify ? ['--notify'] : []), ...(args['notify-lights'] ? ['--notify-lights'] : []),
        ]),
      );
    }
    if (assigned !== n) throw new Error(`assigned ${assigned} of ${n}`);
    const t0 = Date.now();
    await Promise.all(members.map((m) => m.next()));
    const joinS = (Date.now() - t0) / 1000;
    await sleep(3_000);
    const joined = await info(c);
    const memberCount = await c.scard('den:scale:online_agents');

    // What one sweep of the whole den costs Redis (the old design runs N of them per interval).
    const sweepCpu0 = await info(c);
    const sha = (await c.script('LOAD', SWEEP_LUA)) as string;
    for (let i = 0; i < 20; i++) await c.evalsha(sha, 1, 'den:scale:online_agents', 'agent:', ':heartbeat');
    const sweepCpuMs = (((await info(c)).cpu - sweepCpu0.cpu) / 20) * 1000;
    // The steady window: everyone beats and watches, nobody dies.
    const start = await info(c);
    const w0 = Date.now();
    await sleep(windowS * 1000);
    const end = await info(c);
    const seconds = (Date.now() - w0) / 1000;
    // Then the victims stop beating (as kill -9 leaves them): detection, and what the deaths cost.
    members[0]!.send('kill');
    const killed = (await members[0]!.next()) as { killed: string[]; at: number };
    const deathStart = await info(c);
    const deadline = Date.now() + (VICTIM_TTL + 1.2 * SWEEP + 4) * 1000;
    while (Date.now() < deadline && killed.killed.some((id) => !downs.has(id))) await sleep(100);
    await sleep(500);
    const deathEnd = await info(c);
    for (const m of members) m.send('stats');
    const stats = (await Promise.all(members.map((m) => m.next()))) as Array<{ sweeps: number; leases: string[] }>;
    const detections = killed.killed.map((id) => downs.get(id)).filter((x): x is number => x !== undefined).map((t) => (t - killed.at) / 1000).sort((x, y) => x - y);
    const dups = [...downs.keys()].filter((k) => k.includes('#dup')).length;
    const falseDowns = [...downs.keys()].filter((k) => !k.includes('#dup') && !killed.killed.includes(k)).length;
    for (const m of members) m.send('quit');
    await Promise.all(members.map((m) => new Promise((r) => (m.child.exitCode !== null ? r(null) : m.child.once('exit', r)))));
    const cpuShare = (end.cpu - start.cpu) / seconds;
    return {
      agents: n,
      sweeper: mode,
      'redis CPU (share of one core)': `${(cpuShare * 100).toFixed(1)} %`,
      'commands/s': Math.round((end.commands - start.commands) / seconds),
      'memory per agent': `${Math.round((joined.memory - before.memory) / (n + VICTIMS))} B`,
      'Redis CPU for the 10 deaths (s)': (deathEnd.cpu - deathStart.cpu).toFixed(2),
      'commands for the 10 deaths': deathEnd.commands - deathStart.commands,
      'sweeps/s': (stats.reduce((s, x) => s + x.sweeps, 0) / ((Date.now() - t0) / 1000)).toFixed(1),
      'lease holders': stats.reduce((s, x) => s + x.leases.length, 0),
      'detected (10 kills)': `${detections.length}/${VICTIMS}${dups ? `, ${dups} dup` : ''}${falseDowns ? `, ${falseDowns} false` : ''}`,
      'detection min / max (s)': detections.length ? `${detections[0]!.toFixed(2)} / ${detections.at(-1)!.toFixed(2)}` : '-',
      'in den': memberCount,
      'one sweep (Redis CPU ms)': sweepCpuMs.toFixed(2),
      'join s': joinS.toFixed(1),
      'CPU slope (log-log) from previous size': '-',
      _cpu: cpuShare,
    };
  } finally {
    await server.stop();
  }
}

/** A subscriber that does not parse: it reads and counts bytes, so the client side is never the limit. */
async function rawSubscriber(port: number, command: string): Promise<{ socket: Socket; bytes: () => number }> {
  const socket = connect(port, '127.0.0.1');
  let bytes = 0;
  await new Promise<void>((resolve, reject) => {
    socket.once('error', reject);
    socket.once('connect', () => {
      socket.write(command);
      socket.once('data', () => resolve());
    });
  });
  socket.on('data', (b) => (bytes += b.length));
  return { socket, bytes: () => bytes };
}

async function deliveryRun(subscribers: number, kind: 'pattern' | 'exact' | 'other'): Promise<Record<string, string | number>> {
  const server = await startRedis({ requireControl: true });
  try {
    const cmd =
      kind === 'pattern'
        ? '*2\r\n$10\r\nPSUBSCRIBE\r\n$14\r\nagent:events:*\r\n'
        : kind === 'exact'
          ? '*2\r\n$9\r\nSUBSCRIBE\r\n$18\r\nagent:events:bench\r\n'
          : '*2\r\n$9\r\nSUBSCRIBE\r\n$18\r\nagent:events:other\r\n';
    const subs = [];
    for (let i = 0; i < subscribers; i++) subs.push(await rawSubscriber(server.port, cmd));
    const count = Math.max(2_000, Math.min(200_000, Math.round(2_000_000 / Math.max(1, subscribers))));
    const c = server.client();
    const t0 = await info(c);
    const ms = await flood(server.port, count);
    await sleep(200);
    const t1 = await info(c);
    const received = subs.reduce((s, x) => s + x.bytes(), 0);
    for (const s of subs) s.socket.destroy();
    const delivered = kind === 'other' ? 0 : count * subscribers;
    return {
      subscribers,
      subscription: kind === 'pattern' ? 'PSUBSCRIBE agent:events:*' : kind === 'exact' ? 'SUBSCRIBE agent:events:bench' : 'SUBSCRIBE another channel',
      'publishes/s': Math.round(count / (ms / 1000)),
      'deliveries/s': Math.round(delivered / (ms / 1000)),
      'redis CPU µs per publish': ((t1.cpu - t0.cpu) * 1e6 / count).toFixed(2),
      'bytes received': received,
    };
  } finally {
    await server.stop();
  }
}

const rows: Array<Record<string, string | number>> = [];
if (parts.has('presence')) {
  for (const n of sizes) {
    for (const mode of modes) {
      if (mode === 'every' && n > args['max-every']) {
        // Not run: N members sweeping N members saturates Redis (and the member processes queue without
        // bound). Projected from this size's measured lease row: its cost plus N sweeps per interval.
        const lease = rows.find((r) => r['agents'] === n && r['sweeper'] === 'lease');
        if (!lease) continue;
        const perSweep = Number(lease['one sweep (Redis CPU ms)']) / 1000;
        const share = (lease['_cpu'] as number) + (n / SWEEP) * perSweep;
        rows.push({ agents: n, sweeper: 'every (projected, not run)', 'redis CPU (share of one core)': `${(share * 100).toFixed(0)} % (saturated)`, 'commands/s': `≈ ${Math.round((n / SWEEP) * (n + 2))} needed`, 'sweeps/s': (n / SWEEP).toFixed(0), 'one sweep (Redis CPU ms)': lease['one sweep (Redis CPU ms)']!, 'CPU slope (log-log) from previous size': '-', _cpu: share });
        continue;
      }
      const row = await presenceRun(n, mode);
      rows.push(row);
      if (!args.json) process.stderr.write(`${JSON.stringify(row)}\n`);
    }
  }
  // Slope: how the CPU share grows from one size to the next, per mode (1 = linear, 2 = quadratic).
  for (const mode of modes) {
    const mine = rows.filter((r) => String(r['sweeper']).startsWith(mode));
    for (let i = 1; i < mine.length; i++) {
      const a = mine[i - 1]!;
      const b = mine[i]!;
      const slope = Math.log((b['_cpu'] as number) / (a['_cpu'] as number)) / Math.log((b['agents'] as number) / (a['agents'] as number));
      b['CPU slope (log-log) from previous size'] = Number.isFinite(slope) ? slope.toFixed(2) : '-';
    }
  }
  for (const r of rows) delete r['_cpu'];
}
const delivery: Array<Record<string, string | number>> = [];
if (parts.has('delivery')) {
  for (const s of args.subscribers) {
    for (const kind of ['pattern', 'exact', 'other'] as const) delivery.push(await deliveryRun(s, kind));
  }
}
if (args.json) console.log(JSON.stringify({ rows: [...rows, ...delivery], presence: rows, delivery }));
else {
  printTable(rows);
  printTable(delivery);
}
