import crypto from 'node:crypto';
import fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import type pg from 'pg';
import { appliedMigrations, applyMigration, ensureMigrationsTable, releaseMigrationLock, takeMigrationLock } from './queries/migrations.ts';

export const MIGRATIONS_DIR = fileURLToPath(new URL('../../migrations/', import.meta.url));

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
  return compare(migrations, await appliedMigrations(client));
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
  await takeMigrationLock(client);
  try {
    await ensureMigrationsTable(client);
    const { pending } = compare(migrations, await appliedMigrations(client));
    for (const m of pending) {
      opts.onApply?.(m);
      let result: Awaited<ReturnType<typeof applyMigration>>;
      try {
        result = await applyMigration(client, m, !NO_TRANSACTION_MARKER.test(m.sql));
      } catch (err) {
        throw new MigrationError(`migration ${m.name} failed: ${(err as Error).message}`, { cause: err });
      }
      if (result === 'lock not held') throw new MigrationError(`the migration lock is not held by this session: ${TRANSACTION_POOLER_HINT}`);
    }
    return pending.map((m) => m.name);
  } finally {
    await releaseMigrationLock(client).catch(() => undefined);
  }
}
