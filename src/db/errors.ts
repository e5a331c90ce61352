/** The SQLSTATE of a PostgreSQL error, or undefined for anything else (network, timeout). */
export function sqlState(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' && /^[0-9A-Z]{5}$/.test(code) ? code : undefined;
}

/**
 * The statement was refused because of the values in it: class 22 (data exception:
 * bad encoding, out of range, invalid datetime) or 23 (integrity constraint). Sending
 * the same values again fails the same way, so the caller must change them, not retry.
 * Connection loss, timeouts, serialization failures, shutdowns are not data errors.
 */
export function isDataError(err: unknown): boolean {
  const state = sqlState(err);
  return state !== undefined && (state.startsWith('22') || state.startsWith('23'));
}
