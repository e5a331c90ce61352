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

/** Parked events whose sink is no longer paused, made due again; how many. */
export async function unparkOrphans(db: Kysely<Database>): Promise<number> {
  const r = await sql<{ n: string }>`SELECT outbox_dispatcher.sink_unpark_orphans() AS n`.execute(db);
  return Number(r.rows[0]!.n);
}
