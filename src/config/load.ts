import { loadKeys } from '../security/keys.ts';
import { accessSync, constants, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import convict from 'convict';
import { AgentdError } from '../errors.ts';
import { registerFormats } from './formats.ts';
import { schema, type AgentdConfig, type DeepPartial, type PluginSpec } from './schema.ts';

export interface LoadConfigOptions {
  /** JSON config file (from --config or AGENTD_CONFIG). */
  readonly file?: string | undefined;
  /** Environment to read AGENTD_* from; embedding code passes what it wants, the CLI passes process.env. */
  readonly env?: Readonly<Record<string, string | undefined>>;
  /** Command-line flags (`--redis-url …`); they win over the environment. */
  readonly args?: readonly string[];
  /** Values set in code; they win over everything else. */
  readonly overrides?: DeepPartial<AgentdConfig> | undefined;
  /** Directory relative plugin paths from the environment, flags or overrides resolve against. */
  readonly cwd?: string;
}

export interface LoadedConfig {
  readonly config: AgentdConfig;
  /** The config file that was read, if any. */
  readonly file: string | undefined;
}

type SchemaNode = { [key: string]: SchemaNode | unknown };

/** One setting as `listSettings()` describes it. */
export interface SettingInfo {
  readonly key: string;
  readonly env: string;
  readonly arg: string;
  readonly doc: string;
  readonly default: unknown;
  readonly format: unknown;
  readonly sensitive: boolean;
}

/** Every setting, flattened to dotted keys, in schema order. */
export function listSettings(): SettingInfo[] {
  const out: SettingInfo[] = [];
  const walk = (node: SchemaNode, prefix: string): void => {
    for (const [name, value] of Object.entries(node)) {
      const key = prefix ? `${prefix}.${name}` : name;
      const v = value as Record<string, unknown>;
      if (typeof v === 'object' && v !== null && 'doc' in v && 'default' in v) {
        out.push({
          key,
          env: String(v['env']),
          arg: String(v['arg']),
          doc: String(v['doc']),
          default: v['default'],
          format: v['format'],
          sensitive: v['sensitive'] === true,
        });
      } else {
        walk(v as SchemaNode, key);
      }
    }
  };
  walk(schema as unknown as SchemaNode, '');
  return out;
}

function readJsonFile(file: string): unknown {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'EIO';
    throw new AgentdError('AGENTD_ERR_CONFIG_FILE', `config file ${file}: cannot read it (${code})`);
  }
  try {
    const parsed: unknown = JSON.parse(text);
    if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
      throw new Error('the top level must be a JSON object');
    }
    return parsed;
  } catch (err) {
    throw new AgentdError('AGENTD_ERR_CONFIG_FILE', `config file ${file}: not valid JSON (${(err as Error).message})`);
  }
}

/** Turns convict's multi-line message into one line that names each key and its environment variable. */
function convictMessage(
  message: string,
  env: Readonly<Record<string, string | undefined>>,
  file: string | undefined,
  args: readonly string[] = [],
): string {
  const byKey = new Map(listSettings().map((s) => [s.key, s]));
  return message
    .split('\n')
    .filter((line) => line.trim() !== '')
    .map((line) => {
      const undeclared = /^configuration param '(.+)' not declared in the schema$/.exec(line);
      if (undeclared) return `${undeclared[1]}: unknown setting${file ? ` in ${file}` : ''}`;
      // Our formats already quote the bad value; convict's own copy would say it twice.
      const m = /^([\w.]+): (.*?)(?:: value was .*)?$/.exec(line);
      if (!m) return line;
      const setting = byKey.get(m[1] ?? '');
      // A flag wins over the environment, so it is the one to blame when both are set.
      const flag = setting && args.some((x) => x === `--${setting.arg}` || x.startsWith(`--${setting.arg}=`));
      const from = setting && flag ? ` (from --${setting.arg})` : setting && env[setting.env] !== undefined ? ` (from ${setting.env})` : '';
      return `${m[1]}${from}: ${m[2]}`;
    })
    .join('; ');
}

function isPathSpecifier(spec: string): boolean {
  return spec.startsWith('./') || spec.startsWith('../') || spec.startsWith('/') || spec.startsWith('file:') || spec === '.' || spec === '..';
}

function normalizePlugins(entries: readonly unknown[], baseDir: string): PluginSpec[] {
  return entries.map((entry) => {
    const { module, options } =
      typeof entry === 'string' ? { module: entry, options: {} } : (entry as { module: string; options?: Record<string, unknown> });
    const resolved = module.startsWith('file:')
      ? module
      : isPathSpecifier(module)
        ? pathToFileURL(path.resolve(baseDir, module)).href
        : module;
    return { module: resolved, options: options ?? {} };
  });
}

function checkReadable(key: string, file: string): void {
  if (file === '') return;
  try {
    accessSync(file, constants.R_OK);
  } catch (err) {
    throw new AgentdError('AGENTD_ERR_CONFIG', `${key}: cannot read ${file} (${(err as NodeJS.ErrnoException).code ?? 'EIO'})`);
  }
}

function crossCheck(c: AgentdConfig): void {
  if (!(c.heartbeat.interval < c.heartbeat.ttl / 2)) {
    throw new AgentdError(
      'AGENTD_ERR_CONFIG',
      `heartbeat.interval: must be below heartbeat.ttl / 2 (got interval ${c.heartbeat.interval} s with ttl ${c.heartbeat.ttl} s)`,
    );
  }
  // Running handlers refresh their claims at poll ticks: slower than orphanAfter / 4 and live work looks orphaned.
  if (!(c.durable.pollInterval <= c.durable.orphanAfter / 4)) {
    throw new AgentdError(
      'AGENTD_ERR_CONFIG',
      `durable.pollInterval: must be at most durable.orphanAfter / 4 (got pollInterval ${c.durable.pollInterval} s with orphanAfter ${c.durable.orphanAfter} s)`,
    );
  }
  const tls = c.redis.tls;
  if (!c.redis.url.startsWith('rediss:')) {
    for (const [key, value] of [
      ['redis.tls.caFile', tls.caFile],
      ['redis.tls.certFile', tls.certFile],
      ['redis.tls.keyFile', tls.keyFile],
      ['redis.tls.serverName', tls.serverName],
    ] as const) {
      if (value !== '') {
        throw new AgentdError('AGENTD_ERR_CONFIG', `${key}: is set but redis.url is not a rediss:// URL; refusing to connect without TLS`);
      }
    }
  }
  if (c.http.statusPage && c.http.port === 0) {
    throw new AgentdError('AGENTD_ERR_CONFIG', 'http.statusPage: is on but http.port is 0 (the endpoint is off); set http.port, or turn the status page off');
  }
  if ((tls.certFile === '') !== (tls.keyFile === '')) {
    throw new AgentdError('AGENTD_ERR_CONFIG', 'redis.tls.certFile: a client certificate needs both certFile and keyFile');
  }
  // Caught here, a missing plugin file fails `agentd config` too, not only `agentd run`.
  for (const plugin of c.plugins) {
    if (!plugin.module.startsWith('file:')) continue;
    const file = fileURLToPath(plugin.module);
    try {
      accessSync(file, constants.R_OK);
    } catch (err) {
      throw new AgentdError('AGENTD_ERR_PLUGIN_LOAD', `plugin ${file}: cannot read it (${(err as NodeJS.ErrnoException).code ?? 'EIO'})`);
    }
  }
  if (c.security.signing !== 'off') {
    if (c.security.keysFile === '') throw new AgentdError('AGENTD_ERR_CONFIG', `security.keysFile: security.signing=${c.security.signing} needs a keys file (one "<kid> <secret>" a line)`);
    loadKeys(c.security.keysFile); // fails `agentd config` too; the message never quotes a secret
  }
  checkReadable('redis.passwordFile', c.redis.passwordFile);
  checkReadable('redis.tls.caFile', tls.caFile);
  checkReadable('redis.tls.certFile', tls.certFile);
  checkReadable('redis.tls.keyFile', tls.keyFile);
}

function flatten(value: object, prefix: string): Array<[string, unknown]> {
  const out: Array<[string, unknown]> = [];
  for (const [k, v] of Object.entries(value)) {
    const key = prefix ? `${prefix}.${k}` : k;
    if (v !== null && typeof v === 'object' && !Array.isArray(v)) out.push(...flatten(v as object, key));
    else out.push([key, v]);
  }
  return out;
}

function deepFreeze<T>(value: T): T {
  if (value !== null && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const v of Object.values(value)) deepFreeze(v);
  }
  return value;
}

/**
 * Loads the configuration: schema defaults, then the JSON file, then the
 * environment, then flags, then code overrides. Throws an AgentdError
 * (exit code 2) whose message is one line naming the setting at fault.
 */
export function loadConfig(options: LoadConfigOptions = {}): LoadedConfig {
  registerFormats();
  const env: Record<string, string | undefined> = { ...(options.env ?? {}) };
  if (env['AGENTD_REDIS_URL'] === undefined && env['REDIS_URL'] !== undefined) env['AGENTD_REDIS_URL'] = env['REDIS_URL'];
  const args = [...(options.args ?? [])];
  const cwd = options.cwd ?? process.cwd();
  const file = options.file ?? (env['AGENTD_CONFIG'] || undefined);

  const conf = convict(schema as unknown as convict.Schema<AgentdConfig>, { env: env as NodeJS.ProcessEnv, args });
  let fileValues: Record<string, unknown> | undefined;
  const absFile = file === undefined ? undefined : path.resolve(cwd, file);
  if (absFile !== undefined) {
    fileValues = readJsonFile(absFile) as Record<string, unknown>;
    try {
      conf.load(fileValues);
    } catch (err) {
      throw new AgentdError('AGENTD_ERR_CONFIG', convictMessage((err as Error).message, env, absFile));
    }
  }
  // set() rather than load(): load() would re-apply the environment over the overrides.
  for (const [key, value] of flatten(options.overrides ?? {}, '')) {
    try {
      conf.set(key as never, value as never);
    } catch (err) {
      throw new AgentdError('AGENTD_ERR_CONFIG', `${key}: ${(err as Error).message}`);
    }
  }
  try {
    conf.validate({ allowed: 'strict' });
  } catch (err) {
    throw new AgentdError('AGENTD_ERR_CONFIG', convictMessage((err as Error).message, env, absFile, args));
  }

  const raw = conf.getProperties() as unknown as AgentdConfig & { plugins: unknown[] };
  // Paths from the file resolve against the file's folder; from anywhere else, against the working directory.
  const pluginsFromFile =
    absFile !== undefined &&
    fileValues?.['plugins'] !== undefined &&
    env['AGENTD_PLUGINS'] === undefined &&
    !args.some((a) => a === '--plugins' || a.startsWith('--plugins=')) &&
    options.overrides?.plugins === undefined;
  const baseDir = pluginsFromFile ? path.dirname(absFile) : cwd;
  const config: AgentdConfig = { ...raw, plugins: normalizePlugins(raw.plugins, baseDir) };
  crossCheck(config);
  return { config: deepFreeze(config), file: absFile };
}

/** The URL with any password replaced, safe for logs and `agentd config`. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password !== '') u.password = '***';
    return u.toString();
  } catch {
    return '<unparseable url>';
  }
}

/** A copy of the config that is safe to print. */
export function redactConfig(config: AgentdConfig): AgentdConfig {
  return { ...config, redis: { ...config.redis, url: redactUrl(config.redis.url) } };
}
