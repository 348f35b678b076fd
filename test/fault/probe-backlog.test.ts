/**
 * A probe behind a backlog (found by the footprint benchmark): a daemon that
 * was stopped while 300,000 events were published reads them as a backlog
 * for longer than events.probeTimeoutMs. Its periodic probe is published
 * meanwhile and waits in Redis behind the rest of the backlog. The probe is
 * late, not lost: the connection delivers all along. Recycling it as "deaf"
 * threw the rest of the backlog away (the daemon never saw most of it).
 * Pass: every event read, no "probe not delivered" line, one subscriber
 * connection from start to end.
 *
 * A probe left waiting by a lost connection: the subscriber connection is
 * killed (CLIENT KILL) while a probe waits behind the backlog. The probe's
 * token went with that connection, but the wait went on as long as anything
 * arrived on the new one, and when it ended it counted as lost against the
 * new, confirmed connection: a "probe not delivered" line and a healthy
 * subscriber recycled. Pass: confirmed again, then ten probes later no such
 * line and the same new connection.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { processSuite } from '../helpers/process.ts';
import { hasMsg, metric, waitFor } from '../helpers/util.ts';

const run = promisify(execFile);
const EVENTS = 300_000;
const suite = processSuite({ redis: { requireControl: true } });

/** The suite Redis's client ids of `id`'s subscriber connections. */
async function subscriberIds(id: string): Promise<string[]> {
  return ((await suite.cmd.client('LIST')) as string)
    .split('\n')
    .filter((l) => l.includes(`name=agentd:${id}:sub`))
    .map((l) => /\bid=(\d+)/.exec(l)?.[1] ?? '');
}

describe('a probe behind a backlog', () => {
  it(`${EVENTS.toLocaleString('en')} events read after SIGCONT with a 100 ms probe timeout: all read, the subscriber kept`, async () => {
    // The backlog waits in Redis while the daemon is stopped.
    await suite.cmd.config('SET', 'client-output-buffer-limit', 'pubsub 0 0 0');
    const d = await suite.start({
      plugins: ['record-types.js'],
      http: true,
      // PSUBSCRIBE, so the flood (no handler) is read and counted as unhandled: the cheapest path, the fastest read.
      env: { AGENTD_EVENT_SUBSCRIBE: 'pattern', AGENTD_EVENT_PROBE_INTERVAL: '0.2', AGENTD_EVENT_PROBE_TIMEOUT_MS: '100' },
    });
    const subscribers = async (): Promise<number> => ((await suite.cmd.client('LIST')) as string).split('\n').filter((l) => l.includes(`name=agentd:${d.id}:sub`)).length;
    const clientIds = async (): Promise<string[]> =>
      ((await suite.cmd.client('LIST')) as string)
        .split('\n')
        .filter((l) => l.includes(`name=agentd:${d.id}:sub`))
        .map((l) => /\bid=(\d+)/.exec(l)?.[1] ?? '');
    const before = await clientIds();
    expect(before, 'one subscriber connection').toHaveLength(1);
    d.signal('SIGSTOP');
    const message = JSON.stringify({ event: 'flood', data: { text: 'a backlog event of about a hundred bytes, published while the daemon is stopped' } });
    await run('redis-benchmark', ['-p', String(suite.redis.port), '-n', String(EVENTS), '-c', '1', '-P', '100', '-q', 'PUBLISH', 'agent:events:flood', message], { maxBuffer: 1 << 24 });
    d.signal('SIGCONT');
    await waitFor(`all ${EVENTS} read`, async () => metric(await d.scrape(), 'agentd_events_received_total', { event: 'other' }) >= EVENTS, 20_000, 100);
    expect(d.logs.filter(hasMsg(/probe not delivered/)), 'no probe counted as lost').toEqual([]);
    expect(await clientIds(), 'the same subscriber connection').toEqual(before);
    expect(await subscribers()).toBe(1);
  });

  it('the subscriber connection killed while a probe waits behind a backlog: the stale probe never recycles the new connection', { timeout: 60_000 }, async () => {
    await suite.cmd.config('SET', 'client-output-buffer-limit', 'pubsub 0 0 0');
    const d = await suite.start({
      plugins: ['record-types.js'],
      env: { AGENTD_EVENT_SUBSCRIBE: 'pattern', AGENTD_EVENT_PROBE_INTERVAL: '0.2', AGENTD_EVENT_PROBE_TIMEOUT_MS: '100' },
    });
    const [first] = await subscriberIds(d.id);
    expect(first).toBeDefined();
    // Every PUBLISH the server runs on this daemon's probe channel, in order.
    const monitor = await suite.redis.client().monitor();
    let probes = 0;
    const onProbe: Array<() => void> = [];
    monitor.on('monitor', (_time: string, args: string[]) => {
      if (args[0]?.toLowerCase() === 'publish' && args[1]?.startsWith(`agentd:probe:${d.id}`)) {
        probes++;
        onProbe.splice(0).forEach((f) => f());
      }
    });
    const nextProbe = (): Promise<void> => new Promise((resolve) => onProbe.push(resolve));
    try {
      d.signal('SIGSTOP');
      const message = JSON.stringify({ event: 'flood', data: { text: 'a backlog event of about a hundred bytes, published while the daemon is stopped' } });
      await run('redis-benchmark', ['-p', String(suite.redis.port), '-n', String(EVENTS), '-c', '1', '-P', '100', '-q', 'PUBLISH', 'agent:events:flood', message], { maxBuffer: 1 << 24 });
      // The probe published once the daemon runs again waits behind the backlog: kill its connection then.
      const probed = nextProbe();
      d.signal('SIGCONT');
      await probed;
      await suite.cmd.client('KILL', 'ID', first as string);
      await d.waitForLog(hasMsg(/event subscription confirmed again/), 15_000);
      const [second] = await subscriberIds(d.id);
      expect(second, 'a new subscriber connection').toBeDefined();
      expect(second).not.toBe(first);
      // Ten probes on the new connection: the stale wait has long seen a quiet probeTimeoutMs by then.
      const seen = probes;
      await waitFor('ten more probes', () => probes >= seen + 10, 15_000, 20);
      expect(d.logs.filter(hasMsg(/probe not delivered|probe found no subscriber/)), 'no probe counted as lost').toEqual([]);
      expect(await subscriberIds(d.id), 'the new subscriber connection kept').toEqual([second]);
    } finally {
      monitor.disconnect();
    }
  });
});
