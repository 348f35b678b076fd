/**
 * The daemon every agentd consumer runs: the real AgentDaemon class in the
 * consumer's own process, on `url`, with the metrics port off (unless
 * overridden), no peer watching, warnings only, errors to stderr.
 */
import { AgentDaemon, type InlinePlugin } from '../../src/daemon.ts';
import { loadConfig } from '../../src/config/load.ts';
import type { AgentdConfig, DeepPartial } from '../../src/config/schema.ts';
import { createLogger } from '../../src/log.ts';

export function benchDaemon(url: string, den: string, plugins: InlinePlugin[], overrides: DeepPartial<AgentdConfig> = {}, id = `bench-${process.pid}`): AgentDaemon {
  const { config } = loadConfig({
    env: {},
    overrides: { redis: { url }, agent: { id, den }, http: { port: 0 }, watch: { enabled: false }, log: { level: 'warn' }, ...overrides },
  });
  return new AgentDaemon({ config, logger: createLogger({ level: 'error', destination: process.stderr }), plugins });
}
