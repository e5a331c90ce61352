import { sql, type Kysely } from 'kysely';
import type pg from 'pg';
import type { Database } from '../schema.ts';

// The operator audit trail (migration 0013, docs/adr/0014-sink-pause-and-audit-trail.md).
// Written only through the SECURITY DEFINER functions, which take the login from the session.

/** Who runs an operator command, as far as the CLI can tell (the login is the database's to say). */
export interface Actor {
  /** The operating-system user running the CLI. */
  osUser: string | undefined;
  /** The command line as the operator typed it, without secrets (e.g. "events replay"). */
  command: string;
}

export interface AuditEntry {
  id: string;
  at: Date;
  login_role: string;
  work_role: string;
  os_user: string | null;
  action: string;
  command: string;
  filter: unknown;
  rows: number;
  finished_at: Date | null;
  result: string | null;
}

/** Opens an entry in the caller's transaction (or before a batched change); returns its id. */
export async function auditBegin(db: Kysely<Database>, action: string, actor: Actor, filter: unknown): Promise<string> {
  const r = await sql<{ id: string }>`
    SELECT outbox_dispatcher.operator_audit_begin(${action}, ${actor.command}, ${JSON.stringify(filter ?? {})}::jsonb, ${actor.osUser ?? null}) AS id`.execute(db);
  return String(r.rows[0]!.id);
}

/** Adds rows to an open entry; with `result`, closes it. */
export async function auditAdd(db: Kysely<Database>, id: string, rows: number, result?: string): Promise<void> {
  await sql`SELECT outbox_dispatcher.operator_audit_add(${id}::bigint, ${rows}::bigint, ${result ?? null}::text)`.execute(db);
}

export interface AuditQuery {
  since?: Date;
  /** Action names or prefixes with * (e.g. "sink.*"). */
  actions?: string[];
  limit: number;
}

/** Newest first, through the index on `at`. */
export async function listAudit(db: Kysely<Database>, q: AuditQuery): Promise<AuditEntry[]> {
  const rows = await db
    .selectFrom('outbox_dispatcher.operator_audit')
    .selectAll()
    .$if(q.since !== undefined, (b) => b.where('at', '>=', q.since!))
    .$if(!!q.actions?.length, (b) => b.where((eb) => eb.or(q.actions!.map((a) => eb('action', 'like', a.replace(/[\\%_]/g, '\\$&').replace(/\*/g, '%'))))))
    .orderBy('at', 'desc')
    .orderBy('id', 'desc')
    .limit(q.limit)
    .execute();
  return rows.map((r) => ({ ...r, id: String(r.id), rows: Number(r.rows) }));
}

/** auditBegin on a plain client (the owner's commands, e.g. partitions adopt). */
export async function auditBeginClient(client: pg.ClientBase, action: string, actor: Actor, filter: unknown): Promise<string> {
  const r = await client.query<{ id: string }>('SELECT outbox_dispatcher.operator_audit_begin($1, $2, $3::jsonb, $4) AS id', [
    action,
    actor.command,
    JSON.stringify(filter ?? {}),
    actor.osUser ?? null,
  ]);
  return String(r.rows[0]!.id);
}

/** auditAdd on a plain client. */
export async function auditAddClient(client: pg.ClientBase, id: string, rows: number, result?: string): Promise<void> {
  await client.query('SELECT outbox_dispatcher.operator_audit_add($1::bigint, $2::bigint, $3::text)', [id, rows, result ?? null]);
}

/**
 * When `partitions rotate` last finished with no failed or deferred step, per table it was run
 * for (null: every registered table), over the last 90 days, through the index on `at`. The
 * partition sampler folds these into the rotation gauge, so a rotation run from the CLI (or a
 * cron job with PARTITION_ROTATION=false on the daemons) keeps OutboxPartitionRotationStale quiet.
 */
export async function lastCliRotations(db: Kysely<Database>): Promise<{ table: string | null; at: Date }[]> {
  const { rows } = await sql<{ table: string | null; at: Date }>`
    SELECT filter->>'table' AS table, max(finished_at) AS at
    FROM outbox_dispatcher.operator_audit
    WHERE at >= now() - interval '90 days'
      AND action = 'partitions.rotate' AND finished_at IS NOT NULL AND starts_with(result, 'ok;')
    GROUP BY 1`.execute(db);
  return rows;
}
