import type { Redis } from 'ioredis';
import type { AgentEvent } from '../bus/envelope.ts';
import type { AgentMemory } from '../memory/memory.ts';
import type { RequestOptions, SubmitOptions } from '../durable/durable.ts';
import type { Logger } from '../log.ts';

export type PluginOptions = Readonly<Record<string, unknown>>;

export interface AgentInfo {
  readonly id: string;
  readonly den: string;
}

/** What a plugin's setup, handlers and close receive. */
export interface PluginContext<Options extends object = PluginOptions> {
  readonly agent: AgentInfo;
  /** A pino child logger carrying the plugin's name. */
  readonly log: Logger;
  /**
   * The daemon's shared command connection. Blocking commands (BLPOP, XREAD
   * BLOCK…), quit() and the others that would stall or close it are refused:
   * use `redis.duplicate()` for those and close the duplicate in `close`.
   */
  readonly redis: Redis;
  /** Publishes `{event, data, id, source, ts, den}` on `agent:events:<type>`; resolves with the number of receivers. */
  publish(type: string, data: unknown): Promise<number>;
  /**
   * In a handler: aborts when the handler's time limit passes, or when the
   * daemon gives up draining at shutdown. In setup: aborts when the daemon
   * starts shutting down. In close: already aborted.
   */
  readonly signal: AbortSignal;
  /** This plugin's options from the configuration. */
  readonly options: Options;
  /** This agent's short-term memory: conversation window, LLM cache, rate limits, task status, topics, preferences. */
  readonly memory: AgentMemory;
  /**
   * Durable, directed: appends `{event, data, id, source, ts, den}` to
   * `inbox:<agentId>`; that agent's handlers for `type` get it at least once,
   * even if it is offline now (docs/durable.md). Resolves with the envelope id.
   */
  send(agentId: string, type: string, data: unknown): Promise<string>;
  /**
   * Sends to `agentId`'s inbox and resolves with what its handler for `type`
   * returns; rejects with a RequestError whose `reason` is timeout,
   * handler_failed, dead_lettered, agent_down or no_such_agent.
   */
  request<T = unknown>(agentId: string, type: string, data: unknown, options?: RequestOptions): Promise<T>;
  /** Shared work: appends to `den:<den>:tasks` (default: this den); exactly one live member handles it. Resolves with the envelope id. */
  submit(type: string, data: unknown, options?: SubmitOptions): Promise<string>;
}

/**
 * Payload types by event type, for plugin authors: `{ new_message: { text: string } }`
 * types `event.data` in the `new_message` handler. The default, every event
 * type to `unknown`, is what an untyped plugin gets. Add an index signature
 * (`[type: string]: unknown`) to handle event types the map does not name.
 *
 * A promise, not a check: the daemon validates the envelope, never `data`
 * against these types (any agent may publish any JSON), so a handler that
 * cannot trust its publishers still checks the fields it reads.
 */
export type EventMap = object;

/** Every event type, payload `unknown`: the events of an untyped plugin. */
export type UnknownEvents = Readonly<Record<string, unknown>>;

/**
 * A handler for events whose `data` is `Data`. Its return value is the reply
 * to a request (ctx.request); for other events it is ignored.
 *
 * The event parameter is compared bivariantly (method syntax), as DOM event
 * handlers are: a handler that declares a narrower payload
 * (`(event: AgentEvent<{ text: string }>) => …`) fits where `unknown` is
 * expected, and a typed plugin fits wherever a `Plugin` is taken.
 */
export type EventHandler<Options extends object = PluginOptions, Data = unknown> = {
  handle(event: AgentEvent<Data>, ctx: PluginContext<Options>): Promise<unknown> | unknown;
}['handle'];

/** A plugin's `handlers`: one per event type of `Events` (each optional), and `'*'`, which receives every event with `data: unknown`. */
export type PluginHandlers<Options extends object = PluginOptions, Events extends EventMap = UnknownEvents> = {
  readonly [Type in keyof Events]?: EventHandler<Options, Events[Type]>;
} & { readonly '*'?: EventHandler<Options, unknown> };

/**
 * A plugin module's default export. `Options` types `ctx.options`; `Events`
 * maps event types to their payloads (see EventMap), e.g.
 * `Plugin<{ greeting?: string }, { new_message: { text: string } }>`.
 */
export interface Plugin<Options extends object = PluginOptions, Events extends EventMap = UnknownEvents> {
  /** Unique among the daemon's plugins; appears in every log line of the plugin. */
  readonly name: string;
  /** Runs before the daemon reports ready, with a time limit; a throw stops the start. */
  setup?(ctx: PluginContext<Options>): Promise<void> | void;
  /** Handlers by event type; '*' receives every event. */
  readonly handlers: PluginHandlers<Options, Events>;
  /** Runs at shutdown, in reverse order of setup. */
  close?(ctx: PluginContext<Options>): Promise<void> | void;
}

/**
 * The typed identity: gives a plugin object its types, changes nothing.
 * Without type arguments, `Events` is inferred from the handlers: one whose
 * parameter is annotated (`(event: AgentEvent<{ text: string }>) => …`) has
 * that payload, the others `unknown`. With `definePlugin<Options, Events>`
 * every handler is checked against `Events`. (The self-referential bound is
 * `object` in effect; it keeps `ReturnType<typeof definePlugin>` a plugin
 * whose handlers may have any event type.)
 */
export function definePlugin<Options extends object = PluginOptions, Events extends { readonly [Type in keyof Events]: unknown } = UnknownEvents>(
  plugin: Plugin<Options, Events>,
): Plugin<Options, Events> {
  return plugin;
}
