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
  AGENTD_ERR_REQUEST_TIMEOUT: 'a request got no reply within its time limit',
  AGENTD_ERR_REQUEST_FAILED: 'the handler of a request failed on every attempt',
  AGENTD_ERR_AGENT_DOWN: 'the agent a request is for is down or offline',
  AGENTD_ERR_NO_SUCH_AGENT: 'the agent a request is for has never been seen',
  AGENTD_ERR_DEAD_LETTERED: 'a durable entry was moved to a dead-letter stream',
  AGENTD_ERR_TRIMMED: 'a durable entry was trimmed from its stream before it was acknowledged',
} as const;

export type ErrorCode = keyof typeof ErrorCodes;

/** Exit code a CLI run ends with when this error stops it. */
const exitCodes: Partial<Record<ErrorCode, number>> = {
  AGENTD_ERR_CONFIG: 2,
  AGENTD_ERR_CONFIG_FILE: 2,
  AGENTD_ERR_USAGE: 2,
  AGENTD_ERR_PLUGIN_LOAD: 2,
  AGENTD_ERR_PLUGIN_SETUP: 2,
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
