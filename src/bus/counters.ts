import { OWN_EVENT_TYPES } from './channels.ts';
import type { DropReason } from './dispatcher.ts';
import type { IntakeReason, TrustReason } from './intake.ts';

/** What happened to the events of one type (a label value of the event metrics). */
export interface TypeCounts {
  /** Valid events read. */
  received: number;
  /** Events queued for their handlers. */
  dispatched: number;
  /** Handler calls dropped, by reason. */
  readonly dropped: Record<DropReason, number>;
}

const INTAKE_REASONS: readonly IntakeReason[] = [
  'too_large', 'not_json', 'not_object', 'no_event', 'forbidden_key', 'too_deep', 'intake_error',
  'channel_mismatch', 'unsigned', 'bad_signature', 'unknown_key', 'stale', 'replayed',
];
const TRUST_REASONS: readonly TrustReason[] = ['channel_mismatch', 'unsigned', 'bad_signature', 'unknown_key', 'stale', 'replayed'];
const DROP_REASONS: readonly DropReason[] = ['queue_full', 'evicted', 'shutdown'];

const zeros = <K extends string>(keys: readonly K[]): Record<K, number> => Object.fromEntries(keys.map((k) => [k, 0])) as Record<K, number>;

/** The label of event types no handler is registered for: they come from the network, so they are not label values. */
export const OTHER_TYPE = 'other';

/**
 * The one set of event counters of a daemon: intake and the dispatcher move
 * them on the hot path (plain fields, no labels hashed), `stats()` copies them
 * and /metrics reads them when scraped. Per-type counts exist for the types
 * made known (handled types and the membership events); every other type
 * counts under "other".
 */
export class EventCounters {
  /** Messages read from the subscription (valid or not; the daemon's own probes excepted). */
  received = 0;
  /** Messages not dispatched, by reason (bad input, intake errors, trust refusals). */
  readonly invalid: Record<IntakeReason, number> = zeros(INTAKE_REASONS);
  /** Trust-check failures, by reason; under security.signing=warn a signature failure is counted here and still dispatched. */
  readonly untrusted: Record<TrustReason, number> = zeros(TRUST_REASONS);
  /** Events queued for their handlers. */
  dispatched = 0;
  /** Valid events no handler is registered for. */
  unhandled = 0;
  /** Handler calls that returned or resolved. */
  completed = 0;
  /** Handler calls that threw or rejected. */
  failed = 0;
  /** Handler calls stopped at their time limit. */
  timedOut = 0;
  /** Handler calls dropped, by reason. */
  readonly dropped: Record<DropReason, number> = zeros(DROP_REASONS);
  readonly #types = new Map<string, TypeCounts>();
  readonly #other: TypeCounts = { received: 0, dispatched: 0, dropped: zeros(DROP_REASONS) };

  constructor() {
    // agentd's own membership events are always counted by type.
    this.know(OWN_EVENT_TYPES);
  }

  /**
   * Event types that get counts of their own, and are label values ('*' is not a type; a type named
   * "other" counts under "other", which byType() yields once, not as a second series with the same label).
   */
  know(types: Iterable<string>): void {
    for (const t of types) if (t !== '*' && t !== OTHER_TYPE && !this.#types.has(t)) this.#types.set(t, { received: 0, dispatched: 0, dropped: zeros(DROP_REASONS) });
  }

  /** The counts of this event type, or those of "other". */
  of(type: string): TypeCounts {
    return this.#types.get(type) ?? this.#other;
  }

  /** The label value of this event type: itself when known, else "other". */
  label(type: string): string {
    return this.#types.has(type) ? type : OTHER_TYPE;
  }

  /** Per-type counts by label value, "other" last. */
  *byType(): IterableIterator<readonly [label: string, counts: TypeCounts]> {
    yield* this.#types;
    yield [OTHER_TYPE, this.#other];
  }
}
