import { readFile, rm } from 'node:fs/promises';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startRedis, type TestRedis } from '../helpers/redis.ts';
import { makeTestCerts, type TestCerts } from '../helpers/tls.ts';

// Clients that must fail fast instead of queueing/reconnecting forever.
const noRetry = { retryStrategy: () => null, maxRetriesPerRequest: 0, connectTimeout: 2_000 } as const;

describe('startRedis (controllable server)', () => {
  let r: TestRedis;

  beforeAll(async () => {
    r = await startRedis({ requireControl: true });
  });
  afterAll(async () => {
    await r?.stop();
  });

  it('serves commands through client()', async () => {
    expect(r.controllable).toBe(true);
    expect(r.kind).not.toBe('external');
    expect(r.url).toBe(`redis://${r.host}:${r.port}`);
    const c = r.client();
    await c.set('k', 'v1');
    expect(await c.get('k')).toBe('v1');
  });

  it('kill() drops connections and start() brings it back on the same port', async () => {
    const port = r.port;
    const c = r.client(noRetry);
    expect(await c.ping()).toBe('PONG');

    await r.kill();
    await expect(c.ping()).rejects.toThrow();

    await r.start();
    expect(r.port).toBe(port);
    const c2 = r.client();
    await c2.set('k', 'v2');
    expect(await c2.get('k')).toBe('v2');
  });

  it('pause() makes PING hang until resume()', async () => {
    const c = r.client({ commandTimeout: 300 });
    expect(await c.ping()).toBe('PONG');

    await r.pause();
    try {
      await expect(c.ping()).rejects.toThrow(/timed out/i);
    } finally {
      await r.resume();
    }
    const c2 = r.client();
    expect(await c2.ping()).toBe('PONG');
  });

  it('stop() is idempotent', async () => {
    const other = await startRedis({ requireControl: true });
    await other.stop();
    await other.stop();
  });
});

describe('startRedis (TLS)', () => {
  let certs: TestCerts;
  let r: TestRedis;
  const extra: Redis[] = [];

  beforeAll(async () => {
    certs = await makeTestCerts();
    r = await startRedis({ tls: certs });
  });
  afterAll(async () => {
    for (const c of extra) c.disconnect();
    await r?.stop();
    if (certs) await rm(certs.dir, { recursive: true, force: true });
  });

  const track = (c: Redis): Redis => {
    extra.push(c);
    return c;
  };

  it('accepts a client that trusts the test CA', async () => {
    expect(r.url).toBe(`rediss://localhost:${r.port}`);
    const ca = await readFile(certs.caCert);
    const c = track(new Redis(r.url, { ...noRetry, tls: { ca, servername: 'localhost' } }));
    await c.set('tls', 'ok');
    expect(await c.get('tls')).toBe('ok');
    // client() wires the CA up by itself.
    expect(await r.client().get('tls')).toBe('ok');
  });

  it('rejects a client that trusts a different CA', async () => {
    const ca = await readFile(certs.wrongCaCert);
    const c = track(new Redis(r.url, { ...noRetry, lazyConnect: true, tls: { ca, servername: 'localhost' } }));
    const errors: Error[] = [];
    c.on('error', (e: Error) => errors.push(e));
    await expect(c.connect()).rejects.toThrow();
    const all = errors.map((e) => `${(e as NodeJS.ErrnoException).code ?? ''} ${e.message}`).join('\n');
    expect(all).toMatch(/certificate|UNABLE_TO_VERIFY|SELF_SIGNED/i);
  });

  it('gives no PING answer to a plain-text client on the TLS port', async () => {
    const c = track(new Redis(`redis://127.0.0.1:${r.port}`, { ...noRetry, lazyConnect: true, commandTimeout: 2_000 }));
    c.on('error', () => {});
    const outcome = await c.connect().then(
      () => c.ping().then((v) => `answered ${v}`, () => 'failed'),
      () => 'failed',
    );
    expect(outcome).toBe('failed');
  });
});
