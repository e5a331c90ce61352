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

/**
 * What kind of database failure an error is, from its SQLSTATE or socket error code, so the
 * CLI can turn it into an exit code and one line an operator can act on. Looks through
 * `cause` chains and AggregateErrors (a host name resolving to both ::1 and 127.0.0.1 fails
 * with one AggregateError whose own message is empty).
 */
export type DatabaseErrorKind =
  /** Nothing answers, the connection broke, or the server refuses connections for now. */
  | 'unreachable'
  /** The server rejected the login (password, pg_hba.conf, unknown login role). */
  | 'login-rejected'
  /** The login lacks a privilege or role membership (42501). */
  | 'permission'
  /** A table, schema, function or role the migrations create is missing. */
  | 'not-migrated';

const SOCKET_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ENOTFOUND', 'EAI_AGAIN', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'EPIPE', 'ECONNABORTED']);
// 08: connection exception; 57P01-57P03: admin/crash shutdown, cannot connect now;
// 53300: too many connections; 3D000: the database named in the URL does not exist.
const UNREACHABLE_SQLSTATES = /^(08...|57P0[123]|53300|3D000)$/;
const UNREACHABLE_MESSAGES = /Connection terminated|connection timeout|timeout expired|Connection refused/i;
const NOT_MIGRATED_SQLSTATES = new Set(['42P01', '3F000', '42883', '42704']);

export interface DatabaseFailure {
  kind: DatabaseErrorKind;
  /** The most specific message found (never empty). */
  message: string;
  sqlstate: string | undefined;
}

function* chain(err: unknown, depth = 0): Generator<Error> {
  if (!(err instanceof Error) || depth > 8) return;
  yield err;
  if (err instanceof AggregateError) for (const e of err.errors) yield* chain(e, depth + 1);
  if (err.cause !== undefined) yield* chain(err.cause, depth + 1);
}

function classify(e: Error): DatabaseErrorKind | undefined {
  const code = (e as { code?: unknown }).code;
  if (typeof code === 'string') {
    if (SOCKET_CODES.has(code) || UNREACHABLE_SQLSTATES.test(code)) return 'unreachable';
    if (code.startsWith('28')) return 'login-rejected';
    if (code === '42501') return 'permission';
    if (NOT_MIGRATED_SQLSTATES.has(code)) return 'not-migrated';
  }
  if (UNREACHABLE_MESSAGES.test(e.message)) return 'unreachable';
  return undefined;
}

/** The database failure inside `err`, or undefined when it is not one of the kinds above. */
export function databaseFailure(err: unknown): DatabaseFailure | undefined {
  for (const e of chain(err)) {
    const kind = classify(e);
    if (!kind) continue;
    const code = (e as { code?: unknown }).code;
    const sqlstate = sqlState(e);
    return { kind, message: e.message || (typeof code === 'string' ? code : String(e)), sqlstate };
  }
  return undefined;
}
