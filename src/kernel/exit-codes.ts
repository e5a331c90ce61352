/** Process exit codes (documented in README). */
export const EXIT = {
  OK: 0,
  FAILURE: 1,
  USAGE: 64,
  DATABASE_UNAVAILABLE: 69,
  /** Try again later (another replica holds the partition rotation lock). */
  TEMPFAIL: 75,
  PRIVILEGED_ROLE: 77,
  CONFIG: 78,
  SCHEMA_BEHIND: 79,
  SIGNAL: 130,
} as const;

/** A reason the daemon must not start, with the exit code that tells operators which. */
export class StartupError extends Error {
  override name = 'StartupError';
  readonly exitCode: number;

  constructor(message: string, exitCode: number, opts?: { cause?: unknown }) {
    super(message, opts);
    this.exitCode = exitCode;
  }
}
