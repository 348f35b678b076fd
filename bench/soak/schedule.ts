/**
 * The soak's schedule: its settings, which fault comes when (Redis kill -9,
 * SIGKILL, SIGTERM, burst), which agent each signal goes to, and the run's
 * clock (times in the report are seconds from the start of traffic).
 */

export const AGENTS = 4;
export const DEN = 'soak';
export const TTL = 3;
export const INTERVAL = 1;
export const SWEEP = 1;
/**
 * The recorder waits this long (a timer) before writing, like a handler doing
 * I/O: with the default 16 concurrent calls the agents handle up to ~8,000
 * events/s, above the steady rate and far below a pipelined burst, which
 * overflows the queue. (Without a wait, calls finish in the same turn and the
 * queue never fills: the backlog stays in the socket.)
 */
export const HANDLER_DELAY_MS = 2;
/** Half the default 10,000, so that a burst surely overflows it. */
export const QUEUE_MAX = 5_000;
/** Steady messages per second, all types together (one in INVALID_EVERY is invalid). */
export const RATE = 2_000;
export const INVALID_EVERY = 200;
export const BURST = 20_000;
export const REDIS_DOWN_MS = 3_000;
export const RESTART_AFTER_KILL_MS = 10_000;
export const SAMPLE_MS = 5_000;
export const SERIES_EVERY = 6; // one series point every 6 samples = 30 s
export const RSS_BOUND_MIB = 50;
/** An incarnation is long-lived (invariant 5) when it ran at least this long. */
export const longLivedS = (seconds: number): number => Math.min(300, seconds * 0.6);
/** Actions start at least this far apart, so each one's effects can be told apart. */
export const ACTION_GAP_S = 20;
/** Margin before a signal or a Redis kill: messages in flight then may be lost too. */
export const WINDOW_LEAD_MS = 500;
/** How long after a burst the queues may still be overflowing. */
export const BURST_TAIL_MS = 10_000;

export type ActionKind = 'redis' | 'sigkill' | 'sigterm' | 'burst';
export interface PlannedAction {
  at: number;
  kind: ActionKind;
}

/** Nominal periods, then each action pushed later until it is ACTION_GAP_S away from every other. */
export function planActions(seconds: number): PlannedAction[] {
  const kinds: Array<{ kind: ActionKind; first: number; every: number; lastAt: number }> = [
    { kind: 'redis', first: 90, every: 90, lastAt: seconds - 30 },
    { kind: 'sigkill', first: 20, every: 120, lastAt: seconds - 30 },
    { kind: 'sigterm', first: 50, every: 180, lastAt: seconds - 30 },
    { kind: 'burst', first: 35, every: 60, lastAt: seconds - 20 },
  ];
  const placed: PlannedAction[] = [];
  for (const k of kinds) {
    for (let t = k.first; t <= seconds; t += k.every) {
      let at = t;
      while (placed.some((p) => Math.abs(p.at - at) < ACTION_GAP_S)) at += 5;
      if (at <= k.lastAt) placed.push({ at, kind: k.kind });
    }
  }
  return placed.sort((a, b) => a.at - b.at);
}

/**
 * Which agent a signal goes to: soak-a0 is never touched (the long-lived reference); kills go a1, a2, a3, …;
 * SIGTERMs a3, a2, a1, …, skipping the agent killed last (a SIGTERM goes to another agent).
 */
export function targets<A>(agents: readonly A[]): (kind: 'sigkill' | 'sigterm') => A {
  let killCount = 0;
  let termCount = 0;
  let lastKilled: A | undefined;
  return (kind) => {
    if (kind === 'sigkill') return (lastKilled = agents[1 + (killCount++ % (agents.length - 1))]!);
    let a = agents[agents.length - 1 - (termCount++ % (agents.length - 1))]!;
    if (a === lastKilled) a = agents[agents.length - 1 - (termCount++ % (agents.length - 1))]!;
    return a;
  };
}

/** The run's clock: `start` is set when traffic starts. */
export const clock = { start: 0 };
/** Seconds since the start, one decimal. */
export const rel = (at: number): number => Math.round((at - clock.start) / 100) / 10;
/** mm:ss since the start. */
export const fmtT = (at: number): string => {
  const s = Math.max(0, Math.round((at - clock.start) / 1000));
  return `${String(Math.floor(s / 60)).padStart(2, '0')}:${String(s % 60).padStart(2, '0')}`;
};
