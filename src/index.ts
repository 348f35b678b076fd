/**
 * agentd's public API: for plugin authors (definePlugin and the types) and
 * for programs that embed the daemon.
 */
export { AgentDaemon } from './daemon.ts';
export type { CloseResult, DaemonEvents, DaemonOptions, DaemonState, DaemonStats, EventDroppedInfo, InlinePlugin } from './daemon.ts';
export { definePlugin } from './plugins/types.ts';
export type { AgentInfo, EventHandler, Plugin, PluginContext, PluginOptions } from './plugins/types.ts';
export type { AgentEvent, BadInputReason } from './bus/envelope.ts';
export type { IntakeReason } from './bus/intake.ts';
export type { DropReason, HandlerFailedInfo } from './bus/dispatcher.ts';
export { makeEnvelope, publishEvent, type Envelope } from './bus/publish.ts';
export { loadConfig, redactConfig, redactUrl, listSettings, type LoadConfigOptions, type LoadedConfig } from './config/load.ts';
export type { AgentdConfig, DeepPartial, LogLevel, OverflowPolicy, PluginSpec } from './config/schema.ts';
export { AgentdError, ErrorCodes, type ErrorCode } from './errors.ts';
export { createLogger, type Logger } from './log.ts';
export type { MembershipChange, RegistryRecord, AgentStatus, BeatResult } from './presence/presence.ts';
export type { ConnectionRole, ConnectionState, ConnectionStateChange } from './redis/connection.ts';
export { REGISTRY_KEY, denMembersKey, eventChannel, heartbeatKey } from './redis/keys.ts';
export { VERSION } from './version.ts';
export {
  AgentMemory,
  clearAgentMemory,
  defaultMemoryOptions,
  llmCacheDigest,
  redisMemoryStats,
  type ChatMessage,
  type MemoryOptions,
  type RateLimitResult,
  type RedisMemoryStats,
} from './memory/memory.ts';
export { memoryKeys } from './redis/keys.ts';
export type { AgentDown, Detector } from './presence/watcher.ts';
export { RequestError, type RequestFailure } from './durable/errors.ts';
export type { DurableApi, RequestOptions, SubmitOptions } from './durable/durable.ts';
export type { Delivery, StreamKind } from './bus/envelope.ts';
export { inboxKey, denTasksKey, deadLetterKey } from './redis/keys.ts';
