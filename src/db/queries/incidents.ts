import pg from 'pg';
import { sleep } from '../../kernel/service.ts';

// Statements of the synthetic incidents (src/incidents): each needs the table owner.

/** `count` events already overdue by `ageSeconds` (producers cannot set next_attempt_at). */
export async function insertOverdueEvents(client: pg.ClientBase, e: { tenant: string; type: string; count: number; ageSeconds: number }): Promise<number> {
  const r = await client.query(
    `INSERT INTO capacity_outbox (restaurant_id, event_type, payload, next_attempt_at)
     SELECT $1::uuid, $2, jsonb_build_object('incident', 'backlog', 'n', g), now() - $4::int * interval '1 second'
     FROM generate_series(1, $3::int) g`,
    [e.tenant, e.type, e.count, e.ageSeconds],
  );
  return r.rowCount ?? 0;
}

/** Holds an EXCLUSIVE lock on capacity_outbox (the claim's UPDATE waits) for `holdMs`. */
export async function holdOutboxLock(client: pg.ClientBase, holdMs: number, signal?: AbortSignal): Promise<void> {
  await client.query('BEGIN');
  await client.query('LOCK TABLE capacity_outbox IN EXCLUSIVE MODE');
  await sleep(holdMs, signal);
  await client.query('COMMIT');
}

/** capacity_outbox's partitions that start in the future, earliest first. */
export async function futurePartitions(client: pg.ClientBase): Promise<string[]> {
  const { rows } = await client.query<{ name: string }>(
    `SELECT partition_name AS name FROM outbox_dispatcher.partition_report('capacity_outbox')
     WHERE NOT is_default AND lower_bound > now() ORDER BY lower_bound`,
  );
  return rows.map((r) => r.name);
}

/** Drops partition `name` if it holds no row; false (and nothing dropped) otherwise. */
export async function dropIfEmpty(client: pg.ClientBase, name: string): Promise<boolean> {
  const n = await client.query<{ n: string }>(`SELECT count(*) AS n FROM ${pg.escapeIdentifier(name)}`);
  if (Number(n.rows[0]!.n) > 0) return false;
  await client.query(`DROP TABLE ${pg.escapeIdentifier(name)}`);
  return true;
}
