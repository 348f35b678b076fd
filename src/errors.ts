/**
 * The error catalog. Every error agentd raises on purpose carries a stable code,
 * so operators can search logs by code and scripts can branch on it. The codes
 * are documented in docs/errors.md; a test keeps the two in step.
 */

export const ErrorCodes = {
  AGENTD_ERR_CONFIG: 'invalid configuration',
  AGENTD_ERR_CONFIG_FILE: 'configuration file cannot be read',
  AGENTD_ERR_USAGE: 'bad command-line usage',
  AGENTD_ERR_PLUGIN_LOAD: 'plugin module cannot be loaded or is not a valid plugin',
  AGENTD_ERR_PLUGIN_SETUP: 'plugin setup failed or timed out',
  AGENTD_ERR_PLUGIN_CLOSE: 'plugin close failed or timed out',
  AGENTD_ERR_HANDLER_TIMEOUT: 'handler exceeded its time limit',
  AGENTD_ERR_HANDLER_FAILED: 'handler threw or rejected',
  AGENTD_ERR_BAD_EVENT: 'message on an event channel is not a valid envelope',
  AGENTD_ERR_REDIS: 'redis command failed',
  AGENTD_ERR_HEARTBEAT: 'heartbeat could not be written in time',
  AGENTD_ERR_ALREADY_STARTED: 'start() was called on a daemon that was already started',
  AGENTD_ERR_CLOSED: 'daemon is closed',
  AGENTD_ERR_REDIS_UNSUPPORTED: 'redis server cannot be used: cluster mode, a Sentinel, or a read-only replica',
  AGENTD_ERR_REDIS_PERMISSION: 'redis user lacks a permission agentd needs (NOPERM)',
} as const;

export type ErrorCode = keyof typeof ErrorCodes;

/** Exit code a CLI run ends with when this error stops it. */
const exitCodes: Partial<Record<ErrorCode, number>> = {
  AGENTD_ERR_CONFIG: 2,
  AGENTD_ERR_CONFIG_FILE: 2,
  AGENTD_ERR_USAGE: 2,
  AGENTD_ERR_PLUGIN_LOAD: 2,
  AGENTD_ERR_PLUGIN_SETUP: 2,
  AGENTD_ERR_REDIS_UNSUPPORTED: 2,
  AGENTD_ERR_REDIS_PERMISSION: 2,
};

export class AgentdError extends Error {
  readonly code: ErrorCode;
  readonly exitCode: number;

  constructor(code: ErrorCode, message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = 'AgentdError';
    this.code = code;
    this.exitCode = exitCodes[code] ?? 1;
  }
}

export function isAgentdError(err: unknown): err is AgentdError {
  return err instanceof AgentdError;
}

/** A short, single-line description of any thrown value, for log lines and exit messages. */
export function describeError(err: unknown): string {
  if (err instanceof Error) {
    const code = (err as { code?: unknown }).code;
    const prefix = typeof code === 'string' && !err.message.includes(code) ? `${code}: ` : '';
    return (prefix + err.message).replace(/\s*\n\s*/g, '; ');
  }
  return String(err);
}
