import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { describe, expect, it } from 'vitest';
import { loadConfig, redactConfig, listSettings } from '../../src/config/load.ts';
import { AgentdError } from '../../src/errors.ts';

function tempFile(name: string, content: unknown): string {
  const dir = mkdtempSync(join(tmpdir(), 'agentd-config-'));
  const file = join(dir, name);
  writeFileSync(file, typeof content === 'string' ? content : JSON.stringify(content));
  return file;
}

function configError(fn: () => unknown): AgentdError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(AgentdError);
    const e = err as AgentdError;
    expect(e.exitCode).toBe(2);
    expect(e.message).not.toContain('\n');
    return e;
  }
  throw new Error('expected a configuration error');
}

describe('loadConfig', () => {
  it('has the contract defaults', () => {
    const { config } = loadConfig({ env: {} });
    expect(config.redis.url).toBe('redis://127.0.0.1:6379/0');
    expect(config.agent.den).toBe('default');
    expect(config.heartbeat).toEqual({ ttl: 60, interval: 20 });
    expect(config.events.patterns).toEqual(['agent:events:*']);
    expect(config.events.maxBytes).toBe(1024 * 1024);
    expect(config.queue).toEqual({ concurrency: 16, max: 10_000, maxBytes: 64 * 1024 * 1024, overflow: 'drop-newest', handlerTimeoutMs: 30_000 });
    expect(config.lifecycle.drainTimeoutMs).toBeLessThan(10_000);
    expect(config.log.level).toBe('info');
    expect(config.plugins).toEqual([]);
  });

  it('reads the contract environment names, REDIS_URL as a fallback', () => {
    const { config } = loadConfig({
      env: {
        REDIS_URL: 'redis://fallback:1/0',
        AGENTD_AGENT_ID: 'agent-7',
        AGENTD_DEN: 'den.blue',
        AGENTD_HEARTBEAT_TTL: '30',
        AGENTD_HEARTBEAT_INTERVAL: '2.5',
        AGENTD_QUEUE_CONCURRENCY: '4',
        AGENTD_QUEUE_MAX: '100',
        AGENTD_HANDLER_TIMEOUT_MS: '1500',
        AGENTD_LOG_LEVEL: 'debug',
        AGENTD_EVENT_PATTERNS: 'agent:events:*, other:*',
      },
    });
    expect(config.redis.url).toBe('redis://fallback:1/0');
    expect(config.agent).toEqual({ id: 'agent-7', den: 'den.blue' });
    expect(config.heartbeat).toEqual({ ttl: 30, interval: 2.5 });
    expect(config.queue.concurrency).toBe(4);
    expect(config.queue.max).toBe(100);
    expect(config.queue.handlerTimeoutMs).toBe(1500);
    expect(config.log.level).toBe('debug');
    expect(config.events.patterns).toEqual(['agent:events:*', 'other:*']);
    expect(loadConfig({ env: { REDIS_URL: 'redis://a:1/0', AGENTD_REDIS_URL: 'redis://b:2/0' } }).config.redis.url).toBe('redis://b:2/0');
  });

  it('layers defaults < file < environment < flags < code', () => {
    const file = tempFile('c.json', { agent: { den: 'from-file', id: 'file-id' }, queue: { max: 7, concurrency: 3 }, log: { level: 'warn' } });
    const { config } = loadConfig({
      file,
      env: { AGENTD_DEN: 'from-env', AGENTD_QUEUE_MAX: '8', AGENTD_AGENT_ID: 'env-id' },
      args: ['--den', 'from-flag', '--agent-id', 'flag-id'],
      overrides: { agent: { id: 'code-id' } },
    });
    expect(config.log.level).toBe('warn'); // file over default
    expect(config.queue.concurrency).toBe(3); // file
    expect(config.queue.max).toBe(8); // env over file
    expect(config.agent.den).toBe('from-flag'); // flag over env
    expect(config.agent.id).toBe('code-id'); // code over flag
  });

  it('takes the file from AGENTD_CONFIG', () => {
    const file = tempFile('c.json', { agent: { den: 'via-env-file' } });
    expect(loadConfig({ env: { AGENTD_CONFIG: file } }).config.agent.den).toBe('via-env-file');
  });

  it('returns a deeply frozen config', () => {
    const { config } = loadConfig({ env: {} });
    expect(Object.isFrozen(config)).toBe(true);
    expect(Object.isFrozen(config.redis.tls)).toBe(true);
    expect(Object.isFrozen(config.events.patterns)).toBe(true);
  });

  it('resolves plugin paths against the config file folder, and against cwd when from the environment', () => {
    const file = tempFile('c.json', { plugins: ['./p/one.js', { module: 'some-package', options: { a: 1 } }] });
    const dir = join(file, '..');
    for (const f of ['p/one.js', 'app/two.js', 'three.js']) {
      mkdirSync(join(dir, f, '..'), { recursive: true });
      writeFileSync(join(dir, f), 'export default {}');
    }
    const fromFile = loadConfig({ file, env: {}, cwd: '/' }).config.plugins;
    expect(fromFile).toEqual([
      { module: pathToFileURL(join(dir, 'p/one.js')).href, options: {} },
      { module: 'some-package', options: { a: 1 } },
    ]);
    const fromEnv = loadConfig({ file, env: { AGENTD_PLUGINS: './two.js, ../three.js' }, cwd: join(dir, 'app') }).config.plugins;
    expect(fromEnv.map((p) => p.module)).toEqual([pathToFileURL(join(dir, 'app/two.js')).href, pathToFileURL(join(dir, 'three.js')).href]);
    // A path that names no file stops the load, naming the file.
    expect(() => loadConfig({ env: { AGENTD_PLUGINS: './missing.js' }, cwd: dir })).toThrow(`plugin ${join(dir, 'missing.js')}: cannot read it (ENOENT)`);
  });

  describe('refuses bad input with one line naming the key', () => {
    it('unknown key in the file', () => {
      const file = tempFile('c.json', { bogus: 1, queue: { maxx: 3 } });
      const e = configError(() => loadConfig({ file, env: {} }));
      expect(e.code).toBe('AGENTD_ERR_CONFIG');
      expect(e.message).toContain('bogus');
      expect(e.message).toContain('queue.maxx');
    });

    it.each([
      ['http://host:1/0', 'redis.url'],
      ['redis://', 'redis.url'],
      ['not a url', 'redis.url'],
      ['redis://h:1/zero', 'redis.url'],
    ])('bad URL %s', (url, key) => {
      const e = configError(() => loadConfig({ env: { AGENTD_REDIS_URL: url } }));
      expect(e.message).toMatch(new RegExp(`^${key.replace('.', '\\.')} \\(from AGENTD_REDIS_URL\\)`));
    });

    it('never echoes a password from a bad URL', () => {
      const e = configError(() => loadConfig({ env: { AGENTD_REDIS_URL: 'http://user:hunter2secret@host:1/0' } }));
      expect(e.message).not.toContain('hunter2secret');
    });

    it.each(['a:b', 'a*', 'has space', '', 'x'.repeat(129), 'ünï'])('agent id %j', (id) => {
      const e = configError(() => loadConfig({ env: { AGENTD_AGENT_ID: id } }));
      expect(e.message).toMatch(/^agent\.id \(from AGENTD_AGENT_ID\): must be 1-128 characters/);
      expect(e.message).not.toContain('value was');
    });

    it('den with a bad character', () => {
      expect(configError(() => loadConfig({ env: { AGENTD_DEN: 'den:1' } })).message).toContain('agent.den');
    });

    it.each([
      ['10', '5'],
      ['10', '6'],
      ['60', '30'],
    ])('heartbeat interval not below ttl/2 (ttl %s, interval %s)', (ttl, interval) => {
      const e = configError(() => loadConfig({ env: { AGENTD_HEARTBEAT_TTL: ttl, AGENTD_HEARTBEAT_INTERVAL: interval } }));
      expect(e.message).toMatch(/^heartbeat\.interval: must be below heartbeat\.ttl \/ 2/);
    });

    it.each([
      ['AGENTD_HEARTBEAT_TTL', '1.5', 'heartbeat.ttl'],
      ['AGENTD_HEARTBEAT_TTL', 'abc', 'heartbeat.ttl'],
      ['AGENTD_QUEUE_CONCURRENCY', '0', 'queue.concurrency'],
      ['AGENTD_QUEUE_MAX', '10x', 'queue.max'],
      ['AGENTD_QUEUE_OVERFLOW', 'drop-all', 'queue.overflow'],
      ['AGENTD_LOG_LEVEL', 'loud', 'log.level'],
      ['AGENTD_HEARTBEAT_INTERVAL', '-1', 'heartbeat.interval'],
    ])('%s=%s', (env, value, key) => {
      expect(configError(() => loadConfig({ env: { [env]: value } })).message).toContain(`${key} (from ${env})`);
    });

    it('TLS settings with a plain redis:// URL', () => {
      const ca = tempFile('ca.pem', 'x');
      const e = configError(() => loadConfig({ env: { AGENTD_REDIS_TLS_CA_FILE: ca } }));
      expect(e.message).toMatch(/^redis\.tls\.caFile: .*not a rediss:\/\/ URL/);
    });

    it('unreadable password or CA file', () => {
      expect(configError(() => loadConfig({ env: { AGENTD_REDIS_PASSWORD_FILE: '/nonexistent/pw' } })).message).toContain('redis.passwordFile');
      expect(
        configError(() => loadConfig({ env: { AGENTD_REDIS_URL: 'rediss://h:1/0', AGENTD_REDIS_TLS_CA_FILE: '/nonexistent/ca.pem' } })).message,
      ).toContain('redis.tls.caFile');
    });

    it('config file that is not JSON, or missing', () => {
      const bad = tempFile('c.json', '{ nope');
      const e = configError(() => loadConfig({ file: bad, env: {} }));
      expect(e.code).toBe('AGENTD_ERR_CONFIG_FILE');
      expect(e.message).toContain(bad);
      expect(configError(() => loadConfig({ file: '/nonexistent/agentd.json', env: {} })).message).toContain('/nonexistent/agentd.json');
    });

    it('plugin entries of the wrong shape', () => {
      const file = tempFile('c.json', { plugins: [{ module: './x.js', extra: true }] });
      expect(configError(() => loadConfig({ file, env: {} })).message).toMatch(/^plugins: entry 0 has unknown key "extra"/);
    });
  });

  it('redacts the URL password for printing', () => {
    const { config } = loadConfig({ env: { AGENTD_REDIS_URL: 'rediss://user:p%40ss@redis.example:6380/2' } });
    expect(config.redis.url).toBe('rediss://user:p%40ss@redis.example:6380/2');
    const printed = JSON.stringify(redactConfig(config));
    expect(printed).not.toContain('p%40ss');
    expect(printed).toContain('rediss://user:***@redis.example:6380/2');
  });

  it('gives every setting a doc, an AGENTD_ environment name and a flag', () => {
    const settings = listSettings();
    expect(settings.length).toBeGreaterThan(15);
    for (const s of settings) {
      expect(s.doc.length, s.key).toBeGreaterThan(10);
      expect(s.env, s.key).toMatch(/^AGENTD_[A-Z0-9_]+$/);
      expect(s.arg, s.key).toMatch(/^[a-z][a-z0-9-]+$/);
    }
    expect(new Set(settings.map((s) => s.env)).size).toBe(settings.length);
    expect(new Set(settings.map((s) => s.arg)).size).toBe(settings.length);
  });
});

describe('switches and counts from the environment', () => {
  it.each([
    ['off', false],
    ['false', false],
    ['0', false],
    ['no', false],
    ['on', true],
    ['TRUE', true],
    ['1', true],
  ])('AGENTD_REDIS_TLS_VERIFY=%s', (value, expected) => {
    expect(loadConfig({ env: { AGENTD_REDIS_URL: 'rediss://h:1/0', AGENTD_REDIS_TLS_VERIFY: value } }).config.redis.tls.verify).toBe(expected);
  });

  it('refuses a switch value it does not understand instead of reading it as true', () => {
    expect(() => loadConfig({ env: { AGENTD_REDIS_TLS_VERIFY: 'nope' } })).toThrow(/redis\.tls\.verify \(from AGENTD_REDIS_TLS_VERIFY\)/);
  });

  it('refuses trailing garbage in numbers', () => {
    expect(() => loadConfig({ env: { AGENTD_REDIS_COMMAND_TIMEOUT_MS: '10x' } })).toThrow(/redis\.commandTimeoutMs/);
    expect(loadConfig({ env: { AGENTD_REDIS_COMMAND_TIMEOUT_MS: '0' } }).config.redis.commandTimeoutMs).toBe(0);
  });
});

/** Configuration errors name the input the user actually gave (issue 9, item 18). */
describe('configuration error messages', () => {
  it('a number setting given text quotes the text, not null', () => {
    const e = configError(() => loadConfig({ env: { AGENTD_HEARTBEAT_TTL: 'abc' } }));
    expect(e.message).toBe('heartbeat.ttl (from AGENTD_HEARTBEAT_TTL): must be a whole number of at least 1 (got "abc")');
    const f = configError(() => loadConfig({ env: { AGENTD_HEARTBEAT_INTERVAL: 'soon' } }));
    expect(f.message).toContain('(got "soon")');
  });

  it('a bad flag is blamed on the flag, even when the environment sets the same setting', () => {
    const e = configError(() => loadConfig({ env: { AGENTD_REDIS_URL: 'redis://127.0.0.1:6390/0' }, args: ['--redis-url', 'foo'] }));
    expect(e.message).toMatch(/^redis\.url \(from --redis-url\): /);
    expect(e.message).not.toContain('AGENTD_REDIS_URL');
    // A bad environment value is still blamed on the variable.
    const f = configError(() => loadConfig({ env: { AGENTD_REDIS_URL: 'foo' } }));
    expect(f.message).toMatch(/^redis\.url \(from AGENTD_REDIS_URL\): /);
  });

  it('a malformed % escape in the URL password is refused at load, naming redis.url with the password redacted', () => {
    const e = configError(() => loadConfig({ env: { AGENTD_REDIS_URL: 'redis://user:s3cr%zzet@127.0.0.1:6390/0' } }));
    expect(e.message).toMatch(/^redis\.url \(from AGENTD_REDIS_URL\): .*malformed % escape/);
    expect(e.message).toContain('redis://user:***@127.0.0.1:6390/0');
    expect(e.message).not.toContain('s3cr');
    const u = configError(() => loadConfig({ env: { AGENTD_REDIS_URL: 'redis://us%G1er:pw@127.0.0.1:6390/0' } }));
    expect(u.message).toMatch(/user name .*malformed % escape/);
    // A well-formed escape is fine.
    expect(loadConfig({ env: { AGENTD_REDIS_URL: 'redis://user:p%40ss@127.0.0.1:6390/0' } }).config.redis.url).toContain('p%40ss');
  });
});
