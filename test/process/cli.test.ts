/**
 * The `agentd` command line as a real child process: exit codes, one-line
 * configuration errors, help and version, `config` precedence, and the
 * `members` / `publish` commands against a running daemon.
 */
import { writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import type { RunAgentdResult } from '../helpers/daemon.ts';
import { fixture as plugin, processSuite, readRecords, type Agent } from '../helpers/process.ts';
import { collect, keys, PACKAGE_VERSION, uniqueId, waitFor } from '../helpers/util.ts';

function stderrLines(res: RunAgentdResult): string[] {
  return res.stderr.split('\n').filter((l) => l.trim() !== '');
}

/** Exit 2 with one stderr line naming `needle` (and at most a "Try `agentd --help`" hint after it). */
function expectExit2OneLine(res: RunAgentdResult, needle: string | RegExp): string {
  expect(res.code, `stdout:\n${res.stdout}\nstderr:\n${res.stderr}`).toBe(2);
  const lines = stderrLines(res);
  expect(lines.length, `stderr:\n${res.stderr}`).toBeGreaterThanOrEqual(1);
  expect(lines.length, `stderr:\n${res.stderr}`).toBeLessThanOrEqual(2);
  if (lines.length === 2) expect(lines[1]).toMatch(/--help/);
  const first = lines[0] as string;
  if (typeof needle === 'string') expect(first).toContain(needle);
  else expect(first).toMatch(needle);
  expect(res.stdout).not.toContain('agentd ready');
  return first;
}

const suite = processSuite({ redis: { requireControl: true } });

describe('agentd command line', () => {
  /** Settings every run gets (with the suite Redis's URL), so no run ever touches a developer's Redis. */
  const base = { AGENTD_AGENT_ID: uniqueId('cli'), AGENTD_DEN: uniqueId('cli-den') };
  const agentd = (args: string[], env: Record<string, string> = {}): Promise<RunAgentdResult> =>
    suite.run(args, { env: { ...base, ...env }, cwd: suite.tmp, timeoutMs: 20_000 });

  describe('configuration errors exit 2 with one line naming the setting', () => {
    it('unknown key in a JSON config file names the key', async () => {
      const file = join(suite.tmp, 'bogus.json');
      await writeFile(file, JSON.stringify({ bogus: 1 }));
      const line = expectExit2OneLine(await agentd(['run', '--config', file]), 'bogus');
      expect(line).toMatch(/unknown/i);
      // `agentd config` refuses it the same way.
      expectExit2OneLine(await agentd(['config', '--config', file]), 'bogus');
    });

    it('a non-redis URL names redis.url', async () => {
      const line = expectExit2OneLine(await agentd(['run'], { AGENTD_REDIS_URL: 'http://x' }), 'redis.url');
      expect(line).toContain('AGENTD_REDIS_URL');
      expectExit2OneLine(await agentd(['config'], { AGENTD_REDIS_URL: 'http://x' }), 'redis.url');
    });

    it('an agent id with a bad character names agent.id', async () => {
      expectExit2OneLine(await agentd(['run'], { AGENTD_AGENT_ID: 'a:b' }), 'agent.id');
    });

    it('a heartbeat interval not below TTL/2 names heartbeat.interval', async () => {
      expectExit2OneLine(await agentd(['run'], { AGENTD_HEARTBEAT_TTL: '10', AGENTD_HEARTBEAT_INTERVAL: '5' }), 'heartbeat.interval');
    });

    it('a missing plugin file names the file', async () => {
      expectExit2OneLine(await agentd(['run'], { AGENTD_PLUGINS: './nope.js' }), 'nope.js');
    });

    it('a module that is not a plugin names the file', async () => {
      const line = expectExit2OneLine(await agentd(['run'], { AGENTD_PLUGINS: plugin('not-a-plugin.js') }), 'not-a-plugin.js');
      expect(line).toMatch(/plugin object/);
    });

    it('a plugin whose setup throws names the plugin', async () => {
      const line = expectExit2OneLine(await agentd(['run'], { AGENTD_PLUGINS: plugin('setup-throws.js') }), 'setup-throws');
      expect(line).toContain('boom from setup-throws');
    });

    it('a plugin whose setup hangs is stopped by the setup timeout and named', async () => {
      const t0 = Date.now();
      const res = await agentd(['run'], { AGENTD_PLUGINS: plugin('setup-hangs.js'), AGENTD_SETUP_TIMEOUT_MS: '300' });
      const line = expectExit2OneLine(res, 'setup-hangs');
      expect(line).toMatch(/300 ms/);
      expect(Date.now() - t0).toBeLessThan(10_000);
    });
  });

  describe('usage', () => {
    it('an unknown flag exits 2', async () => {
      expectExit2OneLine(await agentd(['run', '--bogus']), '--bogus');
    });

    it('an unknown command exits 2', async () => {
      expectExit2OneLine(await agentd(['frobnicate']), 'frobnicate');
    });

    it('no command exits 2 and prints usage on stderr', async () => {
      const res = await agentd([]);
      expect(res.code).toBe(2);
      expect(res.stderr).toContain('Usage: agentd');
    });

    it('--help, run --help and members --help exit 0 and print usage', async () => {
      const [main, run, members] = await Promise.all([agentd(['--help']), agentd(['run', '--help']), agentd(['members', '--help'])]);
      expect(main.code).toBe(0);
      expect(main.stdout).toContain('Usage: agentd <command>');
      for (const cmd of ['run', 'members', 'publish', 'config']) expect(main.stdout).toContain(cmd);
      expect(run.code).toBe(0);
      expect(run.stdout).toContain('Usage: agentd run');
      expect(members.code).toBe(0);
      expect(members.stdout).toContain('Usage: agentd members');
      expect(members.stdout).toContain('--den');
    });

    it('--version prints the package.json version', async () => {
      const res = await agentd(['--version']);
      expect(res.code).toBe(0);
      expect(res.stdout.trim()).toBe(PACKAGE_VERSION);
    });
  });

  describe('agentd config', () => {
    it('precedence: flag over environment over config file over default', async () => {
      const file = join(suite.tmp, 'precedence.json');
      await writeFile(
        file,
        JSON.stringify({
          agent: { id: 'from-file', den: 'file-den' },
          heartbeat: { ttl: 30, interval: 5 },
          queue: { concurrency: 3 },
          log: { level: 'warn' },
        }),
      );
      const res = await agentd(['config', '--config', file, '--agent-id', 'from-flag', '--log-level', 'debug'], {
        AGENTD_AGENT_ID: 'from-env',
        AGENTD_DEN: 'env-den',
        AGENTD_LOG_LEVEL: 'error',
        AGENTD_HANDLER_TIMEOUT_MS: '1234',
      });
      expect(res.code, res.stderr).toBe(0);
      const conf = JSON.parse(res.stdout) as Record<string, Record<string, unknown>>;
      expect(conf['agent']).toEqual({ id: 'from-flag', den: 'env-den' }); // flag > env > file; env > file
      expect(conf['log']).toEqual({ level: 'debug' }); // flag > env > file
      expect(conf['heartbeat']).toEqual({ ttl: 30, interval: 5 }); // file > default
      expect(conf['queue']).toMatchObject({ concurrency: 3, handlerTimeoutMs: 1234, max: 10_000 }); // file, env, default
      expect(conf['redis']?.['url']).toBe(suite.redis.url);

      // AGENTD_CONFIG names the file too.
      const viaEnv = await agentd(['config'], { AGENTD_CONFIG: file, AGENTD_AGENT_ID: 'from-env' });
      expect(viaEnv.code, viaEnv.stderr).toBe(0);
      const conf2 = JSON.parse(viaEnv.stdout) as Record<string, Record<string, unknown>>;
      expect(conf2['agent']).toEqual({ id: 'from-env', den: base['AGENTD_DEN'] });
      expect(conf2['queue']?.['concurrency']).toBe(3);
    });

    it('REDIS_URL is used when AGENTD_REDIS_URL is unset, and loses to it when both are set', async () => {
      const onlyRedisUrl = await agentd(['config'], { AGENTD_REDIS_URL: '', AGENTD_DEN: '', REDIS_URL: `redis://127.0.0.1:${suite.redis.port}/3`, AGENTD_AGENT_ID: 'x' });
      expect(onlyRedisUrl.code, onlyRedisUrl.stderr).toBe(0);
      expect((JSON.parse(onlyRedisUrl.stdout) as { redis: { url: string } }).redis.url).toBe(`redis://127.0.0.1:${suite.redis.port}/3`);

      const both = await agentd(['config'], { REDIS_URL: `redis://127.0.0.1:${suite.redis.port}/3` });
      expect(both.code, both.stderr).toBe(0);
      expect((JSON.parse(both.stdout) as { redis: { url: string } }).redis.url).toBe(suite.redis.url);
    });
  });

  describe('members and publish against a running daemon', () => {
    let d: Agent;
    const id = uniqueId('cli-agent');
    const den = uniqueId('cli-den');
    let recordFile: string;

    beforeAll(async () => {
      d = await suite.spawn({ id, den, plugins: ['recorder.js'], env: { AGENTD_HEARTBEAT_TTL: '10', AGENTD_HEARTBEAT_INTERVAL: '2' } });
      recordFile = d.file;
      await d.ready(15_000);
    });

    it('members --den D --json lists the daemon with host and ttlMs > 0', async () => {
      const res = await agentd(['members', '--den', den, '--json']);
      expect(res.code, res.stderr).toBe(0);
      const rows = JSON.parse(res.stdout) as Array<Record<string, unknown>>;
      expect(rows).toHaveLength(1);
      expect(rows[0]).toMatchObject({ id, den, host: hostname(), status: 'online', pid: d.pid, version: PACKAGE_VERSION });
      expect(rows[0]?.['ttlMs'] as number).toBeGreaterThan(0);
      expect(rows[0]?.['ttlMs'] as number).toBeLessThanOrEqual(10_000);

      const table = await agentd(['members', '--den', den]);
      expect(table.code, table.stderr).toBe(0);
      expect(table.stdout).toContain(id);
      expect(table.stdout).toContain(hostname());

      const empty = await agentd(['members', '--den', uniqueId('empty-den'), '--json']);
      expect(empty.code).toBe(0);
      expect(JSON.parse(empty.stdout)).toEqual([]);
    });

    it('publish EVENT JSON reaches the daemon; the envelope has id, source, ts and den', async () => {
      const watcher = suite.redis.client();
      const seen = await collect(watcher, keys.channel('new_message'));
      const before = Date.now();
      const res = await agentd(['publish', 'new_message', '{"a":1}', '--json'], { AGENTD_AGENT_ID: 'cli-publisher', AGENTD_DEN: den });
      expect(res.code, res.stderr).toBe(0);
      const out = JSON.parse(res.stdout) as { channel: string; id: string; receivers: number };
      expect(out.channel).toBe(keys.channel('new_message'));
      expect(out.receivers).toBeGreaterThanOrEqual(2); // the daemon and the watcher

      const raw = await waitFor('raw message seen by the watcher', () => seen.find((m) => m.json?.['id'] === out.id));
      expect(raw.channel).toBe(keys.channel('new_message'));
      expect(raw.json).toMatchObject({ event: 'new_message', data: { a: 1 }, id: out.id, source: 'cli-publisher', den });
      expect(raw.json?.['id']).toMatch(/^[0-9a-f-]{36}$/);
      const ts = raw.json?.['ts'] as number;
      expect(ts).toBeGreaterThanOrEqual(before - 1_000);
      expect(ts).toBeLessThanOrEqual(Date.now());

      const rec = await waitFor('recorded by the daemon', () =>
        readRecords(recordFile).find((r) => r.event === 'new_message' && JSON.stringify(r.data) === '{"a":1}'),
      );
      expect(rec.data).toEqual({ a: 1 });

      // The plain-text form says where it went.
      const plain = await agentd(['publish', 'new_message', '{"a":2}']);
      expect(plain.code, plain.stderr).toBe(0);
      expect(plain.stdout).toMatch(/published new_message .* on agent:events:new_message to \d+ subscriber/);
      await waitFor('second publish recorded', () =>
        readRecords(recordFile).some((r) => r.event === 'new_message' && JSON.stringify(r.data) === '{"a":2}'),
      );
      expect(await suite.cmd.sismember(keys.den(den), id)).toBe(1);
    });

    it('publish with invalid JSON exits 2 and publishes nothing', async () => {
      const watcher = suite.redis.client();
      const seen = await collect(watcher, keys.channel('bad_json_test'));
      expectExit2OneLine(await agentd(['publish', 'bad_json_test', '{a:1']), /JSON/);
      await new Promise((r) => setTimeout(r, 200));
      expect(seen).toEqual([]);
    });
  });
});
