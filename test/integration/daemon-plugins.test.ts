import { mkdtempSync, mkdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { AgentDaemon } from '../../src/daemon.ts';
import { loadConfig } from '../../src/config/load.ts';
import { AgentdError } from '../../src/errors.ts';
import { definePlugin, type Plugin } from '../../src/plugins/types.ts';
import { captureLogger, makeDaemon, redisSuite } from '../helpers/inproc.ts';
import { uniqueId, waitFor } from '../helpers/util.ts';

const suite = redisSuite();

async function startError(daemon: AgentDaemon): Promise<AgentdError> {
  suite.track(daemon);
  try {
    await daemon.start();
  } catch (err) {
    expect(err).toBeInstanceOf(AgentdError);
    return err as AgentdError;
  }
  throw new Error('expected start() to fail');
}

describe('plugins', () => {
  it('loads modules from the config file folder with their options, sets up before ready, closes in reverse', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'agentd-plugins-'));
    mkdirSync(join(dir, 'plugins'));
    const record = join(dir, 'order.txt');
    const source = (name: string) => `
      import { appendFileSync } from 'node:fs';
      export default {
        name: ${JSON.stringify(name)},
        setup(ctx) { appendFileSync(${JSON.stringify(record)}, 'setup:${name}:' + JSON.stringify(ctx.options) + '\\n'); },
        handlers: {},
        close(ctx) { appendFileSync(${JSON.stringify(record)}, 'close:${name}:' + ctx.signal.aborted + '\\n'); },
      };`;
    writeFileSync(join(dir, 'plugins', 'first.js'), source('first'));
    writeFileSync(join(dir, 'plugins', 'second.mjs'), source('second'));
    const file = join(dir, 'agentd.json');
    writeFileSync(
      file,
      JSON.stringify({
        redis: { url: suite.redis.url },
        agent: { id: uniqueId(), den: uniqueId() },
        plugins: [{ module: './plugins/first.js', options: { colour: 'red' } }, './plugins/second.mjs'],
      }),
    );
    const { config } = loadConfig({ file, env: {}, cwd: '/' });
    const { logger } = captureLogger();
    const daemon = new AgentDaemon({ config, logger });
    suite.track(daemon);
    let readyAt = '';
    daemon.on('ready', () => {
      readyAt = readFileSync(record, 'utf8');
    });
    await daemon.start();
    expect(readyAt).toBe('setup:first:{"colour":"red"}\nsetup:second:{}\n');
    await daemon.close();
    expect(readFileSync(record, 'utf8')).toBe(
      'setup:first:{"colour":"red"}\nsetup:second:{}\nclose:second:true\nclose:first:true\n',
    );
  });

  it('refuses a plugin file that does not exist already when loading the config, naming the file', () => {
    const missing = join(tmpdir(), `${uniqueId('missing')}.js`);
    let err: unknown;
    try {
      makeDaemon(suite.redis.url, { plugins: [missing] as never });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(AgentdError);
    expect((err as AgentdError).code).toBe('AGENTD_ERR_PLUGIN_LOAD');
    expect((err as AgentdError).exitCode).toBe(2);
    expect((err as AgentdError).message).toBe(`plugin ${missing}: cannot read it (ENOENT)`);
  });

  it("refuses a package that cannot be resolved, without naming agentd's own files", async () => {
    const err = await startError(makeDaemon(suite.redis.url, { plugins: ['agentd-plugin-that-does-not-exist'] as never }).daemon);
    expect(err.code).toBe('AGENTD_ERR_PLUGIN_LOAD');
    expect(err.message).toMatch(/^plugin agentd-plugin-that-does-not-exist: cannot load: /);
    expect(err.message).not.toContain('loader.ts');
  });

  it('refuses a module that throws while loading', async () => {
    const file = join(mkdtempSync(join(tmpdir(), 'agentd-p-')), 'throws.js');
    writeFileSync(file, 'throw new Error("broken at import");');
    const err = await startError(makeDaemon(suite.redis.url, { plugins: [file] as never }).daemon);
    expect(err.code).toBe('AGENTD_ERR_PLUGIN_LOAD');
    expect(err.message).toContain(file);
    expect(err.message).toContain('broken at import');
  });

  it.each<[string, unknown, RegExp]>([
    ['a string', 'hello', /default export must be a plugin object/],
    ['no name', { handlers: {} }, /non-empty string "name"/],
    ['no handlers', { name: 'x' }, /"handlers" must be an object/],
    ['a handler that is not a function', { name: 'x', handlers: { e: 5 } }, /handler "e" must be a function/],
    ['an unknown key', { name: 'x', handlers: {}, onEvent: () => 1 }, /unknown plugin key "onEvent"/],
    ['setup that is not a function', { name: 'x', handlers: {}, setup: true }, /"setup" must be a function/],
  ])('refuses a plugin with %s', async (_what, plugin, message) => {
    const err = await startError(makeDaemon(suite.redis.url, {}, [plugin as Plugin]).daemon);
    expect(err.code).toBe('AGENTD_ERR_PLUGIN_LOAD');
    expect(err.message).toMatch(message);
  });

  it('refuses two plugins with the same name', async () => {
    const p = definePlugin({ name: 'twin', handlers: {} });
    const err = await startError(makeDaemon(suite.redis.url, {}, [p, { ...p }]).daemon);
    expect(err.message).toContain('"twin" is already used');
  });

  it('stops the start when setup throws, naming the plugin, and closes the plugins already set up', async () => {
    const closed: string[] = [];
    const t = makeDaemon(suite.redis.url, {}, [
      definePlugin({ name: 'fine', handlers: {}, close: () => void closed.push('fine') }),
      definePlugin({
        name: 'broken',
        setup: () => {
          throw new Error('no database');
        },
        handlers: {},
        close: () => void closed.push('broken'),
      }),
    ]);
    const err = await startError(t.daemon);
    expect(err.code).toBe('AGENTD_ERR_PLUGIN_SETUP');
    expect(err.exitCode).toBe(2);
    expect(err.message).toMatch(/^plugin broken \(\(code\)\): setup failed: no database$/);
    expect(closed).toEqual(['fine']);
    // Never reported ready, never joined its den.
    const members = await suite.redis.client().smembers(`den:${t.config.agent.den}:online_agents`);
    expect(members).toEqual([]);
  });

  it('stops the start when setup outlives its time limit', async () => {
    const t = makeDaemon(suite.redis.url, { lifecycle: { setupTimeoutMs: 150 } }, [
      definePlugin({ name: 'hangs', setup: () => new Promise<void>(() => undefined), handlers: {} }),
    ]);
    const err = await startError(t.daemon);
    expect(err.code).toBe('AGENTD_ERR_PLUGIN_SETUP');
    expect(err.message).toContain('hangs');
    expect(err.message).toContain('within 150 ms');
  });

  it('keeps closing the other plugins when one close fails', async () => {
    const closed: string[] = [];
    const t = makeDaemon(suite.redis.url, {}, [
      definePlugin({ name: 'a', handlers: {}, close: () => void closed.push('a') }),
      definePlugin({
        name: 'b',
        handlers: {},
        close: () => {
          throw new Error('close failed');
        },
      }),
    ]);
    suite.track(t.daemon);
    await t.daemon.start();
    await t.daemon.close();
    expect(closed).toEqual(['a']);
    await waitFor('the close error line', () => t.lines.some((l) => l['code'] === 'AGENTD_ERR_PLUGIN_CLOSE' && l['plugin'] === 'b'));
  });
});
