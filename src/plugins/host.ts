import type { Redis } from 'ioredis';
import type { Abortable, Binding } from '../bus/dispatcher.ts';
import type { AgentMemory } from '../memory/memory.ts';
import type { AgentEvent } from '../bus/envelope.ts';
import type { DurableApi } from '../durable/durable.ts';
import { withDeadline } from '../deadline.ts';
import { AgentdError, Code, describeError } from '../errors.ts';
import type { Logger } from '../log.ts';
import { guardRedis } from './guarded-redis.ts';
import type { LoadedPlugin } from './loader.ts';
import type { AgentInfo, PluginContext, PluginOptions } from './types.ts';

export interface PluginHostDeps {
  readonly agent: AgentInfo;
  readonly log: Logger;
  readonly redis: Redis;
  readonly publish: (type: string, data: unknown) => Promise<number>;
  readonly memory: AgentMemory;
  readonly timeoutMs: number;
  /** send / request / submit (durable messages). */
  readonly durable: DurableApi;
}

interface Entry {
  readonly loaded: LoadedPlugin;
  readonly context: PluginContext<PluginOptions>;
}

/** Runs `work` (a plugin's setup or close) with a time limit; the timer keeps the process alive, as the plugin may hold nothing open. */
function withTimeout<T>(work: () => Promise<T> | T, ms: number, what: string): Promise<T> {
  return withDeadline(Promise.resolve().then(work), ms, () => new Error(`${what} did not finish within ${ms} ms`), { ref: true });
}

/**
 * A handler call's context: the plugin's context plus a signal of the call's
 * own, made only if the handler looks at it (most never do, and an
 * AbortController per event adds up).
 */
class CallContext implements PluginContext<PluginOptions>, Abortable {
  // Own fields rather than getters: a handler that spreads its context keeps them.
  readonly agent: AgentInfo;
  readonly log: Logger;
  readonly redis: Redis;
  readonly publish: (type: string, data: unknown) => Promise<number>;
  readonly options: PluginOptions;
  readonly memory: AgentMemory;
  readonly send: DurableApi['send'];
  readonly request: DurableApi['request'];
  readonly submit: DurableApi['submit'];
  #controller: AbortController | undefined;
  #abortedWith: { reason: unknown } | undefined;

  constructor(base: PluginContext<PluginOptions>) {
    this.agent = base.agent;
    this.log = base.log;
    this.redis = base.redis;
    this.publish = base.publish;
    this.options = base.options;
    this.memory = base.memory;
    this.send = base.send;
    this.request = base.request;
    this.submit = base.submit;
  }

  get signal(): AbortSignal {
    if (!this.#controller) {
      this.#controller = new AbortController();
      if (this.#abortedWith) this.#controller.abort(this.#abortedWith.reason);
    }
    return this.#controller.signal;
  }

  abort(reason: unknown): void {
    if (this.#controller) this.#controller.abort(reason);
    else this.#abortedWith ??= { reason };
  }
}

/**
 * Gives each plugin its own context, runs setup in order and close in
 * reverse, and turns handlers into dispatcher bindings.
 */
export class PluginHost {
  readonly #entries: Entry[];
  readonly #deps: PluginHostDeps;
  readonly #lifetime = new AbortController();
  #setUp: Entry[] = [];

  constructor(plugins: readonly LoadedPlugin[], deps: PluginHostDeps) {
    this.#deps = deps;
    const seen = new Map<string, string>();
    for (const p of plugins) {
      const other = seen.get(p.plugin.name);
      if (other !== undefined) {
        throw new AgentdError('AGENTD_ERR_PLUGIN_LOAD', `plugin ${p.source}: name "${p.plugin.name}" is already used by ${other}`);
      }
      seen.set(p.plugin.name, p.source);
    }
    this.#entries = plugins.map((loaded) => ({
      loaded,
      context: Object.freeze({
        agent: deps.agent,
        log: deps.log.child({ plugin: loaded.plugin.name }),
        // A guarded view: a plugin cannot close, subscribe or re-select the daemon's connection.
        redis: guardRedis(deps.redis, loaded.plugin.name),
        publish: deps.publish,
        signal: this.#lifetime.signal,
        options: loaded.options,
        memory: deps.memory,
        send: (agentId: string, type: string, data: unknown) => deps.durable.send(agentId, type, data),
        request: <T>(agentId: string, type: string, data: unknown, options?: Parameters<DurableApi['request']>[3]) =>
          deps.durable.request<T>(agentId, type, data, options),
        submit: (type: string, data: unknown, options?: Parameters<DurableApi['submit']>[2]) => deps.durable.submit(type, data, options),
      }),
    }));
  }

  get names(): string[] {
    return this.#entries.map((e) => e.loaded.plugin.name);
  }

  /** One binding per (plugin, event type); each call gets a context of its own (its own signal). */
  bindings(): Binding[] {
    const out: Binding[] = [];
    for (const { loaded, context } of this.#entries) {
      const handlers = loaded.plugin.handlers;
      for (const [on, fn] of Object.entries(handlers)) {
        if (fn === undefined) continue; // an optional key of a typed plugin's handlers (the loader checked the rest are functions)
        out.push({
          plugin: loaded.plugin.name,
          on,
          context: () => new CallContext(context),
          handler: (event: AgentEvent, ctx: never) => fn.call(handlers, event, ctx),
        });
      }
    }
    return out;
  }

  /** Runs every setup in order. On failure, closes those already set up and throws AGENTD_ERR_PLUGIN_SETUP. */
  async setup(): Promise<void> {
    for (const entry of this.#entries) {
      const { plugin, source } = entry.loaded;
      if (plugin.setup) {
        try {
          await withTimeout(() => plugin.setup?.(entry.context), this.#deps.timeoutMs, 'setup');
        } catch (err) {
          await this.close();
          throw new AgentdError('AGENTD_ERR_PLUGIN_SETUP', `plugin ${plugin.name} (${source}): setup failed: ${describeError(err)}`, {
            cause: err,
          });
        }
      }
      this.#setUp.push(entry);
    }
  }

  /** Aborts the signal plugins got in setup: shutdown has begun (handlers still drain). */
  shutdownStarted(): void {
    if (!this.#lifetime.signal.aborted) this.#lifetime.abort(new Error('daemon shutting down'));
  }

  /** Closes the plugins that were set up, newest first; one failing close does not stop the others. */
  async close(): Promise<void> {
    this.shutdownStarted();
    const entries = this.#setUp.reverse();
    this.#setUp = [];
    for (const entry of entries) {
      const { plugin } = entry.loaded;
      if (!plugin.close) continue;
      try {
        await withTimeout(() => plugin.close?.(entry.context), this.#deps.timeoutMs, 'close');
      } catch (err) {
        this.#deps.log.error({ code: Code.AGENTD_ERR_PLUGIN_CLOSE, plugin: plugin.name, err: describeError(err) }, 'plugin close failed');
      }
    }
  }
}
