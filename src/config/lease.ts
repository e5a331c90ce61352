// The one rule for "does a sink call fit in a lease", used both when the configuration
// is validated and by the dispatcher before each send, so a configuration that passes
// validation can never make the dispatcher refuse every send.

/** Kept free at the end of a lease so the outcome is written before another worker may claim. */
export function leaseMarginMs(leaseMs: number): number {
  return Math.min(1000, leaseMs / 10);
}

/**
 * Whether a send that may take `timeoutMs`, starting `sinceClaimMs` after the claim,
 * ends at least one margin before the lease (`leaseMs` from the claim) expires.
 */
export function sendFitsInLease(timeoutMs: number, leaseMs: number, sinceClaimMs: number): boolean {
  return sinceClaimMs + timeoutMs + leaseMarginMs(leaseMs) <= leaseMs;
}

/**
 * Validation asks that a send started one margin after its claim still fits: claiming,
 * parsing and queueing for a concurrency slot take time, and a timeout that only fits
 * at 0 ms after the claim would be released unattempted forever.
 */
export function timeoutFitsLease(timeoutMs: number, leaseMs: number): boolean {
  return sendFitsInLease(timeoutMs, leaseMs, leaseMarginMs(leaseMs));
}

/** The longest sink timeout a lease allows (for error messages). */
export function maxTimeoutForLease(leaseMs: number): number {
  return Math.floor(leaseMs - 2 * leaseMarginMs(leaseMs));
}
