import { AgentdError, type ErrorCode } from '../errors.ts';

/** Why a request did not get a value back. */
export type RequestFailure = 'timeout' | 'handler_failed' | 'dead_lettered' | 'agent_down' | 'no_such_agent';

/** The catalog code of each way a request fails. */
export const REQUEST_FAILURE_CODES: Readonly<Record<RequestFailure, ErrorCode>> = {
  timeout: 'AGENTD_ERR_REQUEST_TIMEOUT',
  handler_failed: 'AGENTD_ERR_REQUEST_FAILED',
  dead_lettered: 'AGENTD_ERR_DEAD_LETTERED',
  agent_down: 'AGENTD_ERR_AGENT_DOWN',
  no_such_agent: 'AGENTD_ERR_NO_SUCH_AGENT',
};

/** The typed rejection of `ctx.request()`: `reason` says which way it failed. */
export class RequestError extends AgentdError {
  readonly reason: RequestFailure;
  /** The agent the request was for. */
  readonly target: string;
  /** The request id (the envelope's `id`, the reply's `inReplyTo`). */
  readonly requestId: string;

  constructor(reason: RequestFailure, message: string, target: string, requestId: string) {
    super(REQUEST_FAILURE_CODES[reason], message);
    this.name = 'RequestError';
    this.reason = reason;
    this.target = target;
    this.requestId = requestId;
  }
}
