/** The status page's readers of untrusted input: registry records and membership events from the bus. */
import { Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { TallyCounter, TallyHistogram, type CustomMetric } from '../../src/http/tally.ts';
import { DenEventRing, checkedRecord, handlerRows } from '../../src/http/status.ts';

describe('checkedRecord', () => {
  it('reads a record agentd writes', () => {
    const r = checkedRecord(JSON.stringify({ id: 'a', den: 'd', host: 'vm-1', pid: 42, version: '0.1.0', startedAt: 1, status: 'online', lastSeen: 2 }));
    expect(r).toEqual({ den: 'd', host: 'vm-1', pid: 42, version: '0.1.0', startedAt: 1, status: 'online', lastSeen: 2, downAt: null });
  });

  it('refuses what is not a bounded JSON object, and drops fields of the wrong shape', () => {
    for (const raw of [null, undefined, 'not json', '[1,2]', '"s"', '42', 'null', `{"pad":"${'x'.repeat(5_000)}"}`]) expect(checkedRecord(raw), String(raw)).toBeUndefined();
    const r = checkedRecord(JSON.stringify({ den: 'a:b', host: '<img src=x>', pid: '1', version: 'v'.repeat(100), startedAt: 'now', status: 'zombie', lastSeen: null, __proto__: { x: 1 } }));
    expect(r).toEqual({ den: undefined, host: null, pid: null, version: null, startedAt: null, status: null, lastSeen: null, downAt: null });
  });
});

describe('DenEventRing', () => {
  it('keeps membership events of its den with validated fields only, newest first, bounded', () => {
    const ring = new DenEventRing('d', 3);
    ring.observe({ event: 'new_message', data: { agent: 'a', den: 'd' } });
    ring.observe({ event: 'agent_online', data: { agent: 'a', den: 'other' } });
    ring.observe({ event: 'agent_online', data: { agent: '<b>x</b>', den: 'd' } });
    ring.observe({ event: 'agent_online', data: null });
    ring.observe({ event: 'agent_online', data: [1] });
    expect(ring.list()).toEqual([]);

    ring.observe({ event: 'agent_online', data: { agent: 'a', den: 'd', host: 'vm a', rejoined: true, secret: 'payload' } });
    ring.observe({ event: 'agent_offline', data: { agent: 'b', den: 'd', host: 'vm-b', reason: 'shutdown' } });
    ring.observe({ event: 'agent_down', data: { agent: 'c', den: 'd', host: 'vm-c', detectedBy: 'a', via: 'sweep', lastSeen: 5 } });
    const [down, offline, online] = ring.list();
    expect(online).toEqual({ type: 'agent_online', agent: 'a', den: 'd', at: expect.any(Number), rejoined: true });
    expect(offline).toEqual({ type: 'agent_offline', agent: 'b', den: 'd', at: expect.any(Number), host: 'vm-b', reason: 'shutdown' });
    expect(down).toEqual({ type: 'agent_down', agent: 'c', den: 'd', at: expect.any(Number), host: 'vm-c', detectedBy: 'a', via: 'sweep' });

    ring.observe({ event: 'agent_down', data: { agent: 'e', den: 'd', detectedBy: 'x y', via: 'magic' } });
    expect(ring.list()).toHaveLength(3);
    expect(ring.list()[0]).toEqual({ type: 'agent_down', agent: 'e', den: 'd', at: expect.any(Number) });
    expect(ring.agents().sort()).toEqual(['b', 'c', 'e']);
  });
});

describe('handlerRows', () => {
  it('sums outcomes per plugin and bounds the median and p99 by histogram buckets', async () => {
    const registry = new Registry();
    const metrics: CustomMetric[] = [];
    const calls = new TallyCounter({ name: 'agentd_handler_calls_total', help: 'h', labelNames: ['plugin', 'event', 'outcome'], registry: metrics });
    const duration = new TallyHistogram({ name: 'agentd_handler_duration_seconds', help: 'h', labelNames: ['plugin'], buckets: [0.01, 0.1, 1], registry: metrics });
    for (const m of metrics) registry.registerMetric(m as never);
    for (let i = 0; i < 98; i++) {
      calls.inc('p', 'x', 'ok');
      duration.observe(0.005, 'p');
    }
    calls.inc('p', 'y', 'error');
    duration.observe(0.5, 'p');
    calls.inc('p', 'x', 'timeout');
    duration.observe(5, 'p');
    expect(await handlerRows(registry)).toEqual([{ plugin: 'p', ok: 98, error: 1, timeout: 1, aborted: 0, p50Le: 0.01, p99Le: 1 }]);
  });
});
