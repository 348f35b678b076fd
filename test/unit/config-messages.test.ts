/** Configuration errors name the input the user actually gave (issue 9, item 18). */
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/load.ts';
import { AgentdError } from '../../src/errors.ts';

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
