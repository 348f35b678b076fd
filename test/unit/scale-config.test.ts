/**
 * The settings of issue 11: redis.sentinels / redis.sentinelName (parsed,
 * refused with one line naming the key, turned into ioredis's Sentinel
 * options), watch.sweeper and events.subscribe.
 */
import { describe, expect, it } from 'vitest';
import { parseHostPort } from '../../src/config/formats.ts';
import { loadConfig } from '../../src/config/load.ts';
import { redisOptions } from '../../src/redis/connection.ts';
import { AgentdError } from '../../src/errors.ts';

function refusal(env: Record<string, string>): string {
  try {
    loadConfig({ env });
  } catch (err) {
    expect(err).toBeInstanceOf(AgentdError);
    const message = (err as AgentdError).message;
    expect(message).not.toContain('\n');
    return message;
  }
  throw new Error('expected a configuration error');
}

describe('redis.sentinels', () => {
  it('parses host:port and [ipv6]:port', () => {
    expect(parseHostPort('10.0.0.1:26379')).toEqual({ host: '10.0.0.1', port: 26379 });
    expect(parseHostPort('sentinel-a.internal:1')).toEqual({ host: 'sentinel-a.internal', port: 1 });
    expect(parseHostPort('[::1]:26380')).toEqual({ host: '::1', port: 26380 });
    for (const bad of ['host', 'host:', ':26379', 'host:0', 'host:65536', 'host:port', 'a b:1', '::1:26379']) expect(parseHostPort(bad), bad).toBeUndefined();
  });

  it('is empty by default: redis.url is used as is', () => {
    const { config } = loadConfig({ env: {} });
    expect(config.redis.sentinels).toEqual([]);
    const o = redisOptions(config, 'command');
    expect(o.sentinels).toBeUndefined();
    expect(o.host).toBe('127.0.0.1');
  });

  it('turns into ioredis Sentinel options with the failover detector and a READONLY reconnect', () => {
    const { config } = loadConfig({
      env: { AGENTD_REDIS_URL: 'redis://:pw@ignored:1/3', AGENTD_REDIS_SENTINELS: '127.0.0.1:26379, [::1]:26380', AGENTD_REDIS_SENTINEL_NAME: 'fleet' },
    });
    expect(config.redis.sentinels).toEqual(['127.0.0.1:26379', '[::1]:26380']);
    const o = redisOptions(config, 'subscriber');
    expect(o.sentinels).toEqual([
      { host: '127.0.0.1', port: 26379 },
      { host: '::1', port: 26380 },
    ]);
    expect(o).toMatchObject({ name: 'fleet', role: 'master', failoverDetector: true, disconnectTimeout: 100, db: 3, password: 'pw' });
    expect(o.reconnectOnError?.(new Error('READONLY You can\'t write against a read only replica.'))).toBe(1);
    expect(o.reconnectOnError?.(new Error('ERR something else'))).toBe(false);
    expect(typeof o.sentinelRetryStrategy).toBe('function');
  });

  it('refuses a bad entry with one line naming the key and the entry', () => {
    const message = refusal({ AGENTD_REDIS_SENTINELS: '127.0.0.1:26379,nope' });
    expect(message).toMatch(/^redis\.sentinels \(from AGENTD_REDIS_SENTINELS\)/);
    expect(message).toContain('"nope"');
  });

  it('refuses a bad master name', () => {
    expect(refusal({ AGENTD_REDIS_SENTINEL_NAME: 'has space' })).toMatch(/^redis\.sentinelName/);
  });
});

describe('watch.sweeper and events.subscribe', () => {
  it('default to lease and auto, and take only their values', () => {
    const { config } = loadConfig({ env: {} });
    expect(config.watch.sweeper).toBe('lease');
    expect(config.events.subscribe).toBe('auto');
    expect(loadConfig({ env: { AGENTD_WATCH_SWEEPER: 'every', AGENTD_EVENT_SUBSCRIBE: 'pattern' } }).config).toMatchObject({ watch: { sweeper: 'every' }, events: { subscribe: 'pattern' } });
    expect(refusal({ AGENTD_WATCH_SWEEPER: 'some' })).toMatch(/^watch\.sweeper/);
    expect(refusal({ AGENTD_EVENT_SUBSCRIBE: 'exact' })).toMatch(/^events\.subscribe/);
  });
});
