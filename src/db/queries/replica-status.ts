import { sql, type Kysely } from 'kysely';
import type { Database } from '../schema.ts';

// Each replica's view of its sinks (migration 0016): circuit state and sends in flight, which
// live inside one process, reported to the database so `sinks status` sees every replica.

export type ReportedCircuit = 'closed' | 'half_open' | 'open';

export interface ReplicaSinkReport {
  sink: string;
  circuit: ReportedCircuit;
  in_flight: number;
}

/** Writes this replica's rows (an empty list removes them: the replica is stopping). */
export async function reportReplicaSinkStatus(db: Kysely<Database>, workerId: string, reportMs: number, rows: readonly ReplicaSinkReport[]): Promise<number> {
  const r = await sql<{ n: number }>`
    SELECT outbox_dispatcher.replica_sink_status_report(${workerId}, ${reportMs}::int, ${JSON.stringify(rows)}::jsonb) AS n`.execute(db);
  return r.rows[0]!.n;
}

export interface ReplicaSinkStatus extends ReplicaSinkReport {
  worker_id: string;
  updated_at: Date;
}

/**
 * The rows of live replicas: refreshed within three of their own report intervals (a replica
 * that stopped cleanly has removed its rows; one that died stops counting after that).
 */
export async function liveReplicaSinkStatus(db: Kysely<Database>): Promise<ReplicaSinkStatus[]> {
  const r = await sql<ReplicaSinkStatus>`
    SELECT s.worker_id, s.sink, s.circuit, s.in_flight, s.updated_at
    FROM outbox_dispatcher.replica_sink_status s
    WHERE s.updated_at >= now() - 3 * s.report_ms * interval '1 millisecond'
    ORDER BY s.sink, s.worker_id`.execute(db);
  return r.rows;
}
