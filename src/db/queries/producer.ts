import type pg from 'pg';

// The producer contract (README "Producing events") as statements: what `enqueue`, the
// incidents and the tests write is exactly what a producer's own transaction writes.

/** One event as a producer writes it: only the producer's columns. */
export interface NewEvent {
  type: string;
  /** Any JSON value; the dispatcher dead-letters anything but an object as malformed. Default {}. */
  payload?: unknown;
  dedupeKey?: string | null | undefined;
  idempotencyKey?: string | null | undefined;
  orderingKey?: string | null | undefined;
  /** The headers column: any JSON (the dispatcher validates it when it claims the event). */
  headers?: unknown;
}

/**
 * Runs `work` the way a producer writes: one transaction, as app_producer when the login
 * role may assume it, with the tenant context set.
 */
export async function asProducer<T>(client: pg.ClientBase, tenant: string, work: () => Promise<T>): Promise<T> {
  await client.query('BEGIN');
  try {
    const member = await client.query<{ ok: boolean }>("SELECT pg_has_role(session_user, 'app_producer', 'MEMBER') AS ok");
    if (member.rows[0]?.ok) await client.query('SET LOCAL ROLE app_producer');
    await client.query('SELECT public.set_restaurant_context($1::uuid)', [tenant]);
    const result = await work();
    await client.query('COMMIT');
    return result;
  } catch (err) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw err;
  }
}

/**
 * Inserts `events` for `tenant` in one statement, in the given order (per-key ordering takes
 * each row's sequence in that order). Returns the ids of the rows kept: a duplicate of a
 * pending event's dedupe key is dropped by the trigger and returns none.
 */
export async function insertEvents(client: pg.ClientBase, tenant: string, events: readonly NewEvent[]): Promise<string[]> {
  if (events.length === 0) return [];
  const rows = events.map((e) => ({
    type: e.type,
    payload: e.payload ?? {},
    dedupe_key: e.dedupeKey ?? null,
    idempotency_key: e.idempotencyKey ?? null,
    ordering_key: e.orderingKey ?? null,
    headers: e.headers ?? null,
  }));
  const r = await client.query<{ id: string }>(
    `INSERT INTO capacity_outbox (restaurant_id, event_type, payload, dedupe_key, idempotency_key, ordering_key, headers)
     SELECT $1::uuid, e.type, e.payload, e.dedupe_key, e.idempotency_key, e.ordering_key, e.headers
     FROM ROWS FROM (jsonb_to_recordset($2::jsonb)
            AS (type text, payload jsonb, dedupe_key text, idempotency_key text, ordering_key text, headers jsonb))
          WITH ORDINALITY AS e(type, payload, dedupe_key, idempotency_key, ordering_key, headers, n)
     ORDER BY e.n
     RETURNING id`,
    [tenant, JSON.stringify(rows)],
  );
  return r.rows.map((row) => row.id);
}

/**
 * The pending event holding a dedupe key, from the key table the insert trigger writes
 * (outbox_dispatcher.capacity_outbox_key_holder, migration 0015: the trigger's own definition of
 * a key, read by its primary key). Null when it finished meanwhile or is another tenant's. Runs
 * in the producer's tenant context.
 */
export async function pendingHolderOf(
  client: pg.ClientBase,
  key: { tenant: string; type: string; dedupeKey?: string | null | undefined; idempotencyKey?: string | null | undefined },
): Promise<string | null> {
  const r = await client.query<{ id: string | null }>(
    'SELECT outbox_dispatcher.capacity_outbox_key_holder($1, $2, $3, $4) AS id',
    [key.tenant, key.type, key.dedupeKey ?? null, key.idempotencyKey ?? null],
  );
  return r.rows[0]?.id ?? null;
}
