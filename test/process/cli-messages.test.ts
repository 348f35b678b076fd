/**
 * What a new user sees when something is wrong (issue 9, item 18): each
 * mistake gets one clean line naming the input as given, and `agentd config`
 * catches what `agentd run` would fail on.
 */
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdtempSync, symlinkSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { beforeAll, describe, expect, it } from 'vitest';
import type { RunAgentdResult } from '../helpers/daemon.ts';
import { fixture as plugin, processSuite } from '../helpers/process.ts';
import { PACKAGE_VERSION, uniqueId } from '../helpers/util.ts';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const stderrLines = (res: RunAgentdResult): string[] => res.stderr.split('\n').filter((l) => l.trim() !== '');
const jsonLines = (res: RunAgentdResult): Array<Record<string, unknown>> =>
  res.stdout
    .split('\n')
    .filter((l) => l.trim().startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, unknown>);

const suite = processSuite({ env: { AGENTD_AGENT_ID: uniqueId('msg'), AGENTD_DEN: uniqueId('msg-den') } });

describe('agentd: one clean line per mistake', () => {
  const agentd = (args: string[], env: Record<string, string> = {}): Promise<RunAgentdResult> =>
    suite.run(args, { env, cwd: suite.tmp, timeoutMs: 20_000 });

  it('a number setting given text quotes the text', async () => {
    const res = await agentd(['config'], { AGENTD_HEARTBEAT_TTL: 'abc' });
    expect(res.code).toBe(2);
    expect(stderrLines(res)).toEqual(['agentd: heartbeat.ttl (from AGENTD_HEARTBEAT_TTL): must be a whole number of at least 1 (got "abc") [AGENTD_ERR_CONFIG]']);
  });

  it('a bad --redis-url flag is blamed on the flag, not on AGENTD_REDIS_URL', async () => {
    const res = await agentd(['config', '--redis-url', 'foo']);
    expect(res.code).toBe(2);
    const lines = stderrLines(res);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/^agentd: redis\.url \(from --redis-url\): must be a redis:\/\/ or rediss:\/\/ URL/);
  });

  it('a start failure prints one line, not a burst of JSON lines before it', async () => {
    const res = await agentd(['run'], { AGENTD_PLUGINS: plugin('setup-throws.js') });
    expect(res.code).toBe(2);
    expect(stderrLines(res)).toEqual([expect.stringMatching(/^agentd: plugin setup-throws \(.*\): setup failed: boom from setup-throws \[AGENTD_ERR_PLUGIN_SETUP\]$/)]);
    const after = jsonLines(res).filter((l) => l['level'] === 'fatal' || l['msg'] === 'agentd stopping' || l['msg'] === 'agentd stopped');
    expect(after).toEqual([]);
  });

  it('a plugin with a syntax error is named as file:line:col, by run and by config', async () => {
    const file = plugin('syntax-error.js');
    for (const cmd of ['run', 'config']) {
      const res = await agentd([cmd], { AGENTD_PLUGINS: file });
      expect(res.code, cmd).toBe(2);
      expect(stderrLines(res), cmd).toEqual([`agentd: plugin ${file}:5:21: cannot load: Unexpected token ';' [AGENTD_ERR_PLUGIN_LOAD]`]);
    }
  });

  it('a module that is not a plugin fails `agentd config` too', async () => {
    const res = await agentd(['config'], { AGENTD_PLUGINS: plugin('not-a-plugin.js') });
    expect(res.code).toBe(2);
    expect(stderrLines(res)[0]).toMatch(/not-a-plugin\.js: the default export must be a plugin object/);
  });

  it('a malformed % escape in the password fails `agentd config` and `run` alike: exit 2, redis.url named, password redacted', async () => {
    const url = suite.redis.url.replace('redis://', 'redis://agentd:s3cr%zz@');
    for (const cmd of ['config', 'run']) {
      const res = await agentd([cmd], { AGENTD_REDIS_URL: url });
      expect(res.code, cmd).toBe(2);
      const lines = stderrLines(res);
      expect(lines, cmd).toHaveLength(1);
      expect(lines[0]).toMatch(/^agentd: redis\.url \(from AGENTD_REDIS_URL\): .*malformed % escape/);
      expect(lines[0]).toContain('agentd:***@');
      expect(res.stderr + res.stdout).not.toContain('s3cr');
      expect(res.stderr).not.toContain('URI malformed');
    }
  });

  it('an unknown flag is one clean line', async () => {
    const res = await agentd(['members', '--bogus']);
    expect(res.code).toBe(2);
    expect(stderrLines(res)).toEqual(['agentd: unknown option --bogus [AGENTD_ERR_USAGE]', 'Try `agentd --help`.']);
    const missing = await agentd(['members', '--den']);
    expect(stderrLines(missing)[0]).toBe('agentd: option --den needs a value [AGENTD_ERR_USAGE]');
  });

  describe('the built bin under an old Node.js', () => {
    const OLD_NODE = '/usr/bin/node';
    const old = existsSync(OLD_NODE) ? spawnSync(OLD_NODE, ['-p', 'process.versions.node'], { encoding: 'utf8' }).stdout.trim() : '';
    const [major = 0, minor = 0] = old.split('.').map(Number);
    const isOld = old !== '' && (major < 22 || (major === 22 && minor < 12));
    let build: string;

    beforeAll(() => {
      if (!isOld) return;
      // The package as installed: dist/ from the TypeScript build, package.json, dependencies.
      build = mkdtempSync(join(suite.tmp, 'oldnode-'));
      const tsc = spawnSync(process.execPath, [join(ROOT, 'node_modules/typescript/bin/tsc'), '-p', join(ROOT, 'tsconfig.build.json'), '--outDir', join(build, 'dist'), '--declaration', 'false', '--sourceMap', 'false'], { encoding: 'utf8' });
      if (tsc.status !== 0) throw new Error(`build failed: ${tsc.stdout}${tsc.stderr}`);
      copyFileSync(join(ROOT, 'package.json'), join(build, 'package.json'));
      symlinkSync(join(ROOT, 'node_modules'), join(build, 'node_modules'));
    }, 60_000);

    it.skipIf(!isOld)(`refuses with one line under ${OLD_NODE} (v${old}), and runs under this node`, () => {
      const bin = join(build, 'dist/bin/agentd.js');
      const r = spawnSync(OLD_NODE, [bin, 'run'], { encoding: 'utf8', env: { PATH: process.env['PATH'] ?? '' } });
      expect(r.status).toBe(2);
      expect(r.stdout).toBe('');
      expect(r.stderr).toBe(`agentd: needs Node.js >= 22.12 (this is v${old} at ${OLD_NODE}) [AGENTD_ERR_USAGE]\n`);
      const ok = spawnSync(process.execPath, [bin, '--version'], { encoding: 'utf8' });
      expect(ok.stderr).toBe('');
      expect(ok.stdout.trim()).toBe(PACKAGE_VERSION);
      expect(ok.status).toBe(0);
    });
  });
});
