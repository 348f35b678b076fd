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

/** A handler's return value is the reply to a request (ctx.request); for other events it is ignored. */
export type EventHandler<Options extends object = PluginOptions> = (
  event: AgentEvent,
  ctx: PluginContext<Options>,
) => Promise<unknown> | unknown;

/** A plugin module's default export. */
export interface Plugin<Options extends object = PluginOptions> {
  /** Unique among the daemon's plugins; appears in every log line of the plugin. */
  readonly name: string;
  /** Runs before the daemon reports ready, with a time limit; a throw stops the start. */
  setup?(ctx: PluginContext<Options>): Promise<void> | void;
  /** Handlers by event type; '*' receives every event. */
  readonly handlers: Readonly<Record<string, EventHandler<Options>>>;
  /** Runs at shutdown, in reverse order of setup. */
  close?(ctx: PluginContext<Options>): Promise<void> | void;
}

/** The typed identity: gives a plugin object its types, changes nothing. */
export function definePlugin<Options extends object = PluginOptions>(plugin: Plugin<Options>): Plugin<Options> {
  return plugin;
}
