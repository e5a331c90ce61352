import pg from 'pg';
import { Kysely, PostgresDialect } from 'kysely';
import type { Database } from './schema.ts';
import { sessionTimeoutsSql } from './queries/session.ts';

export const BACKGROUND_ROLE = 'app_background';

const JSONB_OID = 3802;
const payloadBytes = new WeakMap<object, number>();

/**
 * jsonb parsed as usual, remembering the size of its wire text, so the dispatcher can
 * enforce OUTBOX_MAX_PAYLOAD_BYTES without serialising every payload again.
 */
function parseJsonb(text: string): unknown {
  const value: unknown = JSON.parse(text);
  if (value !== null && typeof value === 'object') payloadBytes.set(value, Buffer.byteLength(text));
  return value;
}

/** Bytes of the JSON text a jsonb value arrived as; undefined for values not read through this pool. */
export function jsonbTextBytes(value: object): number | undefined {
  return payloadBytes.get(value);
}

const types = {
  getTypeParser(oid: number, format?: 'text' | 'binary') {
    if (oid === JSONB_OID && format !== 'binary') return parseJsonb;
    return pg.types.getTypeParser(oid, format as 'text');
  },
};

/**
 * How long the daemon waits on PostgreSQL (docs/adr/0009-database-timeouts-and-health.md).
 * The server-side timeouts end a statement or an abandoned transaction that the server can
 * see; the client-side query timeout (statement timeout + grace) ends a wait the server
 * cannot see, such as a black-holed TCP path, and abandons that connection.
 */
export interface DbTimeouts {
  statementTimeoutMs: number;
  idleInTransactionTimeoutMs: number;
  connectTimeoutMs: number;
  /** TCP keepalive: idle time before the first probe. */
  keepAliveInitialDelayMs: number;
}

/** How much longer than statement_timeout the client waits before it gives up on the server. */
export function clientQueryTimeoutMs(t: Pick<DbTimeouts, 'statementTimeoutMs'>): number {
  return t.statementTimeoutMs + Math.max(1000, Math.round(t.statementTimeoutMs / 10));
}

export interface PoolOptions {
  connectionString: string;
  max: number;
  applicationName: string;
  /**
   * Role every pooled session switches to before its first query, as a startup option.
   * Only for logins that cannot act as app_background without a switch (a privileged login
   * under OUTBOX_ALLOW_PRIVILEGED_ROLE): transaction poolers refuse startup options, so the
   * normal model is a login that inherits app_background and needs no switch (ADR 0010).
   */
  role?: string;
  /** Unset: no statement or query timeout (CLI commands that may legitimately run long). */
  timeouts?: DbTimeouts;
}

/** A query the server did not answer within the client-side timeout; its connection was closed. */
export class QueryTimeoutError extends Error {
  override readonly name = 'QueryTimeoutError';
}

/**
 * pg's query_timeout fails the query but keeps the connection, and the next query on it
 * queues behind the unanswered one. A connection that stopped answering is not trusted
 * again: it is destroyed, so the pool drops it and connects afresh (bounded by the
 * connect timeout).
 */
class BoundedClient extends pg.Client {
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- pg's overloads; only the promise form is wrapped
  override query(...args: any[]): any {
    const result: unknown = (pg.Client.prototype.query as (...a: unknown[]) => unknown).apply(this, args);
    if (!(result instanceof Promise)) return result;
    return result.catch((err: unknown) => {
      if (err instanceof Error && err.message === 'Query read timeout') {
        (this as unknown as { connection: { stream: { destroy(): void } } }).connection.stream.destroy();
        throw new QueryTimeoutError(
          `no answer from PostgreSQL within ${(this as unknown as { connectionParameters: { query_timeout: number } }).connectionParameters.query_timeout} ms; connection closed`,
          { cause: err },
        );
      }
      throw err;
    });
  }
}

/**
 * A pg pool; with `role`, its sessions run as that role. The role is a startup parameter
 * (`-c role=...`), so the server switches before the first query and refuses the
 * connection outright when the login role may not assume it; RESET ROLE returns to it.
 * Statements are never named (no server-side prepared statements): each one can land on a
 * different server connection behind a transaction-mode pooler.
 */
export function createPool(opts: PoolOptions): pg.Pool {
  const t = opts.timeouts;
  const pool = new pg.Pool({
    connectionString: opts.connectionString,
    max: opts.max,
    application_name: opts.applicationName,
    idleTimeoutMillis: 30_000,
    connectionTimeoutMillis: t?.connectTimeoutMs ?? 10_000,
    keepAlive: true,
    keepAliveInitialDelayMillis: t?.keepAliveInitialDelayMs ?? 10_000,
    types: types as pg.CustomTypesConfig,
    ...(opts.role ? { options: `-c role=${assertRoleName(opts.role)}` } : {}),
    ...(t ? { query_timeout: clientQueryTimeoutMs(t), Client: BoundedClient } : {}),
  });
  // A server going away (restart, pg_terminate_backend) must never crash the process:
  // idle clients report through the pool; checked-out clients have no listener of the
  // pool's, so each client gets its own. The query in flight fails with the error, the
  // client is marked unusable, and the pool replaces it on release.
  pool.on('error', () => undefined);
  pool.on('connect', (client) => {
    client.on('error', () => undefined);
    // Session settings sent as the connection's first query (pg runs a client's queries in
    // order, so it precedes the caller's), not as startup parameters: a transaction-mode
    // pooler rejects unknown startup parameters. See ADR 0009 for poolers.
    if (t) client.query(sessionTimeoutsSql(t)).catch(() => undefined);
  });
  return pool;
}

export function createKysely(pool: pg.Pool): Kysely<Database> {
  return new Kysely<Database>({ dialect: new PostgresDialect({ pool }) });
}

/** Role names reach a startup option, so only plain identifiers are accepted. */
export function assertRoleName(role: string): string {
  if (!/^[a-z_][a-z0-9_]{0,62}$/.test(role)) throw new Error(`invalid role name ${JSON.stringify(role)}`);
  return role;
}
