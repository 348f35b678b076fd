import { describe, expect, it } from 'vitest';
import { AgentdError } from '../../src/errors.ts';
import { definePlugin } from '../../src/plugins/types.ts';
import { freePort } from '../helpers/ports.ts';
import { makeDaemon, redisSuite, type TestDaemon } from '../helpers/inproc.ts';
import { metric, waitFor } from '../helpers/util.ts';

const suite = redisSuite({ requireControl: true });

async function withEndpoint(plugins = [definePlugin({ name: 'noop', handlers: {} })], overrides = {}): Promise<TestDaemon & { base: string }> {
  const port = await freePort();
  const t = makeDaemon(suite.redis.url, { http: { port }, redis: { reconnectMaxDelayMs: 100 }, heartbeat: { ttl: 3, interval: 0.5 }, ...overrides }, plugins);
  suite.track(t.daemon);
  await t.daemon.start();
  return { ...t, base: `http://127.0.0.1:${port}` };
}

describe('health and metrics endpoint', () => {
  it('serves /healthz, /readyz and 404 for anything else', async () => {
    const t = await withEndpoint();
    const health = await fetch(`${t.base}/healthz`);
    expect(health.status).toBe(200);
    expect(await health.json()).toMatchObject({ status: 'ok' });
    const ready = await fetch(`${t.base}/readyz`);
    expect(ready.status).toBe(200);
    expect(await ready.json()).toEqual({ status: 'ready', state: 'ready', reasons: [] });
    expect((await fetch(`${t.base}/nope`)).status).toBe(404);
    expect((await fetch(`${t.base}/healthz`, { method: 'POST' })).status).toBe(405);
  });

  it('moves the counters by the right amounts', async () => {
    let calls = 0;
    const t = await withEndpoint(
      [
        definePlugin({
          name: 'work',
          handlers: {
            job: () => void calls++,
            boom: () => {
              throw new Error('x');
            },
          },
        }),
      ],
      // PSUBSCRIBE, so the event of a type nobody handles arrives and is counted as unhandled.
      { queue: { handlerTimeoutMs: 100 }, events: { subscribe: 'pattern' } },
    );
    // Our own agent_online (which no handler takes) must be counted before the first scrape.
    await waitFor('own agent_online', () => t.daemon.stats().unhandled === 1);
    const before = await (await fetch(`${t.base}/metrics`)).text();
    const pub = suite.redis.client();
    for (let i = 0; i < 7; i++) await pub.publish('agent:events:job', JSON.stringify({ event: 'job', data: i }));
    for (let i = 0; i < 2; i++) await pub.publish('agent:events:boom', JSON.stringify({ event: 'boom', data: i }));
    await pub.publish('agent:events:job', 'not json');
    // On its own channel: on another type's channel it would be refused as channel_mismatch (issue 12).
    await pub.publish('agent:events:random-type-from-the-network', JSON.stringify({ event: 'random-type-from-the-network', data: 1 }));
    await waitFor('all events handled', () => calls === 7 && t.daemon.stats().failed === 2 && t.daemon.stats().invalid.not_json === 1 && t.daemon.stats().unhandled >= 1);
    const after = await (await fetch(`${t.base}/metrics`)).text();
    const delta = (name: string, labels: Record<string, string> = {}) => metric(after, name, labels) - metric(before, name, labels);
    expect(delta('agentd_events_received_total', { event: 'job' })).toBe(7);
    expect(delta('agentd_events_received_total', { event: 'boom' })).toBe(2);
    expect(delta('agentd_events_dispatched_total', { event: 'job' })).toBe(7);
    expect(delta('agentd_handler_calls_total', { plugin: 'work', event: 'job', outcome: 'ok' })).toBe(7);
    expect(delta('agentd_handler_calls_total', { plugin: 'work', event: 'boom', outcome: 'error' })).toBe(2);
    expect(delta('agentd_handler_duration_seconds_count', { plugin: 'work' })).toBe(9);
    expect(delta('agentd_events_dropped_total', { event: 'invalid', reason: 'not_json' })).toBe(1);
    // An event type from the network that no handler knows is not a label value.
    expect(after).not.toContain('random-type-from-the-network');
    expect(delta('agentd_events_received_total', { event: 'other' })).toBe(1);
    expect(delta('agentd_events_unhandled_total')).toBe(1);
    expect(metric(after, 'agentd_queue_waiting')).toBe(0);
    expect(metric(after, 'agentd_ready')).toBe(1);
    expect(metric(after, 'agentd_redis_connected', { conn: 'command' })).toBe(1);
    expect(metric(after, 'agentd_subscription_confirmed')).toBe(1);
    expect(metric(after, 'agentd_den_members_online', { den: t.config.agent.den })).toBe(1);
    const age = metric(after, 'agentd_heartbeat_age_seconds');
    expect(age).toBeGreaterThanOrEqual(0);
    expect(age).toBeLessThan(2);
    expect(metric(after, 'process_resident_memory_bytes')).toBeGreaterThan(0);
  });

  it('counts queue drops by event and reason', async () => {
    const t = await withEndpoint(
      [definePlugin({ name: 'slow', handlers: { job: () => new Promise<void>(() => undefined) } })],
      { queue: { concurrency: 1, max: 2, handlerTimeoutMs: 60_000 } },
    );
    const pub = suite.redis.client();
    for (let i = 0; i < 10; i++) await pub.publish('agent:events:job', JSON.stringify({ event: 'job', data: i }));
    await waitFor('seven drops', () => t.daemon.stats().dropped.queue_full === 7);
    const text = await (await fetch(`${t.base}/metrics`)).text();
    expect(metric(text, 'agentd_events_dropped_total', { event: 'job', reason: 'queue_full' })).toBe(7);
    expect(metric(text, 'agentd_queue_waiting')).toBe(2);
    expect(metric(text, 'agentd_queue_running')).toBe(1);
  });

  it('/readyz turns 503 with reasons while Redis is stopped, and 200 again after it returns', async () => {
    const t = await withEndpoint();
    expect((await fetch(`${t.base}/readyz`)).status).toBe(200);
    await suite.redis.kill('SIGKILL');
    await waitFor('/readyz to turn 503', async () => (await fetch(`${t.base}/readyz`)).status === 503);
    const body = (await (await fetch(`${t.base}/readyz`)).json()) as { reasons: string[]; state: string };
    expect(body.state).toBe('degraded');
    expect(body.reasons.join('; ')).toMatch(/redis command connection is (reconnecting|connecting|close)/);
    expect((await fetch(`${t.base}/healthz`)).status).toBe(200); // alive all along
    const metrics = await (await fetch(`${t.base}/metrics`)).text();
    expect(metric(metrics, 'agentd_ready')).toBe(0);
    expect(metric(metrics, 'agentd_redis_connected', { conn: 'command' })).toBe(0);
    await suite.redis.start();
    await waitFor('/readyz to turn 200 again', async () => (await fetch(`${t.base}/readyz`)).status === 200, 10_000);
    const again = await (await fetch(`${t.base}/metrics`)).text();
    expect(metric(again, 'agentd_redis_reconnects_total', { conn: 'command' })).toBeGreaterThanOrEqual(1);
  });

  it('refuses to start when the port is taken, naming the setting', async () => {
    const t = await withEndpoint();
    const port = Number(new URL(t.base).port);
    const other = makeDaemon(suite.redis.url, { http: { port } });
    suite.track(other.daemon);
    const err = await other.daemon.start().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AgentdError);
    expect((err as AgentdError).code).toBe('AGENTD_ERR_CONFIG');
    expect((err as AgentdError).message).toMatch(new RegExp(`^http\\.port: cannot listen on 127\\.0\\.0\\.1:${port} \\(EADDRINUSE\\)`));
  });
});
