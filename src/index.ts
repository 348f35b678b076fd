/**
 * agentd's public API: for plugin authors (definePlugin and the types) and
 * for programs that embed the daemon.
 */
export { AgentDaemon } from './daemon.ts';
export type { CloseResult, DaemonEvents, DaemonOptions, DaemonState, DaemonStats, EventDroppedInfo, InlinePlugin } from './daemon.ts';
export { definePlugin } from './plugins/types.ts';
export type { AgentInfo, EventHandler, EventMap, Plugin, PluginContext, PluginHandlers, PluginOptions, UnknownEvents } from './plugins/types.ts';
export type { AgentEvent, BadInputReason } from './bus/envelope.ts';
export type { IntakeReason, TrustReason } from './bus/intake.ts';
export type { Abortable, Binding, DrainResult, DropReason, HandlerFailedInfo, HandlerOutcome } from './bus/dispatcher.ts';
export type { EventCounters, TypeCounts } from './bus/counters.ts';
export { makeEnvelope, publishEvent, type Envelope } from './bus/publish.ts';
export { loadConfig, redactConfig, redactUrl, listSettings, type LoadConfigOptions, type LoadedConfig, type SettingInfo } from './config/load.ts';
export type { AgentdConfig, DeepPartial, LogLevel, OverflowPolicy, PluginSpec, SigningMode, TlsRequired } from './config/schema.ts';
export { AgentdError, ErrorCodes, type ErrorCode } from './errors.ts';
export { createLogger, type Logger, type LoggerOptions } from './log.ts';
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

// Reachable from AgentDaemon's public fields (daemon.metrics, daemon.readiness(), daemon.durable) and from
// publishEvent: exported as types so a program can name them. Not a promise that they stay: agentd is 0.x.
export type { Readiness } from './http/server.ts';
export type { DaemonInfo, Metrics, MetricsSource } from './http/metrics.ts';
export type { Durable, DurableOptions } from './durable/durable.ts';
export type { ConsumerHooks, ConsumerOptions, DeadLetterReason, DurableConsumer, ReplyError } from './durable/consumer.ts';
export type { PendingInfo } from './durable/streams.ts';
export type { KeyRing, SigningKey } from './security/keys.ts';
export type { SignatureReason } from './security/signing.ts';
