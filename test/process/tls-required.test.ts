/**
 * redis.tls.required (issue 12, item 5) and mutual TLS: `agentd run` with a
 * plain URL the policy refuses stops with exit 2 and one line; against a
 * server that requires client certificates, the daemon connects with one and
 * never without.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { beforeAll, describe, expect, it } from 'vitest';
import type { TestRedis } from '../helpers/redis.ts';
import type { TestCerts } from '../helpers/tls.ts';
import { expectNoFatal, isAlive, processSuite } from '../helpers/process.ts';
import { hasMsg, keys, uniqueId } from '../helpers/util.ts';

// The suite's Redis is the plain one; the mutual-TLS server is the file's second.
const suite = processSuite();

describe('redis.tls.required and mutual TLS', () => {
  let certs: TestCerts;
  let mtls: TestRedis;

  beforeAll(async () => {
    certs = await suite.certs();
    mtls = await suite.freshRedis({ tls: certs, tlsAuthClients: true });
  });

  it('required=true: a plain redis:// URL stops the start with exit 2 and one line naming the setting, not the password', async () => {
    const id = uniqueId('tlsreq');
    const res = await suite.run(['run'], {
      redisUrl: `redis://:hunter2-pw@127.0.0.1:${suite.redis.port}/0`,
      env: { AGENTD_REDIS_TLS_REQUIRED: 'true', AGENTD_AGENT_ID: id },
      timeoutMs: 15_000,
    });
    expect(res.code).toBe(2);
    const lines = res.stderr.split('\n').filter((l) => l.trim() !== '');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/redis\.tls\.required/);
    expect(`${res.stdout}${res.stderr}`).not.toContain('hunter2-pw');
    // It never connected: no presence.
    expect(await suite.cmd.exists(keys.heartbeat(id))).toBe(0);
  });

  it('required=auto (default): plain redis:// to loopback is allowed', async () => {
    const id = uniqueId('tlsauto');
    const d = await suite.spawn({ id, env: { AGENTD_HEARTBEAT_TTL: '2', AGENTD_HEARTBEAT_INTERVAL: '0.5' } });
    await d.ready(15_000);
    expect(await suite.cmd.exists(keys.heartbeat(id))).toBe(1);
  });

  it('required=auto: a name under .localhost is not loopback (resolved by DNS like any other name): exit 2', async () => {
    // glibc does not special-case *.localhost: the name goes to DNS, which may answer with any address.
    const res = await suite.run(['run'], { redisUrl: `redis://:hunter2-pw@redis.localhost:${suite.redis.port}/0`, env: { AGENTD_AGENT_ID: uniqueId('tlsdot') }, timeoutMs: 15_000 });
    expect(res.code).toBe(2);
    expect(res.stderr.trim().split('\n')).toHaveLength(1);
    expect(res.stderr).toMatch(/redis\.tls\.required: .*non-loopback host redis\.localhost/);
    expect(`${res.stdout}${res.stderr}`).not.toContain('hunter2-pw');
  });

  it('mutual TLS: with the client certificate it registers; without one it is never ready', async () => {
    const den = uniqueId('mtls-den');
    const withCert = uniqueId('mtls');
    const d = await suite.spawn({
      redisUrl: mtls.url,
      id: withCert,
      den,
      env: {
        AGENTD_REDIS_TLS_CA_FILE: certs.caCert,
        AGENTD_REDIS_TLS_CERT_FILE: certs.serverCert,
        AGENTD_REDIS_TLS_KEY_FILE: certs.serverKey,
        AGENTD_HEARTBEAT_TTL: '2',
        AGENTD_HEARTBEAT_INTERVAL: '0.5',
      },
    });
    await d.ready(15_000);
    const c = mtls.client();
    expect(await c.sismember(keys.den(den), withCert)).toBe(1);

    const without = uniqueId('nocert');
    const n = await suite.spawn({ redisUrl: mtls.url, id: without, den, env: { AGENTD_REDIS_TLS_CA_FILE: certs.caCert } });
    await n.waitForLog((l) => l['msg'] === 'redis connection error' || hasMsg('redis reconnecting')(l), 10_000);
    await sleep(2_000);
    expect(n.logs.some(hasMsg('agentd ready'))).toBe(false);
    expect(isAlive(n)).toBe(true);
    expect(await c.exists(keys.heartbeat(without))).toBe(0);
    expectNoFatal(n);
    expectNoFatal(d);
  });
});
