import type { Outcome } from '../db/queries/outbox.ts';
import { DispatchAbortedError, PermanentDispatchError, RetryableDispatchError } from './errors.ts';

export interface RetryPolicy {
  maxAttempts: number;
  backoffBaseMs: number;
  backoffMaxMs: number;
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
  attempt: number,
  policy: RetryPolicy,
  random: () => number = Math.random,
): Outcome {
  if (err instanceof DispatchAbortedError) return { kind: 'release' };
  const message = describeError(err);
  if (err instanceof PermanentDispatchError) return { kind: 'dead', error: `permanent: ${message}`, reason: 'permanent' };
  if (attempt >= policy.maxAttempts) {
    return { kind: 'dead', error: `exhausted ${attempt}/${policy.maxAttempts} attempts: ${message}`, reason: 'exhausted' };
  }
  let delayMs = backoffDelayMs(attempt, policy, random);
  if (err instanceof RetryableDispatchError && err.retryAfterMs !== undefined) {
    delayMs = Math.max(delayMs, Math.min(err.retryAfterMs, RETRY_AFTER_CEILING_MS));
  }
  return { kind: 'retry', delayMs, error: message };
}

export function describeError(err: unknown): string {
  if (err instanceof Error) return err.message || err.name;
  return String(err);
}
