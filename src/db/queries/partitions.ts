import { sql, type Kysely } from 'kysely';
import type { Database } from '../schema.ts';

// Calls to the partition primitives of migrations/0003 (SECURITY DEFINER, registry-bound).

export interface PartitionRow {
  partition_name: string;
  lower_bound: Date | null;
  upper_bound: Date | null;
  is_default: boolean;
  estimated_rows: number;
  size_bytes: number;
  /** Rows per blocking status (e.g. {"pending": 3, "dead": 1}); {} when none. */
  blocking: Record<string, number>;
}

export async function partitionReport(db: Kysely<Database>, table: string): Promise<PartitionRow[]> {
  const { rows } = await sql<PartitionRow & { estimated_rows: string; size_bytes: string }>`
    SELECT * FROM outbox_dispatcher.partition_report(${table})`.execute(db);
  return rows.map((r) => ({ ...r, estimated_rows: Number(r.estimated_rows), size_bytes: Number(r.size_bytes) }));
}

export async function defaultPartitionRows(db: Kysely<Database>, table: string): Promise<{ month: string; rows: number }[]> {
  const { rows } = await sql<{ month: string; row_count: string }>`
    SELECT month::text AS month, row_count FROM outbox_dispatcher.partition_default_rows(${table})`.execute(db);
  return rows.map((r) => ({ month: r.month, rows: Number(r.row_count) }));
}

export async function ensureDefaultPartition(db: Kysely<Database>, table: string, dryRun: boolean): Promise<string[]> {
  const { rows } = await sql<{ s: string[] }>`SELECT outbox_dispatcher.partition_ensure_default(${table}, ${dryRun}) AS s`.execute(db);
  return rows[0]!.s;
}

/** Statements that create the month's partition (moving its rows out of the default); [] if it exists. */
export async function createMonthlyPartition(db: Kysely<Database>, table: string, month: string, dryRun: boolean): Promise<string[]> {
  const { rows } = await sql<{ s: string[] }>`SELECT outbox_dispatcher.partition_create(${table}, ${month}::date, ${dryRun}) AS s`.execute(db);
  return rows[0]!.s;
}

export interface RetireResult {
  result: 'retired' | 'planned' | 'blocked' | 'kept';
  statements?: string[];
  blocking?: Record<string, number>;
  reason?: string;
  mode?: 'drop' | 'detach';
}

export async function retirePartition(db: Kysely<Database>, table: string, partition: string, now: Date, dryRun: boolean): Promise<RetireResult> {
  const { rows } = await sql<{ r: RetireResult }>`
    SELECT outbox_dispatcher.partition_retire(${table}, ${partition}, ${now}, ${dryRun}) AS r`.execute(db);
  return rows[0]!.r;
}

/**
 * Runs `work` in its own transaction whose lock waits are bounded by `lockTimeoutMs`
 * (SET LOCAL): DDL that cannot get its lock quickly fails with 55P03 instead of queueing
 * every producer and claim behind its pending ACCESS EXCLUSIVE request.
 */
export async function withLockTimeout<T>(db: Kysely<Database>, lockTimeoutMs: number, work: (trx: Kysely<Database>) => Promise<T>): Promise<T> {
  return db.transaction().execute(async (trx) => {
    await sql`SELECT set_config('lock_timeout', ${`${Math.max(1, Math.round(lockTimeoutMs))}ms`}, true)`.execute(trx);
    return work(trx);
  });
}

/** Sessions holding a lock on the table or one of its partitions (for the deferral report). */
export async function lockHolders(db: Kysely<Database>, table: string): Promise<{ pid: number; mode: string; relation: string; xact_seconds: number | null }[]> {
  const { rows } = await sql<{ pid: number; mode: string; relation: string; xact_seconds: number | null }>`
    SELECT l.pid, l.mode, l.relation::regclass::text AS relation,
           round(extract(epoch FROM now() - a.xact_start))::int AS xact_seconds
    FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE l.granted AND l.locktype = 'relation' AND l.pid <> pg_backend_pid()
      -- pg_locks spans the cluster, and relation OIDs repeat across databases cloned from one
      -- template: without this, another database's sessions were named as holders.
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND (l.relation = to_regclass(${table})
           OR l.relation IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = to_regclass(${table})))
    ORDER BY a.xact_start NULLS LAST, l.pid
    LIMIT 20`.execute(db);
  return rows;
}

/**
 * Takes or renews the maintenance lease `name` for `holder` (migration 0011); true when held.
 * One statement, no session state: safe through a transaction-mode pooler.
 */
export async function takeMaintenanceLease(db: Kysely<Database>, name: string, holder: string, ttlMs: number): Promise<boolean> {
  const { rows } = await sql<{ held: boolean | null }>`
    SELECT outbox_dispatcher.maintenance_lease_take(${name}, ${holder}, ${Math.round(ttlMs)}::int) AS held`.execute(db);
  return rows[0]?.held === true;
}

export async function releaseMaintenanceLease(db: Kysely<Database>, name: string, holder: string): Promise<void> {
  await sql`SELECT outbox_dispatcher.maintenance_lease_release(${name}, ${holder})`.execute(db);
}

/** Rows of the partition registry (all, or the one table named), ordered by schema and name. */
export async function managedPartitionRows(db: Kysely<Database>, only?: { table_schema: string; table_name: string }) {
  return db
    .selectFrom('outbox_dispatcher.managed_partitions')
    .selectAll()
    .$if(only !== undefined, (q) => q.where('table_schema', '=', only!.table_schema).where('table_name', '=', only!.table_name))
    .orderBy('table_schema')
    .orderBy('table_name')
    .execute();
}
