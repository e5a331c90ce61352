import pg from 'pg';
import { Kysely, PostgresDialect } from 'kysely';
import type { Database } from './schema.ts';

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

export interface PoolOptions {
  connectionString: string;
  max: number;
  applicationName: string;
  /** Role every pooled session switches to before its first query. */
  role?: string;
}

/**
 * A pg pool whose sessions run as `role`. The role is a startup parameter
 * (`-c role=...`), so the server switches before the first query and refuses the
 * connection outright when the login role may not assume it; RESET ROLE returns to it.
 */
export function createPool(opts: PoolOptions): pg.Pool {
  const pool = new pg.Pool({
    connectionString: opts.connectionString,
    max: opts.max,
    application_name: opts.applicationName,
    idleTimeoutMillis: 30_000,
    connectionTimeoutMillis: 10_000,
    types: types as pg.CustomTypesConfig,
    ...(opts.role ? { options: `-c role=${assertRoleName(opts.role)}` } : {}),
  });
  // A server going away (restart, pg_terminate_backend) must never crash the process:
  // idle clients report through the pool; checked-out clients have no listener of the
  // pool's, so each client gets its own. The query in flight fails with the error, the
  // client is marked unusable, and the pool replaces it on release.
  pool.on('error', () => undefined);
  pool.on('connect', (client) => client.on('error', () => undefined));
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
