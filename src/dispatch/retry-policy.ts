import type { Outcome } from '../domain/outcome.ts';
import { DispatchAbortedError, PermanentDispatchError, RetryableDispatchError } from '../domain/dispatch-errors.ts';

export interface RetryPolicy {
  maxAttempts: number;
  backoffBaseMs: number;
  backoffMaxMs: number;
  /**
   * An event is exhausted only when it has had maxAttempts attempts AND is at least this
   * old (ms since it was committed): the attempt limit alone lets an ordinary outage
   * dead-letter everything (ADR 0007). 0 = the attempt limit alone decides.
   */
  retryHorizonMs: number;
}

/** Where a failed event stands: its attempt number and how long ago it was committed. */
export interface AttemptContext {
  attempt: number;
  ageMs: number;
}

/** A Retry-After beyond this is treated as a misbehaving sink, not obeyed. */
export const RETRY_AFTER_CEILING_MS = 3_600_000;

/**
 * Exponential backoff with full jitter: uniform in [0, min(max, base * 2^(attempt-1))].
 * Full jitter spreads a thundering herd of retries after a sink outage.
 */
export function backoffDelayMs(attempt: number, policy: RetryPolicy, random: () => number = Math.random): number {
  const exp = Math.min(policy.backoffMaxMs, policy.backoffBaseMs * 2 ** Math.min(Math.max(attempt - 1, 0), 52));
  return Math.floor(random() * exp);
}

/** Maps a failed attempt to its outcome: retry later, or dead-letter with the reason. */
export function outcomeForFailure(
  err: unknown,
  at: AttemptContext,
  policy: RetryPolicy,
  random: () => number = Math.random,
): Outcome {
  if (err instanceof DispatchAbortedError) return { kind: 'release' };
  const message = describeError(err);
  if (err instanceof PermanentDispatchError) return { kind: 'dead', error: `permanent: ${message}`, reason: 'permanent' };
  const { attempt, ageMs } = at;
  if (isExhausted(at, policy)) {
    const horizon = policy.retryHorizonMs > 0 ? ` over ${formatDuration(ageMs)} (retry horizon ${formatDuration(policy.retryHorizonMs)})` : '';
    return { kind: 'dead', error: `exhausted ${attempt}/${policy.maxAttempts} attempts${horizon}: ${message}`, reason: 'exhausted' };
  }
  let delayMs = backoffDelayMs(attempt, policy, random);
  if (err instanceof RetryableDispatchError && err.retryAfterMs !== undefined) {
    delayMs = Math.max(delayMs, Math.min(err.retryAfterMs, RETRY_AFTER_CEILING_MS));
  }
  return { kind: 'retry', delayMs, error: message };
}

/** The rule of ADR 0007: both budgets spent, the attempts and the time. */
export function isExhausted(at: AttemptContext, policy: RetryPolicy): boolean {
  return at.attempt >= policy.maxAttempts && at.ageMs >= policy.retryHorizonMs;
}

function formatDuration(ms: number): string {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

export function describeError(err: unknown): string {
  if (err instanceof Error) return err.message || err.name;
  return String(err);
}
