/**
 * `agentd run` against a TLS-only redis-server (fault 11): connects only with
 * the right CA, never falls back to plaintext, and no secret reaches any output.
 */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { beforeAll, describe, expect, it } from 'vitest';
import type { DaemonProcess } from '../helpers/daemon.ts';
import type { TestRedis } from '../helpers/redis.ts';
import type { TestCerts } from '../helpers/tls.ts';
import { expectNoFatal, isAlive, processSuite } from '../helpers/process.ts';
import { hasMsg, keys, uniqueId, waitFor } from '../helpers/util.ts';

const PASSWORD = 's3cretPassw0rd';
/** How long a daemon that must not connect is given to (wrongly) become ready. */
const NEVER_READY_MS = 3_000;

// Both servers are the file's own, made with the suite's certificates.
const suite = processSuite({ redis: false, env: { AGENTD_HEARTBEAT_TTL: '2', AGENTD_HEARTBEAT_INTERVAL: '0.5' } });

describe('agentd run over TLS', () => {
  let certs: TestCerts;
  let redis: TestRedis; // TLS only, no password
  let authRedis: TestRedis; // TLS only, --requirepass
  let authUrl: string;

  beforeAll(async () => {
    certs = await suite.certs();
    [redis, authRedis] = await Promise.all([suite.freshRedis({ tls: certs }), suite.freshRedis({ tls: certs, password: PASSWORD })]);
    authUrl = `rediss://localhost:${authRedis.port}`;
  });

  /** A daemon with the given URL (and settings), not waited for. */
  async function startDaemon(redisUrl: string, env: Record<string, string> = {}): Promise<{ d: DaemonProcess; id: string; den: string }> {
    const d = await suite.spawn({ redisUrl, id: uniqueId('tls-agent'), den: uniqueId('tls-den'), env });
    return { d, id: d.id, den: d.den };
  }

  /** Every line the daemon wrote, stdout and stderr. */
  const allOutput = (d: DaemonProcess): string[] => [...d.logs.map((l) => JSON.stringify(l)), ...d.stderr];

  async function expectNeverReady(d: DaemonProcess, id: string, den: string, server: TestRedis): Promise<void> {
    await sleep(NEVER_READY_MS);
    expect(d.logs.some(hasMsg('agentd ready'))).toBe(false);
    expect(d.logs.some(hasMsg('event subscription confirmed'))).toBe(false);
    expect(isAlive(d)).toBe(true); // keeps retrying, does not crash
    const c = server.client(); // with the server's password, if it has one
    expect(await c.sismember(keys.den(den), id)).toBe(0);
    expect(await c.exists(keys.heartbeat(id))).toBe(0);
    expectNoFatal(d);
  }

  it('connects with rediss:// and the right CA, and registers', async () => {
    const { d, id, den } = await startDaemon(redis.url, { AGENTD_REDIS_TLS_CA_FILE: certs.caCert });
    await d.waitForLog(hasMsg('agentd ready'), 15_000);
    const target = d.logs.find(hasMsg('redis target'));
    expect(target?.['tls']).toBe(true);
    const c = redis.client();
    expect(await c.sismember(keys.den(den), id)).toBe(1);
    expect(await c.exists(keys.heartbeat(id))).toBe(1);
    const rec = JSON.parse((await c.hget(keys.registry, id)) as string) as Record<string, unknown>;
    expect(rec).toMatchObject({ id, den, status: 'online', pid: d.pid });
    const names = ((await c.client('LIST')) as string).match(new RegExp(`name=agentd:${id}:(cmd|sub)\\b`, 'g'));
    expect(names?.sort()).toEqual([`name=agentd:${id}:cmd`, `name=agentd:${id}:sub`]);

    d.signal('SIGTERM');
    expect(await d.exited).toEqual({ code: 0, signal: null });
    expect(await c.sismember(keys.den(den), id)).toBe(0);
    expectNoFatal(d);
  });

  it('with the wrong CA: never ready, logs a certificate error', async () => {
    const { d, id, den } = await startDaemon(redis.url, { AGENTD_REDIS_TLS_CA_FILE: certs.wrongCaCert });
    const err = await d.waitForLog((l) => l['msg'] === 'redis connection error', 10_000);
    expect(String(err['err'])).toMatch(/certificate|self[- ]signed|UNABLE_TO_VERIFY|unable to verify/i);
    await expectNeverReady(d, id, den, redis);
  });

  it('redis:// (plaintext) to the TLS port: never ready, no fallback', async () => {
    const { d, id, den } = await startDaemon(redis.url.replace(/^rediss:/, 'redis:'));
    expect(redis.url.startsWith('rediss://')).toBe(true);
    await d.waitForLog(hasMsg('redis reconnecting'), 10_000);
    expect(d.logs.find(hasMsg('redis target'))?.['tls']).toBe(false);
    await expectNeverReady(d, id, den, redis);
  });

  it('a TLS CA file with a redis:// URL is a configuration error (exit 2): never connects without TLS', async () => {
    const res = await suite.run(['run'], {
      redisUrl: redis.url.replace(/^rediss:/, 'redis:'),
      env: {
        AGENTD_REDIS_TLS_CA_FILE: certs.caCert,
        AGENTD_AGENT_ID: uniqueId('tls-agent'),
      },
      timeoutMs: 15_000,
    });
    expect(res.code).toBe(2);
    const lines = res.stderr.split('\n').filter((l) => l.trim() !== '');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/redis\.tls\.caFile/);
    expect(lines[0]).toMatch(/TLS/);
    expect(res.stdout).not.toMatch(/agentd ready/);
  });

  it('a password in the URL connects, and the password appears in no output line nor in `agentd config`', async () => {
    const url = `rediss://:${PASSWORD}@localhost:${authRedis.port}`;
    const env = { AGENTD_REDIS_TLS_CA_FILE: certs.caCert, AGENTD_LOG_LEVEL: 'trace' };
    const { d, id, den } = await startDaemon(url, env);
    await d.waitForLog(hasMsg('agentd ready'), 15_000);
    const c = authRedis.client();
    expect(await c.sismember(keys.den(den), id)).toBe(1);

    // Make it log about its connection: drop both connections so it reconnects (with the password).
    const killed = await c.call('CLIENT', 'KILL', 'USER', 'default', 'SKIPME', 'yes');
    expect(Number(killed)).toBeGreaterThanOrEqual(2);
    await d.waitForLog(hasMsg(/subscription confirmed again/), 10_000);

    d.signal('SIGTERM');
    expect(await d.exited).toEqual({ code: 0, signal: null });
    expect(await c.sismember(keys.den(den), id)).toBe(0);
    expectNoFatal(d);

    const output = allOutput(d);
    expect(output.length).toBeGreaterThan(5);
    expect(output.filter((l) => l.includes(PASSWORD))).toEqual([]);
    expect(JSON.stringify(d.logs.find(hasMsg('redis target')))).toContain('***');

    const conf = await suite.run(['config'], { redisUrl: url, env: { ...env, AGENTD_AGENT_ID: id, AGENTD_DEN: den }, timeoutMs: 15_000 });
    expect(conf.code).toBe(0);
    expect(conf.stdout + conf.stderr).not.toContain(PASSWORD);
    const printed = JSON.parse(conf.stdout) as { redis: { url: string } };
    expect(printed.redis.url).toBe(`rediss://:***@localhost:${authRedis.port}`);

    // The CLI commands connect with it too, and do not print it.
    const members = await suite.run(['members', '--den', den, '--json'], { redisUrl: url, env, timeoutMs: 15_000 });
    expect(members.code).toBe(0);
    expect(members.stdout + members.stderr).not.toContain(PASSWORD);
    expect(JSON.parse(members.stdout)).toEqual([]);
  });

  it('a wrong password: never ready, and the error line does not contain the password', async () => {
    const wrong = `${PASSWORD}-wrong`;
    const url = `rediss://:${wrong}@localhost:${authRedis.port}`;
    const { d, id, den } = await startDaemon(url, { AGENTD_REDIS_TLS_CA_FILE: certs.caCert, AGENTD_LOG_LEVEL: 'trace' });
    const err = await d.waitForLog((l) => l['msg'] === 'redis connection error', 10_000);
    expect(String(err['err'])).toMatch(/WRONGPASS|invalid password|invalid username-password/i);
    await expectNeverReady(d, id, den, authRedis);
    await d.stop();
    expect(allOutput(d).filter((l) => l.includes(wrong) || l.includes(PASSWORD))).toEqual([]);
  });

  it('a password file (AGENTD_REDIS_PASSWORD_FILE) connects, and its content is never printed', async () => {
    const file = join(certs.dir, 'redis-password');
    await writeFile(file, `${PASSWORD}\n`, { mode: 0o600 });
    const env = {
      AGENTD_REDIS_TLS_CA_FILE: certs.caCert,
      AGENTD_REDIS_PASSWORD_FILE: file,
      AGENTD_LOG_LEVEL: 'trace',
    };
    // No password in the URL: it comes from the file.
    const { d, id, den } = await startDaemon(authUrl, env);
    await d.waitForLog(hasMsg('agentd ready'), 15_000);
    const c = authRedis.client();
    expect(await c.sismember(keys.den(den), id)).toBe(1);
    await waitFor('heartbeat key', async () => (await c.exists(keys.heartbeat(id))) === 1, 2_000);

    d.signal('SIGTERM');
    expect(await d.exited).toEqual({ code: 0, signal: null });
    expect(allOutput(d).filter((l) => l.includes(PASSWORD))).toEqual([]);
    expectNoFatal(d);

    const conf = await suite.run(['config'], { redisUrl: authUrl, env, timeoutMs: 15_000 });
    expect(conf.code).toBe(0);
    expect(conf.stdout + conf.stderr).not.toContain(PASSWORD);
    expect((JSON.parse(conf.stdout) as { redis: { passwordFile: string } }).redis.passwordFile).toBe(file);
  });
});
