import type { Logger } from '../log.ts';
import { Code, describeError } from '../errors.ts';
import { parseEnvelope, type AgentEvent, type BadInputReason } from './envelope.ts';
import type { SignatureReason, SigningMode, Verifier } from '../security/signing.ts';
import { EVENT_CHANNEL_PREFIX } from '../redis/keys.ts';
import { OWN_EVENT_TYPES } from './channels.ts';
import type { EventCounters, TypeCounts } from './counters.ts';

/**
 * Why a message was not dispatched: bad input (from the envelope check), or
 * `intake_error` when something threw while it was being taken in (a bug, or
 * a listener of embedding code): it is counted and skipped, never fatal.
 */
export type IntakeReason = BadInputReason | 'intake_error' | TrustReason;

/**
 * Refusals of the trust checks: an event on another type's channel
 * (`channel_mismatch`), or a signature that is missing or does not verify.
 */
export type TrustReason = SignatureReason | 'channel_mismatch';

export interface IntakeDropped {
  readonly reason: IntakeReason;
  readonly channel: string;
  readonly bytes: number;
}

/** The trust checks of intake (docs/security.md). */
export interface IntakeSecurity {
  /** Signature checking: off, warn (count, log, dispatch) or require (drop). */
  readonly signing: SigningMode;
  /** Needed unless signing is off. */
  readonly verifier?: Verifier;
  /** Refuse an event whose type is not its channel's (`agent:events:<type>`). */
  readonly channelCheck: boolean;
}

export interface IntakeOptions {
  /** The daemon's own probe channel: its messages are the subscription's, not events. */
  readonly probeChannel: string;
  readonly maxBytes: number;
  readonly maxDepth: number;
  readonly dispatcher: { dispatch(event: AgentEvent, bytes: number, counts?: TypeCounts): 'queued' | 'dropped' | 'unhandled' };
  /** The daemon's counters (the dispatcher moves the same object). */
  readonly counters: EventCounters;
  readonly log: Logger;
  /** Told of every message dropped here (the daemon emits it as `eventDropped`). */
  readonly onDropped?: (info: IntakeDropped) => void;
  /** Told of every valid membership event (agent_online, agent_offline, agent_down), before dispatch; it may throw (counted as intake_error). */
  readonly onMembership?: (event: AgentEvent) => void;
  /** Trust checks; absent: none (signing off, no channel check). */
  readonly security?: IntakeSecurity;
}

/** `channel` (which starts with EVENT_CHANNEL_PREFIX) is `agent:events:<type>`, compared without building that string. */
function isChannelOf(channel: string, type: string): boolean {
  return channel.length === EVENT_CHANNEL_PREFIX.length + type.length && channel.endsWith(type);
}

const MEMBERSHIP_EVENTS: ReadonlySet<string> = new Set(OWN_EVENT_TYPES);

const MAX_CHANNEL_IN_LOG = 200;
/**
 * Bad messages logged one by one per window; past that, one summary line at
 * the end of the window. A publisher's flood must not become a log flood: one
 * line per message cost more than the message and filled disks.
 */
const BAD_LOG_BURST = 20;
const BAD_LOG_EVERY_MS = 5_000;

/**
 * Every message from the subscribed patterns, from the socket to the handler
 * queue: channel decode → envelope check → counters → dispatch. Whatever
 * happens to one message here is caught, counted and logged for that message;
 * nothing escapes to the socket reader (ioredis) or the process. So each
 * message read (the daemon's own probe aside, when a pattern matches it) ends
 * up in exactly one place: dispatched, unhandled, dropped by the queue (the
 * dispatcher counts those), or `invalid` under a reason.
 */
export class Intake {
  readonly #o: IntakeOptions;
  readonly #counts: EventCounters;
  /** The last channel and event type that passed the channel check. */
  #passedChannel = '';
  #passedType = '';
  /** Bad messages logged in the current window, and those counted but not logged, by reason. */
  #badLogged = 0;
  readonly #badSuppressed = new Map<BadInputReason | TrustReason, number>();
  #badTimer: NodeJS.Timeout | undefined;

  constructor(options: IntakeOptions) {
    this.#o = options;
    this.#counts = options.counters;
  }

  /** One message straight from the socket (its channel decoded). Never throws. */
  readonly onMessage = (channel: string, payload: Buffer): void => {
    const counts = this.#counts;
    // Where the message is counted, once it is: a later throw must not count it twice.
    let countedAs: string | undefined;
    try {
      if (channel === this.#o.probeChannel) return;
      counts.received++;
      const parsed = parseEnvelope(channel, payload, this.#o.maxBytes, this.#o.maxDepth, false);
      if (!parsed.ok) {
        countedAs = parsed.reason;
        this.#bad(parsed.reason, channel, payload.length);
        return;
      }
      const { event } = parsed;
      const security = this.#o.security;
      if (security !== undefined) {
        const refused = this.#trust(security, channel, payload, event);
        if (refused !== undefined) {
          countedAs = refused;
          this.#bad(refused, channel, payload.length);
          return;
        }
      }
      const type = counts.of(event.event);
      type.received++;
      if (MEMBERSHIP_EVENTS.has(event.event)) this.#o.onMembership?.(event);
      // From here the dispatcher counts the message (dispatched, unhandled or dropped).
      countedAs = 'dispatch';
      this.#o.dispatcher.dispatch(event, payload.length, type);
    } catch (err) {
      this.#failed(err, countedAs, channel, payload);
    }
  };

  /** The trust checks: the reason to drop the message, or undefined to dispatch it (warn mode counts and logs). */
  #trust(security: IntakeSecurity, channel: string, payload: Buffer, event: AgentEvent): TrustReason | undefined {
    // Only agentd's event channels have a type; other subscribed channels are not checked.
    // Floods come on one channel with one type: the last pair that passed is not checked again.
    if (security.channelCheck && (channel !== this.#passedChannel || event.event !== this.#passedType)) {
      if (channel.startsWith(EVENT_CHANNEL_PREFIX) && !isChannelOf(channel, event.event)) {
        this.#counts.untrusted.channel_mismatch++;
        return 'channel_mismatch';
      }
      this.#passedChannel = channel;
      this.#passedType = event.event;
    }
    if (security.signing === 'off' || security.verifier === undefined) return undefined;
    const reason = security.verifier.verify(channel, payload, event.id, event.ts);
    if (reason === undefined) return undefined;
    this.#counts.untrusted[reason]++;
    if (security.signing === 'require') return reason;
    // Under the same burst limit as dropped messages: a flood of unsigned messages must not become a log flood.
    this.#logBad(reason, { code: Code.AGENTD_ERR_BAD_EVENT, channel: channel.slice(0, MAX_CHANNEL_IN_LOG), reason, event: event.event.slice(0, 64) }, 'event failed the signature check; dispatched anyway (security.signing=warn)');
    return undefined;
  }

  #bad(reason: BadInputReason | TrustReason, channel: string, bytes: number): void {
    this.#counts.invalid[reason]++;
    // Channel and reason only: the payload may be huge or hostile.
    this.#logBad(reason, { code: Code.AGENTD_ERR_BAD_EVENT, channel: channel.slice(0, MAX_CHANNEL_IN_LOG), reason, bytes }, 'dropped a bad message');
    this.#o.onDropped?.({ reason, channel, bytes });
  }

  /** One line per bad message up to the burst of the window; past it, counted for the window's summary line. */
  #logBad(reason: BadInputReason | TrustReason, fields: Record<string, unknown>, msg: string): void {
    this.#badTimer ??= setTimeout(() => this.flushLog(), BAD_LOG_EVERY_MS).unref();
    if (this.#badLogged < BAD_LOG_BURST) {
      this.#badLogged++;
      this.#o.log.warn(fields, msg);
    } else {
      this.#badSuppressed.set(reason, (this.#badSuppressed.get(reason) ?? 0) + 1);
    }
  }

  /** Ends the log window: one line for the bad messages counted but not logged in it. */
  flushLog(): void {
    clearTimeout(this.#badTimer);
    this.#badTimer = undefined;
    this.#badLogged = 0;
    if (this.#badSuppressed.size === 0) return;
    const suppressed = Object.fromEntries(this.#badSuppressed);
    this.#badSuppressed.clear();
    this.#o.log.warn(
      { code: Code.AGENTD_ERR_BAD_EVENT, suppressed, burst: BAD_LOG_BURST, windowMs: BAD_LOG_EVERY_MS, totalInvalid: { ...this.#counts.invalid } },
      'dropped more bad messages than are logged one by one',
    );
  }

  #failed(err: unknown, countedAs: string | undefined, channel: string, payload: Buffer): void {
    try {
      const name = channel;
      if (countedAs === undefined) {
        this.#counts.invalid.intake_error++;
      }
      this.#o.log.error(
        { code: Code.AGENTD_ERR_INTAKE, channel: name.slice(0, MAX_CHANNEL_IN_LOG), bytes: payload.length, countedAs: countedAs ?? 'intake_error', err: describeError(err) },
        'a message could not be taken in; it was skipped',
      );
      if (countedAs === undefined) this.#o.onDropped?.({ reason: 'intake_error', channel: name, bytes: payload.length });
    } catch {
      // Logging or a listener failed as well: the count above is all that can be done.
    }
  }
}

