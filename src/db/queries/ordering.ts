import { sql, type Kysely } from 'kysely';
import type { Database } from '../schema.ts';

// Per-key ordering (migration 0010, docs/adr/0011-per-key-ordering.md): blocked keys for the
// on-call CLI and the gauge, and setting a dead head aside. Blocked keys are read through the
// blocked-keys table (only blocked keys are in it), so the cost follows the number of blocked
// keys, never the number of keys or events.

export interface BlockedKey {
  restaurant_id: string;
  ordering_key: string;
  head_event_id: string;
  head_event_type: string | null;
  blocked_since: Date;
  /** Events of the key queued behind the head, counted up to the listing's cap. */
  waiting: number;
  last_error: string | null;
}

export async function listBlockedKeys(db: Kysely<Database>, opts: { tenant?: string; limit: number; waitingCap?: number }): Promise<BlockedKey[]> {
  const cap = opts.waitingCap ?? 10_000;
  const r = await sql<BlockedKey & { waiting: string }>`
    SELECT k.restaurant_id, k.ordering_key, k.event_id AS head_event_id, o.event_type AS head_event_type,
           k.blocked_since, o.last_error,
           (SELECT count(*) FROM (SELECT 1 FROM capacity_outbox w
                                  WHERE w.restaurant_id = k.restaurant_id AND w.ordering_key = k.ordering_key
                                    AND w.ordering_key IS NOT NULL AND w.status IN ('pending', 'processing')
                                  LIMIT ${cap}) c) AS waiting
    FROM outbox_dispatcher.capacity_outbox_ordering_blocked k
    LEFT JOIN capacity_outbox o ON o.id = k.event_id AND o.created_at = k.event_created_at
    ${opts.tenant === undefined ? sql`` : sql`WHERE k.restaurant_id = ${opts.tenant}::uuid`}
    ORDER BY k.blocked_since, k.restaurant_id, k.ordering_key
    LIMIT ${opts.limit}`.execute(db);
  return r.rows.map((row) => ({ ...row, waiting: Number(row.waiting) }));
}

export interface BlockedSample {
  /** Blocked keys, counted up to `cap`. */
  count: number;
  /** How long the longest-blocked key has waited; 0 when none. */
  oldestSeconds: number;
}

export async function sampleBlockedKeys(db: Kysely<Database>, cap: number): Promise<BlockedSample> {
  const r = await sql<{ n: string; oldest: number | null }>`
    SELECT (SELECT count(*) FROM (SELECT 1 FROM outbox_dispatcher.capacity_outbox_ordering_blocked LIMIT ${cap}) c) AS n,
           (SELECT extract(epoch FROM now() - min(blocked_since))::float8
              FROM outbox_dispatcher.capacity_outbox_ordering_blocked) AS oldest`.execute(db);
  const row = r.rows[0]!;
  return { count: Number(row.n), oldestSeconds: Math.max(0, Number(row.oldest ?? 0)) };
}

export type SkipResult = 'skipped' | 'not_blocking';

/** Sets a blocked key's dead head aside (it stays dead, replayable) and lets the key move on. */
export async function skipDeadHead(db: Kysely<Database>, eventId: string, note: string): Promise<SkipResult> {
  const r = await sql<{ result: SkipResult }>`SELECT outbox_dispatcher.capacity_outbox_ordering_skip(${eventId}::uuid, ${note}) AS result`.execute(db);
  return r.rows[0]!.result;
}

/** Moves on keys whose head finished while a producer held the key's lock (see migration 0010). */
export async function settlePendingKeys(db: Kysely<Database>, limit: number): Promise<number> {
  const r = await sql<{ n: number }>`SELECT outbox_dispatcher.capacity_outbox_ordering_settle_pending(${limit}::int) AS n`.execute(db);
  return Number(r.rows[0]!.n);
}
