/**
 * The operator commands on data other programs wrote (issue 9, item 1: no walk
 * over untrusted data fails): `agentd members` on registry records whose
 * fields are nested 5,000 deep, and `agentd watch` on an event nested 5,000
 * deep (JSON.stringify and String() of such values recurse and throw).
 */
import { describe, expect, it } from 'vitest';
import { isAlive, processSuite } from '../helpers/process.ts';
import { keys, uniqueId, waitFor } from '../helpers/util.ts';

const DEEP = `${'['.repeat(5_000)}${']'.repeat(5_000)}`;

const suite = processSuite();

describe('operator commands on hostile data (child processes)', () => {
  it('members (table and --json) shows a record with 5,000-deep fields as far as it can, and exits 0', async () => {
    const c = suite.cmd;
    const den = uniqueId('den');
    const id = uniqueId('odd');
    await c.sadd(keys.den(den), id);
    await c.set(keys.heartbeat(id), 'x', 'EX', 60);
    await c.hset(keys.registry, id, `{"id":"${id}","den":"${den}","host":${DEEP},"pid":${DEEP},"version":${DEEP},"lastSeen":${DEEP},"status":${DEEP}}`);
    const env = { AGENTD_AGENT_ID: uniqueId('cli') };
    const json = await suite.run(['members', '--den', den, '--json'], { env });
    expect(json.code, json.stderr).toBe(0);
    expect(JSON.parse(json.stdout)).toEqual([{ id, den, host: null, status: 'online', ttlMs: expect.any(Number), lastSeen: null, pid: null, version: null }]);
    const table = await suite.run(['members', '--den', den], { env });
    expect(table.code, table.stderr).toBe(0);
    expect(table.stdout.split('\n')[1]?.split(/\s+/).slice(0, 3)).toEqual([id, '-', 'online']);
  });

  it('watch prints a line for a 5,000-deep event and goes on with the next one', async () => {
    const c = suite.cmd;
    const watch = await suite.spawn({ args: ['watch'], id: uniqueId('watch') });
    await waitFor('watch subscribed', async () => Number(await c.call('PUBSUB', 'NUMPAT')) > 0, 10_000);
    await c.publish(keys.channel('deep'), `{"event":"deep","data":${DEEP}}`);
    await c.publish(keys.channel('agent_online'), `{"event":"agent_online","data":{"agent":"a1","den":"d1","host":"h","extra":${DEEP}}}`);
    await c.publish(keys.channel('after'), JSON.stringify({ event: 'after', data: { n: 1 } }));
    const lines = (): string[] => watch.logs.map((l) => String(l['raw'] ?? JSON.stringify(l)));
    await waitFor('the line of the event after the deep ones', () => lines().some((l) => l.includes('after') && l.includes('data={"n":1}')), 5_000);
    expect(isAlive(watch), 'watch alive').toBe(true);
    expect(lines().find((l) => l.includes(' deep '))).toContain('data=(too deep to show)');
    expect(lines().find((l) => l.includes('agent_online'))).toContain('extra=(too deep to show)');
  });
});
