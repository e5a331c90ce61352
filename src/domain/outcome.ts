// What became of one attempt: the vocabulary shared by the dispatcher, the retry policy,
// the completer's statement and the metrics' labels.

/** Why an event was dead-lettered (a bounded metric label). */
export const DEAD_REASONS = ['permanent', 'exhausted', 'unrouted', 'malformed', 'lease_expired'] as const;
export type DeadReason = (typeof DEAD_REASONS)[number];

export type Outcome =
  | { kind: 'done' }
  | { kind: 'retry'; delayMs: number; error: string }
  | { kind: 'dead'; error: string; reason: DeadReason }
  /**
   * Not attempted (shutdown, lease too short, sink circuit open): back to pending, the
   * claim's attempt not counted, due again after delayMs (default now).
   */
  | { kind: 'release'; delayMs?: number };
