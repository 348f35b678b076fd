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
  AGENTD_ERR_INTAKE: 'a message could not be taken in (a bug or a failing listener); it was counted and skipped',
  AGENTD_ERR_REDIS: 'redis command failed',
  AGENTD_ERR_HEARTBEAT: 'heartbeat could not be written in time',
  AGENTD_ERR_ALREADY_STARTED: 'start() was called on a daemon that was already started',
  AGENTD_ERR_CLOSED: 'daemon is closed',
  AGENTD_ERR_DUPLICATE_ID: 'another live daemon instance has this agent id',
  AGENTD_ERR_REDIS_UNSUPPORTED: 'redis server cannot be used: cluster mode, a Sentinel, or a read-only replica',
  AGENTD_ERR_REDIS_PERMISSION: 'redis user lacks a permission agentd needs (NOPERM)',
  AGENTD_ERR_REQUEST_TIMEOUT: 'a request got no reply within its time limit',
  AGENTD_ERR_REQUEST_FAILED: 'the handler of a request failed on every attempt',
  AGENTD_ERR_AGENT_DOWN: 'the agent a request is for is down or offline',
  AGENTD_ERR_NO_SUCH_AGENT: 'the agent a request is for has never been seen',
  AGENTD_ERR_DEAD_LETTERED: 'a durable entry was moved to a dead-letter stream',
  AGENTD_ERR_TRIMMED: 'a durable entry was trimmed from its stream before it was acknowledged',
} as const;

export type ErrorCode = keyof typeof ErrorCodes;

/**
 * Each code by its own name, for the places the compiler would not check a
 * string: log lines (`{ code: Code.AGENTD_ERR_HEARTBEAT }`) and messages. A
 * typo there is then a compile error instead of a code nobody can search for.
 */
export const Code: { readonly [C in ErrorCode]: C } = Object.freeze(Object.fromEntries(Object.keys(ErrorCodes).map((c) => [c, c])) as { [C in ErrorCode]: C });

/** Exit code a CLI run ends with when this error stops it. */
const exitCodes: Partial<Record<ErrorCode, number>> = {
  AGENTD_ERR_CONFIG: 2,
  AGENTD_ERR_CONFIG_FILE: 2,
  AGENTD_ERR_USAGE: 2,
  AGENTD_ERR_PLUGIN_LOAD: 2,
  AGENTD_ERR_PLUGIN_SETUP: 2,
  AGENTD_ERR_DUPLICATE_ID: 2,
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

/** Longest description describeError returns; the rest is cut and counted. */
export const MAX_ERROR_DESCRIPTION = 1_000;

/** Reads a property without letting a getter or a proxy trap throw. */
function safeGet(value: object, key: string): unknown {
  try {
    return (value as Record<string, unknown>)[key];
  } catch {
    return undefined;
  }
}

function safeString(value: unknown): string | undefined {
  try {
    return String(value);
  } catch {
    try {
      // Object.create(null), a throwing toString: at least say what it is.
      return Object.prototype.toString.call(value);
    } catch {
      return undefined;
    }
  }
}

function isError(value: unknown): value is Error {
  try {
    return value instanceof Error;
  } catch {
    return false; // a proxy whose getPrototypeOf trap throws
  }
}

function describeUnsafe(err: unknown): string {
  if (isError(err)) {
    const message = safeGet(err, 'message');
    const text = typeof message === 'string' ? message : message === undefined ? '' : (safeString(message) ?? '');
    const code = safeGet(err, 'code');
    const prefix = typeof code === 'string' && !text.includes(code) ? `${code}: ` : '';
    if (text !== '' || prefix !== '') return prefix + text;
    const name = safeGet(err, 'name');
    return typeof name === 'string' && name !== '' ? name : 'Error';
  }
  return safeString(err) ?? '(a thrown value that cannot be described)';
}

/**
 * A short, single-line description of any thrown value, for log lines and
 * exit messages. Total: it never throws, whatever was thrown (an object
 * without a prototype, a throwing getter or toString, a proxy), it does not
 * follow `cause` chains, and it is at most MAX_ERROR_DESCRIPTION characters.
 */
export function describeError(err: unknown): string {
  let text: string;
  try {
    text = describeUnsafe(err);
  } catch {
    text = '(a thrown value that cannot be described)';
  }
  // Cut before the replace, so a huge message costs no more than a short one.
  const over = text.length - MAX_ERROR_DESCRIPTION;
  const head = (over > 0 ? text.slice(0, MAX_ERROR_DESCRIPTION) : text).replace(/\s*\n\s*/g, '; ');
  return over > 0 ? `${head}… (${over} more characters)` : head;
}
