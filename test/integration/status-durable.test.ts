/**
 * The status page's durable slot: this agent's inbox and its den's task
 * stream, with their dead letters, as /status.json reports them — read from
 * a real Redis while a handler holds entries and others fail to the dead
 * letters.
 */
import { describe, expect, it } from 'vitest';
import { definePlugin } from '../../src/plugins/types.ts';
import { freePort } from '../helpers/ports.ts';
import { makeDaemon, redisSuite } from '../helpers/inproc.ts';
import { gate, waitFor } from '../helpers/util.ts';

const suite = redisSuite({ requireControl: true });

interface DurableJson {
  durable: { inbox: { length: number; pending: number }; denTasks: { length: number; pending: number }; deadLetters: { inbox: number; denTasks: number } } | null;
}

describe('status page: durable depth', () => {
  it('reports inbox and den-task length, pending and dead letters', async () => {
    const held = gate();
    const plugin = definePlugin({
      name: 'slow',
      handlers: {
        hold: async () => held.promise,
        fail: () => {
          throw new Error('always fails');
        },
      },
    });
    const port = await freePort();
    const t = makeDaemon(suite.redis.url, {
      http: { port, statusPage: true },
      heartbeat: { ttl: 3, interval: 0.5 },
      durable: { attempts: 1, backoffMs: 10, pollInterval: 0.2 },
    }, [plugin]);
    suite.track(t.daemon);
    await t.daemon.start();
    const { id, den } = t.config.agent;
    const admin = suite.redis.client();
    const envelope = (event: string): string => JSON.stringify({ event, data: {} });
    // Two inbox entries the handler holds, one den task that fails once and is dead-lettered.
    await admin.xadd(`inbox:${id}`, '*', 'envelope', envelope('hold'));
    await admin.xadd(`inbox:${id}`, '*', 'envelope', envelope('hold'));
    await admin.xadd(`den:${den}:tasks`, '*', 'envelope', envelope('fail'));
    const read = async (): Promise<DurableJson> => (await (await fetch(`http://127.0.0.1:${port}/status.json`)).json()) as DurableJson;
    let last: DurableJson | undefined;
    await waitFor('durable depth on /status.json', async () => {
      last = await read();
      const d = last.durable;
      return d !== null && d.inbox.pending === 2 && d.deadLetters.denTasks === 1;
    }, 10_000);
    expect(last?.durable).toEqual({
      inbox: { length: 2, pending: 2 },
      denTasks: { length: 1, pending: 0 },
      deadLetters: { inbox: 0, denTasks: 1 },
    });
    held.open();
    await waitFor('inbox acknowledged', async () => (await read()).durable?.inbox.pending === 0, 10_000);
  });

  it('is null with durable messages off', async () => {
    const port = await freePort();
    const t = makeDaemon(suite.redis.url, { http: { port, statusPage: true }, heartbeat: { ttl: 3, interval: 0.5 }, durable: { enabled: false } });
    suite.track(t.daemon);
    await t.daemon.start();
    const body = (await (await fetch(`http://127.0.0.1:${port}/status.json`)).json()) as DurableJson;
    expect(body.durable).toBeNull();
  });
});
