/** The sink rejected the event for good (e.g. HTTP 400): dead-letter it now. */
export class PermanentDispatchError extends Error {
  override name = 'PermanentDispatchError';
}

/** The sink failed in a way worth retrying (5xx, 429, timeout, network). */
export class RetryableDispatchError extends Error {
  override name = 'RetryableDispatchError';
  /** The sink asked for at least this long before the next attempt (Retry-After). */
  readonly retryAfterMs: number | undefined;

  constructor(message: string, opts: { retryAfterMs?: number | undefined; cause?: unknown } = {}) {
    super(message, { cause: opts.cause });
    this.retryAfterMs = opts.retryAfterMs;
  }
}

/** The attempt was cut short by shutdown; the event goes back to pending unattempted. */
export class DispatchAbortedError extends Error {
  override name = 'DispatchAbortedError';
}
