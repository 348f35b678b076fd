/**
 * close() at every point of start(): whatever start had done, the daemon ends
 * with no presence left in Redis (no heartbeat key, not in its den, registry
 * record offline or absent), start() rejects with AGENTD_ERR_CLOSED, nothing
 * (beats, watcher, monitors, `ready`) starts after the close, and a watching
 * peer never reports it down.
 *
 * The hooks are the daemon's own events and log lines, taken synchronously
 * (the logger's destination calls back on each line as it is written), so the
 * close lands exactly between two steps of start. One case freezes Redis
 * (SIGSTOP) while the first beat is on the wire.
 */
import { Writable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentDaemon, type InlinePlugin } from '../../src/daemon.ts';
import { loadConfig } from '../../src/config/load.ts';
import type { AgentdConfig, DeepPartial } from '../../src/config/schema.ts';
import { isAgentdError } from '../../src/errors.ts';
import { createLogger } from '../../src/log.ts';
import { definePlugin } from '../../src/plugins/types.ts';
import { redisSuite } from '../helpers/inproc.ts';
import { collect, type Collected, dataOf, type LogLine, uniqueId, waitFor } from '../helpers/util.ts';

const suite = redisSuite({ requireControl: true });
const TTL_S = 2;
const INTERVAL_S = 0.5;
const SWEEP_S = 0.3;
const den = uniqueId('den');
const FAST: DeepPartial<AgentdConfig> = {
  heartbeat: { ttl: TTL_S, interval: INTERVAL_S },
  watch: { enabled: true, sweepInterval: SWEEP_S, notifications: 'listen' },
  memory: { checkInterval: 1 },
};

interface Built {
  readonly daemon: AgentDaemon;
  readonly id: string;
  readonly lines: LogLine[];
  /** Called synchronously for every log line as it is written. */
  onLine: (l: LogLine) => void;
}

function build(overrides: DeepPartial<AgentdConfig> = {}, plugins: InlinePlugin[] = []): Built {
  const id = uniqueId('cds');
  const { config } = loadConfig({
    env: {},
    overrides: { ...FAST, ...overrides, http: { port: 0 }, redis: { url: suite.redis.url }, agent: { id, den } },
  });
  const lines: LogLine[] = [];
  const built: Built = { daemon: undefined as unknown as AgentDaemon, id, lines, onLine: () => {} };
  const destination = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const line of chunk.toString().split('\n')) {
        if (line.trim() === '') continue;
        const l = JSON.parse(line) as LogLine;
        lines.push(l);
        built.onLine(l);
      }
      done();
    },
  });
  const logger = createLogger({ level: 'debug', destination, base: { agent: id } });
  (built as { daemon: AgentDaemon }).daemon = new AgentDaemon({ config, logger, plugins });
  return built;
}

const ids: string[] = [];
let downs: Collected[];
let peer: Built;

beforeAll(async () => {
  downs = await collect(suite.redis.client(), 'agent:events:agent_down');
  // A live peer in the same den, watching it with a short sweep: it reports any of ours that is left behind.
  peer = build();
  await peer.daemon.start();
});

afterAll(async () => {
  await peer?.daemon.close({ drainTimeoutMs: 100 });
});

async function expectNoPresence(id: string): Promise<void> {
  expect(await suite.cmd.exists(`agent:${id}:heartbeat`), 'heartbeat key').toBe(0);
  expect(await suite.cmd.sismember(`den:${den}:online_agents`, id), 'den membership').toBe(0);
  const raw = await suite.cmd.hget('global:agent_registry', id);
  if (raw !== null) expect((JSON.parse(raw) as { status: string }).status, 'registry status').toBe('offline');
}

/**
 * Starts a daemon, closes it when `arm` says so, and checks what is left:
 * start() rejected with AGENTD_ERR_CLOSED, no presence, and nothing
 * started afterwards (no beat, no `ready`, state stays closed).
 */
async function closeAt(b: Built, arm: (close: () => void) => void, { startResolves = false } = {}): Promise<void> {
  ids.push(b.id);
  let closing: Promise<unknown> | undefined;
  const readyAfterClose: unknown[] = [];
  const close = (): void => {
    closing ??= b.daemon.close({ drainTimeoutMs: 100 });
    b.daemon.on('ready', (r) => readyAfterClose.push(r));
  };
  arm(close);
  const started = b.daemon.start().then(
    () => 'resolved',
    (err: unknown) => err,
  );
  const outcome = await started;
  await waitFor('the hook to fire', () => closing !== undefined, 10_000);
  const result = await closing;
  if (startResolves) expect(outcome).toBe('resolved');
  else {
    expect(isAgentdError(outcome), `start() outcome: ${String(outcome)}`).toBe(true);
    expect((outcome as { code: string }).code).toBe('AGENTD_ERR_CLOSED');
  }
  expect(result).toMatchObject({ drained: true, errors: [] });
  expect(b.daemon.state).toBe('closed');
  await expectNoPresence(b.id);
  // Nothing was left running: after a few beat intervals there is still no presence and no `ready`.
  await sleep(INTERVAL_S * 3 * 1000);
  await expectNoPresence(b.id);
  expect(b.daemon.state).toBe('closed');
  expect(readyAfterClose).toEqual([]);
  const after = b.lines.slice(b.lines.findIndex((l) => l.msg === 'agentd stopped') + 1);
  expect(after.filter((l) => l.msg === 'agentd ready' || l.msg === 'agentd started'), 'lines after stop').toEqual([]);
}

const atLog = (b: Built, msg: string) => (close: () => void) => {
  b.onLine = (l) => {
    if (l.msg === msg) close();
  };
};

describe('close() during start()', () => {
  it('start() rejects once closed (close before start)', async () => {
    const b = build();
    await b.daemon.close();
    await expect(b.daemon.start()).rejects.toMatchObject({ code: 'AGENTD_ERR_CLOSED' });
  });

  it('closed in the same tick as start()', async () => {
    const b = build();
    await closeAt(b, (close) => queueMicrotask(close));
  });

  it('closed at "agentd starting"', async () => {
    const b = build();
    await closeAt(b, atLog(b, 'agentd starting'));
  });

  it('closed when the command connection is ready', async () => {
    const b = build();
    await closeAt(b, (close) => b.daemon.on('connection', (c) => c.role === 'command' && c.state === 'ready' && close()));
  });

  it('closed while a plugin sets up', async () => {
    let close = (): void => {};
    const b = build({}, [
      definePlugin({
        name: 'slow-setup',
        async setup() {
          close();
          await sleep(200);
        },
        handlers: { x() {} },
      }),
    ]);
    await closeAt(b, (c) => (close = c));
  });

  it('closed while a plugin sets up and gives up on its aborted signal: still a close, not a setup failure', async () => {
    let close = (): void => {};
    const b = build({}, [
      definePlugin({
        name: 'signal-setup',
        async setup(ctx) {
          close();
          await new Promise((_, reject) => {
            if (ctx.signal.aborted) reject(new Error('setup aborted'));
            ctx.signal.addEventListener('abort', () => reject(new Error('setup aborted')));
          });
        },
        handlers: { x() {} },
      }),
    ]);
    await closeAt(b, (c) => (close = c));
  });

  it('closed when the subscription is confirmed (just before the first beat)', async () => {
    const b = build();
    await closeAt(b, atLog(b, 'event subscription confirmed'));
  });

  it('closed while the first beat is in flight (Redis frozen)', async () => {
    const b = build();
    await closeAt(b, (close) => {
      b.onLine = (l) => {
        if (l.msg !== 'event subscription confirmed') return;
        b.onLine = () => {};
        void (async () => {
          await suite.redis.pause();
          await sleep(20);
          close();
          await sleep(50);
          await suite.redis.resume();
        })();
      };
    });
  });

  it('closed right after the first beat landed, before agent_online', async () => {
    const b = build();
    await closeAt(b, (close) => b.daemon.once('heartbeat', () => close()));
  });

  it('closed right after agent_online, before the monitors and the watcher start', async () => {
    const b = build();
    await closeAt(b, (close) => b.daemon.once('membership', (m) => m.type === 'agent_online' && close()));
  });

  it('closed while the watcher enables notifications', async () => {
    const b = build({ watch: { enabled: true, sweepInterval: SWEEP_S, notifications: 'enable' } });
    await closeAt(b, atLog(b, 'enabled keyspace expiry notifications'));
  });

  it('closed at "agentd ready": start() resolved, the close is an ordinary stop', async () => {
    const b = build();
    await closeAt(b, (close) => b.daemon.once('ready', () => close()), { startResolves: true });
  });

  it('no watching peer reported any of them down', async () => {
    expect(ids.length).toBeGreaterThan(5);
    // Past a heartbeat TTL and a few sweeps since the last one closed.
    await sleep(TTL_S * 1000 + SWEEP_S * 3 * 1000);
    for (const id of ids) await expectNoPresence(id);
    const buried = downs.map((d) => dataOf(d)['agent'] as string | undefined).filter((a) => a !== undefined && ids.includes(a));
    expect(buried).toEqual([]);
    expect(peer.daemon.state).toBe('ready');
  });
});
