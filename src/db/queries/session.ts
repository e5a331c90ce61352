import { sql, type Kysely, type Transaction } from 'kysely';
import pg from 'pg';
import type { Database } from '../schema.ts';

// Session and transaction plumbing: tenant context, role switches, liveness probes.

/** Narrows RLS in `trx` to one tenant, transaction-locally (nothing leaks to the next user of the connection). */
export async function setTenantContext(trx: Transaction<Database>, restaurantId: string): Promise<void> {
  await sql`SELECT public.set_restaurant_context(${restaurantId}::uuid)`.execute(trx);
}

/** One round trip to the server (readiness). */
export async function ping(db: Kysely<Database>): Promise<void> {
  await sql`SELECT 1`.execute(db);
}

/** Runs `work` as `role` in a transaction that is rolled back: it reads with the role's privileges and changes nothing. */
export async function readOnlyAsRole<T>(client: pg.ClientBase, role: string, work: () => Promise<T>): Promise<T> {
  await client.query('BEGIN');
  try {
    await client.query(`SET LOCAL ROLE ${pg.escapeIdentifier(role)}`);
    return await work();
  } finally {
    await client.query('ROLLBACK').catch(() => undefined);
  }
}

/** The server process behind `client` right now (changes between statements behind a transaction pooler). */
export async function backendPid(client: pg.ClientBase): Promise<number> {
  return (await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]!.pid;
}

/** Runs `work` while `client` holds a transaction open (pinning its server session), then rolls it back. */
export async function holdingTransaction<T>(client: pg.ClientBase, work: () => Promise<T>): Promise<T> {
  await client.query('BEGIN');
  try {
    return await work();
  } finally {
    await client.query('ROLLBACK').catch(() => undefined);
  }
}

/** Creates database `name` unless it exists (CREATE DATABASE has no IF NOT EXISTS). */
export async function ensureDatabase(admin: pg.ClientBase, name: string): Promise<void> {
  const exists = await admin.query('SELECT 1 FROM pg_database WHERE datname = $1', [name]);
  if (exists.rowCount === 0) await admin.query(`CREATE DATABASE ${pg.escapeIdentifier(name)}`);
}

/** A non-privileged login `role` with `password`, member of `memberOf` (created or updated). */
export async function ensureLoginRole(owner: pg.ClientBase, role: string, password: string, memberOf: string): Promise<void> {
  const id = pg.escapeIdentifier(role);
  const found = await owner.query('SELECT 1 FROM pg_roles WHERE rolname = $1', [role]);
  if (found.rowCount === 0) await owner.query(`CREATE ROLE ${id} LOGIN NOSUPERUSER NOBYPASSRLS`);
  await owner.query(`ALTER ROLE ${id} PASSWORD ${pg.escapeLiteral(password)}`);
  await owner.query(`GRANT ${pg.escapeIdentifier(memberOf)} TO ${id}`);
}

/** SET statements for the server-side timeouts (integers only: nothing else reaches the text). */
export function sessionTimeoutsSql(t: { statementTimeoutMs: number; idleInTransactionTimeoutMs: number }): string {
  const ms = (n: number) => {
    if (!Number.isSafeInteger(n) || n < 0) throw new Error(`invalid timeout ${n}`);
    return n;
  };
  return `SET statement_timeout = ${ms(t.statementTimeoutMs)}; SET idle_in_transaction_session_timeout = ${ms(t.idleInTransactionTimeoutMs)}`;
}
