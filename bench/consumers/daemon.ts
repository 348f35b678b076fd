/**
 * The daemon every agentd consumer runs: the real AgentDaemon class in the
 * consumer's own process, on `url`, with the metrics port off (unless
 * overridden), no peer watching, warnings only, errors to stderr.
 */
// The built package, as production runs it (bench/lib.ts ensureBuilt() builds it when src/ is newer).
import { AgentDaemon, createLogger, loadConfig, type AgentdConfig, type DeepPartial, type InlinePlugin } from '../../dist/index.js';

export function benchDaemon(url: string, den: string, plugins: InlinePlugin[], overrides: DeepPartial<AgentdConfig> = {}, id = `bench-${process.pid}`): AgentDaemon {
  const { config } = loadConfig({
    env: {},
    overrides: { redis: { url }, agent: { id, den }, http: { port: 0 }, watch: { enabled: false }, log: { level: 'warn' }, ...overrides },
  });
  return new AgentDaemon({ config, logger: createLogger({ level: 'error', destination: process.stderr }), plugins });
}
