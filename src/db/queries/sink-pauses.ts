import { sql, type Kysely } from 'kysely';
import type { Database } from '../schema.ts';
import type { Actor } from './audit.ts';

// Sink pauses (migration 0013, docs/adr/0014-sink-pause-and-audit-trail.md). A pause row
// pauses the sink on every replica; the CLI writes it, each replica polls it.

export interface SinkPause {
  sink: string;
  paused_at: Date;
  login_role: string;
  os_user: string | null;
  reason: string;
  /** Events of the sink given back and set aside since the pause. */
  parked: number;
}

/** Every pause, with how many events each has parked (counted through sink_parked's index). */
export async function listPauses(db: Kysely<Database>): Promise<SinkPause[]> {
  const r = await sql<Omit<SinkPause, 'parked'> & { parked: string }>`
    SELECT s.sink, s.paused_at, s.login_role, s.os_user, s.reason,
           (SELECT count(*) FROM outbox_dispatcher.sink_parked p WHERE p.sink = s.sink) AS parked
    FROM outbox_dispatcher.sink_pauses s
    ORDER BY s.sink`.execute(db);
  return r.rows.map((row) => ({ ...row, parked: Number(row.parked) }));
}

/** Names of the paused sinks (the daemon's poll). */
export async function pausedSinks(db: Kysely<Database>): Promise<Map<string, Date>> {
  const rows = await db.selectFrom('outbox_dispatcher.sink_pauses').select(['sink', 'paused_at']).execute();
  return new Map(rows.map((r) => [r.sink, r.paused_at]));
}

export async function pauseSink(db: Kysely<Database>, sink: string, reason: string, actor: Actor): Promise<'paused' | 'already_paused'> {
  const r = await sql<{ result: 'paused' | 'already_paused' }>`
    SELECT outbox_dispatcher.sink_pause(${sink}, ${reason}, ${actor.osUser ?? null}, ${actor.command}) AS result`.execute(db);
  return r.rows[0]!.result;
}

/** Number of parked events made due again, or undefined when the sink was not paused. */
export async function resumeSink(db: Kysely<Database>, sink: string, actor: Actor): Promise<number | undefined> {
  const r = await sql<{ n: string | null }>`SELECT outbox_dispatcher.sink_resume(${sink}, ${actor.osUser ?? null}, ${actor.command}) AS n`.execute(db);
  const n = r.rows[0]!.n;
  return n === null ? undefined : Number(n);
}

/** Gives a claimed event of a paused sink back, parked; false when the sink is no longer paused (send it). */
export async function parkEvent(
  db: Kysely<Database>,
  args: { sink: string; workerId: string; id: string; createdAtKey: string; attempt: number },
): Promise<boolean> {
  const r = await sql<{ parked: boolean }>`
    SELECT outbox_dispatcher.sink_park(${args.sink}, ${args.workerId}, ${args.id}::uuid, ${args.createdAtKey}::timestamptz, ${args.attempt}::int) AS parked`.execute(db);
  return r.rows[0]!.parked === true;
}

/**
 * Parked events whose sink is no longer paused, made due again; how many. Each replica calls it
 * every second, while a paused sink may have a large parked backlog: the check walks
 * sink_parked's index once per distinct sink (a loose index scan), never the parked rows, and
 * the unpark function (which reads them) runs only when a sink without a pause has parked events.
 */
export async function unparkOrphans(db: Kysely<Database>): Promise<number> {
  const orphans = await sql<{ sink: string }>`
    WITH RECURSIVE s AS (
      (SELECT p.sink FROM outbox_dispatcher.sink_parked p ORDER BY p.sink LIMIT 1)
      UNION ALL
      SELECT (SELECT p.sink FROM outbox_dispatcher.sink_parked p WHERE p.sink > s.sink ORDER BY p.sink LIMIT 1)
      FROM s WHERE s.sink IS NOT NULL
    )
    SELECT s.sink FROM s
    WHERE s.sink IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM outbox_dispatcher.sink_pauses x WHERE x.sink = s.sink)`.execute(db);
  if (orphans.rows.length === 0) return 0;
  const r = await sql<{ n: string }>`SELECT outbox_dispatcher.sink_unpark_orphans() AS n`.execute(db);
  return Number(r.rows[0]!.n);
}

export interface RecentFailures {
  event_type: string;
  /** Pending events of the window that already failed at least once (retrying). */
  retrying: number;
  dead: number;
  /** The last error of the newest of them. */
  last_error: string | null;
}

/**
 * Failures among events created in the last `windowSeconds`, by event type (the CLI maps types
 * to sinks through the routes). Reads the unsettled statuses through the dispatch index, within
 * the window's partitions; settled ('done') rows are never read.
 */
export async function recentFailures(db: Kysely<Database>, windowSeconds: number): Promise<RecentFailures[]> {
  const r = await sql<Omit<RecentFailures, 'retrying' | 'dead'> & { retrying: string; dead: string }>`
    SELECT f.event_type, f.retrying, f.dead, l.last_error
    FROM (SELECT event_type,
                 count(*) FILTER (WHERE status = 'pending') AS retrying,
                 count(*) FILTER (WHERE status = 'dead') AS dead
          FROM capacity_outbox
          WHERE status IN ('pending', 'dead') AND attempts > 0 AND last_error IS NOT NULL
            AND created_at >= now() - ${windowSeconds} * interval '1 second'
          GROUP BY event_type) f
    CROSS JOIN LATERAL (
      SELECT left(o.last_error, 300) AS last_error FROM capacity_outbox o
      WHERE o.event_type = f.event_type AND o.status IN ('pending', 'dead') AND o.attempts > 0 AND o.last_error IS NOT NULL
        AND o.created_at >= now() - ${windowSeconds} * interval '1 second'
      ORDER BY o.created_at DESC LIMIT 1) l
    ORDER BY f.event_type`.execute(db);
  return r.rows.map((row) => ({ ...row, retrying: Number(row.retrying), dead: Number(row.dead) }));
}
