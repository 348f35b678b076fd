import { fileURLToPath } from 'node:url';
import type { PluginSpec } from '../config/schema.ts';
import { withDeadline } from '../deadline.ts';
import { AgentdError, describeError } from '../errors.ts';
import type { Plugin, PluginOptions } from './types.ts';

export interface LoadedPlugin {
  readonly plugin: Plugin<PluginOptions>;
  readonly options: PluginOptions;
  /** Where it came from: a file path, a package name, or "(code)". */
  readonly source: string;
}

const KNOWN_KEYS = new Set(['name', 'setup', 'handlers', 'close']);

/** Displays a specifier as the operator wrote it: a path for files, the name for packages. */
export function displaySpecifier(module: string): string {
  return module.startsWith('file:') ? fileURLToPath(module) : module;
}

/** Checks a plugin object's shape; throws a message that says what is wrong, without the source. */
export function validatePlugin(value: unknown): asserts value is Plugin<PluginOptions> {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new Error(`the default export must be a plugin object (got ${value === null ? 'null' : typeof value})`);
  }
  const p = value as Record<string, unknown>;
  if (typeof p['name'] !== 'string' || p['name'].trim() === '') throw new Error('the plugin needs a non-empty string "name"');
  for (const key of Object.keys(p)) {
    if (!KNOWN_KEYS.has(key)) throw new Error(`unknown plugin key "${key}" (allowed: name, setup, handlers, close)`);
  }
  for (const hook of ['setup', 'close'] as const) {
    if (p[hook] !== undefined && typeof p[hook] !== 'function') throw new Error(`"${hook}" must be a function`);
  }
  const handlers = p['handlers'];
  if (handlers === null || typeof handlers !== 'object' || Array.isArray(handlers)) {
    throw new Error('"handlers" must be an object of event type → function');
  }
  for (const [type, fn] of Object.entries(handlers)) {
    if (typeof fn !== 'function') throw new Error(`handler "${type}" must be a function`);
    if (type === '') throw new Error('a handler needs a non-empty event type (or "*")');
  }
}

/** A module still loading after `ms`: its top-level await has not settled. */
class LoadTimeout extends Error {}

function importWithin(module: string, ms: number | undefined): Promise<unknown> {
  if (ms === undefined) return import(module);
  // ref: a top-level await that holds nothing open would otherwise let the event loop run dry.
  return withDeadline(import(module), ms, () => new LoadTimeout(), { ref: true });
}

/**
 * Imports each plugin module in order and checks its shape. With `timeoutMs`
 * (lifecycle.setupTimeoutMs), a module whose top-level code has not finished
 * by then fails the load.
 */
export async function loadPlugins(specs: readonly PluginSpec[], timeoutMs?: number): Promise<LoadedPlugin[]> {
  const out: LoadedPlugin[] = [];
  for (const spec of specs) {
    const source = displaySpecifier(spec.module);
    let mod: { default?: unknown };
    try {
      mod = (await importWithin(spec.module, timeoutMs)) as { default?: unknown };
    } catch (err) {
      if (err instanceof LoadTimeout) {
        throw new AgentdError('AGENTD_ERR_PLUGIN_LOAD', `plugin ${source}: did not finish loading within ${timeoutMs} ms (lifecycle.setupTimeoutMs): a top-level await that never settles?`);
      }
      // Node's "imported from <loader.ts>" names our file, not the operator's.
      const cause = describeError(err).replace(/ imported from \S+$/, '');
      const at = err instanceof SyntaxError ? syntaxErrorAt(spec.module) : undefined;
      const where = at === undefined ? source : at.startsWith(`${source}:`) ? at : `${source} (${at})`;
      throw new AgentdError('AGENTD_ERR_PLUGIN_LOAD', `plugin ${where}: cannot load: ${cause}`, { cause: err });
    }
    try {
      validatePlugin(mod.default);
    } catch (err) {
      throw new AgentdError('AGENTD_ERR_PLUGIN_LOAD', `plugin ${source}: ${(err as Error).message}`);
    }
    out.push({ plugin: mod.default, options: spec.options, source });
  }
  return out;
}

/**
 * file:line:col of a syntax error, which import() does not say: `node --check`
 * on the file prints the line and a caret under the column. Only run after an
 * import failed with a SyntaxError; undefined when it cannot tell.
 */
function syntaxErrorAt(module: string): string | undefined {
  let file: string;
  try {
    file = module.startsWith('file:') ? fileURLToPath(module) : fileURLToPath(import.meta.resolve(module));
  } catch {
    return undefined;
  }
  // node:child_process only here, on a module that failed to load: a daemon that starts never loads it.
  const { spawnSync } = process.getBuiltinModule('node:child_process');
  const r = spawnSync(process.execPath, ['--check', file], { encoding: 'utf8', timeout: 5_000 });
  const lines = (r.stderr ?? '').split('\n');
  const where = /^(.*):(\d+)$/.exec(lines[0] ?? '');
  if (!where) return undefined;
  const caret = (lines[2] ?? '').indexOf('^');
  return `${where[1]}:${where[2]}${caret >= 0 ? `:${caret + 1}` : ''}`;
}
