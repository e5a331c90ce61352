import type pg from 'pg';

// The migrator's own statements (src/db/migrator.ts): its lock and its bookkeeping table.

// One lock key for every replica of every version: migrations never run twice at once.
const LOCK_KEY = 'outbox_dispatcher.migrate';

export async function takeMigrationLock(client: pg.ClientBase): Promise<void> {
  await client.query('SELECT pg_advisory_lock(hashtext($1))', [LOCK_KEY]);
}

export async function releaseMigrationLock(client: pg.ClientBase): Promise<void> {
  await client.query('SELECT pg_advisory_unlock(hashtext($1))', [LOCK_KEY]);
}

/**
 * Whether this very server session holds the lock: behind a transaction-mode pooler the
 * statement after pg_advisory_lock may run in another session, which must not migrate.
 */
async function migrationLockHeld(client: pg.ClientBase): Promise<boolean> {
  const r = await client.query<{ held: boolean }>(
    `SELECT EXISTS (
       SELECT 1 FROM pg_locks
       WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted AND objsubid = 1
         AND ((classid::bigint << 32) | objid::bigint) = hashtext($1)::bigint) AS held`,
    [LOCK_KEY],
  );
  return r.rows[0]?.held ?? false;
}

export async function ensureMigrationsTable(client: pg.ClientBase): Promise<void> {
  await client.query(`
    CREATE SCHEMA IF NOT EXISTS outbox_dispatcher;
    CREATE TABLE IF NOT EXISTS outbox_dispatcher.schema_migrations (
      version    text PRIMARY KEY,
      name       text NOT NULL,
      checksum   text NOT NULL,
      applied_at timestamptz NOT NULL DEFAULT now()
    );`);
}

/** Applied migrations by version; empty before the first migrate. */
export async function appliedMigrations(client: pg.ClientBase): Promise<Map<string, { name: string; checksum: string }>> {
  const exists = await client.query<{ present: boolean }>("SELECT to_regclass('outbox_dispatcher.schema_migrations') IS NOT NULL AS present");
  const applied = new Map<string, { name: string; checksum: string }>();
  if (!exists.rows[0]?.present) return applied;
  const res = await client.query<{ version: string; name: string; checksum: string }>(
    'SELECT version, name, checksum FROM outbox_dispatcher.schema_migrations ORDER BY version',
  );
  for (const row of res.rows) applied.set(row.version, { name: row.name, checksum: row.checksum });
  return applied;
}

/**
 * Runs one migration's script and records it, in one transaction unless `transactional` is
 * false (scripts marked outbox:no-transaction). Nothing runs when this session does not hold
 * the migration lock.
 */
export async function applyMigration(
  client: pg.ClientBase,
  m: { version: string; name: string; sql: string; checksum: string },
  transactional: boolean,
): Promise<'applied' | 'lock not held'> {
  try {
    if (transactional) await client.query('BEGIN');
    if (!(await migrationLockHeld(client))) {
      if (transactional) await client.query('ROLLBACK').catch(() => undefined);
      return 'lock not held';
    }
    await client.query(m.sql);
    await client.query('INSERT INTO outbox_dispatcher.schema_migrations (version, name, checksum) VALUES ($1, $2, $3)', [m.version, m.name, m.checksum]);
    if (transactional) await client.query('COMMIT');
    return 'applied';
  } catch (err) {
    if (transactional) await client.query('ROLLBACK').catch(() => undefined);
    throw err;
  }
}
