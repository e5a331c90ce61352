import crypto from 'node:crypto';
import fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import pg from 'pg';

export const MIGRATIONS_DIR = fileURLToPath(new URL('../../migrations/', import.meta.url));

// One lock key for every replica of every version: migrations never run twice at once.
const MIGRATION_LOCK_SQL = "SELECT pg_advisory_lock(hashtext('outbox_dispatcher.migrate'))";
const MIGRATION_UNLOCK_SQL = "SELECT pg_advisory_unlock(hashtext('outbox_dispatcher.migrate'))";
// Whether this very server session holds the lock: behind a transaction-mode pooler the
// statement after pg_advisory_lock may run in another session, which must not migrate.
const MIGRATION_LOCK_HELD_SQL = `SELECT EXISTS (
  SELECT 1 FROM pg_locks
  WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted AND objsubid = 1
    AND ((classid::bigint << 32) | objid::bigint) = hashtext('outbox_dispatcher.migrate')::bigint) AS held`;

/** The message for a migration run through a transaction-mode pooler. */
export const TRANSACTION_POOLER_HINT =
  'migrate and partitions adopt need a direct or session-mode connection (they hold a session advisory lock or session settings), and this one goes through a ' +
  'transaction-mode pooler (PgBouncer pool_mode=transaction, Supavisor port 6543); use the direct URL or the session pooler (Supabase: port 5432)';
const NO_TRANSACTION_MARKER = /^--\s*outbox:no-transaction\b/m;

export interface Migration {
  version: string;
  name: string;
  sql: string;
  checksum: string;
}

export interface MigrationStatus {
  applied: string[];
  pending: Migration[];
  /** Applied versions this build does not know (the database is ahead of the code). */
  unknown: string[];
}

export class MigrationError extends Error {
  override name = 'MigrationError';
}

export function loadMigrations(dir = MIGRATIONS_DIR): Migration[] {
  return fs
    .readdirSync(dir)
    .filter((f) => /^\d{4}_[a-z0-9_]+\.sql$/.test(f))
    .sort()
    .map((file) => {
      const sql = fs.readFileSync(`${dir}/${file}`, 'utf8');
      return {
        version: file.slice(0, 4),
        name: file.replace(/\.sql$/, ''),
        sql,
        checksum: crypto.createHash('sha256').update(sql).digest('hex'),
      };
    });
}

const CREATE_TABLE_SQL = `
  CREATE SCHEMA IF NOT EXISTS outbox_dispatcher;
  CREATE TABLE IF NOT EXISTS outbox_dispatcher.schema_migrations (
    version    text PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
  );`;

async function readApplied(client: pg.ClientBase): Promise<Map<string, { name: string; checksum: string }>> {
  const exists = await client.query<{ present: boolean }>(
    "SELECT to_regclass('outbox_dispatcher.schema_migrations') IS NOT NULL AS present",
  );
  const applied = new Map<string, { name: string; checksum: string }>();
  if (!exists.rows[0]?.present) return applied;
  const res = await client.query<{ version: string; name: string; checksum: string }>(
    'SELECT version, name, checksum FROM outbox_dispatcher.schema_migrations ORDER BY version',
  );
  for (const row of res.rows) applied.set(row.version, { name: row.name, checksum: row.checksum });
  return applied;
}

function compare(migrations: Migration[], applied: Map<string, { name: string; checksum: string }>): MigrationStatus {
  const known = new Set(migrations.map((m) => m.version));
  for (const m of migrations) {
    const row = applied.get(m.version);
    if (row && row.checksum !== m.checksum) {
      throw new MigrationError(
        `migration ${m.name} was changed after it was applied (checksum ${row.checksum.slice(0, 12)} in the database, ${m.checksum.slice(0, 12)} on disk); add a new migration instead of editing an applied one`,
      );
    }
  }
  return {
    applied: [...applied.keys()],
    pending: migrations.filter((m) => !applied.has(m.version)),
    unknown: [...applied.keys()].filter((v) => !known.has(v)),
  };
}

/** What is applied and what is not, without changing anything. */
export async function migrationStatus(client: pg.ClientBase, migrations = loadMigrations()): Promise<MigrationStatus> {
  return compare(migrations, await readApplied(client));
}

/**
 * Applies pending migrations in order, each in its own transaction, under a
 * session advisory lock so concurrent callers apply each migration exactly once.
 */
export async function migrate(
  client: pg.ClientBase,
  opts: { migrations?: Migration[]; onApply?: (m: Migration) => void } = {},
): Promise<string[]> {
  const migrations = opts.migrations ?? loadMigrations();
  await client.query(MIGRATION_LOCK_SQL);
  try {
    await client.query(CREATE_TABLE_SQL);
    const { pending } = compare(migrations, await readApplied(client));
    for (const m of pending) {
      opts.onApply?.(m);
      const transactional = !NO_TRANSACTION_MARKER.test(m.sql);
      try {
        if (transactional) await client.query('BEGIN');
        const lock = await client.query<{ held: boolean }>(MIGRATION_LOCK_HELD_SQL);
        if (!lock.rows[0]?.held) throw new MigrationError(`the migration lock is not held by this session: ${TRANSACTION_POOLER_HINT}`);
        await client.query(m.sql);
        await client.query(
          'INSERT INTO outbox_dispatcher.schema_migrations (version, name, checksum) VALUES ($1, $2, $3)',
          [m.version, m.name, m.checksum],
        );
        if (transactional) await client.query('COMMIT');
      } catch (err) {
        if (transactional) await client.query('ROLLBACK').catch(() => undefined);
        if (err instanceof MigrationError) throw err;
        throw new MigrationError(`migration ${m.name} failed: ${(err as Error).message}`, { cause: err });
      }
    }
    return pending.map((m) => m.name);
  } finally {
    await client.query(MIGRATION_UNLOCK_SQL).catch(() => undefined);
  }
}
