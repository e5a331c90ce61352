import { sql, type Kysely, type QueryCreator } from 'kysely';
import type { Database, OutboxStatus } from '../schema.ts';
import type { Outcome } from '../../domain/outcome.ts';
import { safeText } from '../../domain/safe-text.ts';

// The hot-path queries of the dispatcher: claim, complete, rescue. Each is one
// statement; none holds a transaction open beyond itself.

export interface ClaimedRow {
  id: string;
  /** created_at as PostgreSQL prints it: round-trips with microsecond precision. */
  created_at_key: string;
  created_at: Date;
  restaurant_id: string;
  event_type: string;
  /** NULL when the payload is over the size limit: it never leaves the database. */
  payload: unknown;
  /** The payload's JSON text size when the claim measured it (large or compressed payloads), else null. */
  payload_bytes: number | null;
  dedupe_key: string | null;
  idempotency_key: string | null;
  /** The producer's headers column, unvalidated (checkEvent validates it). */
  headers: unknown;
  /** Set for keyed events (migration 0010): delivered one at a time per tenant and key. */
  ordering_key: string | null;
  /** Per key, increasing in commit order; bigint as text. */
  ordering_seq: string | null;
  attempts: number;
  /** next_attempt_at before the claim: where the claim's walk of the due range reached. */
  due_at: Date;
  /** Claimed by the fair lane (tenant by tenant) rather than the oldest-first walk (ADR 0012). */
  fair: boolean;
  /** The last tenant the fair lane visited: where the next claim's fair lane starts (same on every row). */
  tenant_cursor: string | null;
}

export interface ClaimArgs {
  workerId: string;
  limit: number;
  leaseMs: number;
  /** Payloads over this many bytes of JSON text are not returned (see ClaimedRow.payload). */
  maxPayloadBytes: number;
  /** Start the walk of the due range here instead of at its head (see claim-cursor.ts). */
  after?: Date | null;
  /** Fair lane (ADR 0012): how many of `limit` to take tenant by tenant; 0 = oldest first only. */
  fairRows?: number;
  /** Fair lane: at most this many events of one tenant per claim. */
  fairPerTenant?: number;
  /** Fair lane: at most this many tenants visited per claim (bounds the claim's reads). */
  fairTenants?: number;
  /** Fair lane: start after this tenant (the previous claim's tenant_cursor). */
  tenantAfter?: string | null;
}

/**
 * Up to `limit` rows of `status` whose next_attempt_at has passed, oldest first, locked
 * and skipping rows other workers hold: one walk of capacity_outbox_dispatch_idx.
 * Used by the rescuer for 'processing' rows (next_attempt_at = lease expiry).
 */
function dueRows(qc: QueryCreator<Database>, status: 'pending' | 'processing', limit: number) {
  return qc
    .selectFrom('capacity_outbox')
    .select(['id', 'created_at'])
    .where('status', '=', status)
    .where('next_attempt_at', '<=', sql<Date>`now()`)
    .orderBy('next_attempt_at')
    .limit(limit)
    .forUpdate()
    .skipLocked();
}

/**
 * Claims up to `limit` due events for `workerId` with a lease of `leaseMs`, in one call of
 * outbox_dispatcher.claim_batch (migrations 0004, 0012, 0014): an ordered walk of the dispatch
 * index whose plan does not depend on statistics, SKIP LOCKED so workers claim side by side,
 * the payload size checked in SQL (docs/adr/0006-backlog-proof-claim.md), and optionally a
 * fair lane that takes a share of the batch tenant by tenant (docs/adr/0012-tenant-fairness.md).
 * While processing, next_attempt_at holds the lease expiry (see rescueExpiredLeases).
 */
export async function claimBatch(db: Kysely<Database>, args: ClaimArgs): Promise<ClaimedRow[]> {
  const result = await claimStatement(args).execute(db);
  return result.rows;
}

/** The claim statement itself, unexecuted (for EXPLAIN in tests and benchmarks). */
export function claimStatement(args: ClaimArgs) {
  return sql<ClaimedRow>`SELECT id, created_at_key, created_at, restaurant_id, event_type, payload, payload_bytes,
      dedupe_key, idempotency_key, headers, attempts, due_at, ordering_key, ordering_seq::text AS ordering_seq,
      fair, tenant_cursor
    FROM outbox_dispatcher.claim_batch(${args.workerId}, ${args.limit}::int, ${Math.round(args.leaseMs)}::int,
      ${args.maxPayloadBytes}::int, ${args.after ?? null}::timestamptz, ${args.tenantAfter ?? null}::uuid,
      ${args.fairRows ?? 0}::int, ${Math.max(1, args.fairPerTenant ?? 1)}::int, ${args.fairTenants ?? 0}::int)`;
}

export interface Completion {
  id: string;
  createdAtKey: string;
  /** The attempt number the claim gave; guards against completing a re-claimed event. */
  attempt: number;
  outcome: Outcome;
  /**
   * A keyed event whose route says ordering.onDeadHead = skip: if this outcome leaves it dead,
   * its key moves on in the same transaction instead of staying blocked.
   */
  skipKeyIfDead?: boolean;
  /** A keyed event (ordering_key set): finishing it settles its key with the outcome (migrations 0017, 0019). */
  keyed?: boolean;
}

/** Sets dead heads aside so their keys move on (routes with ordering.onDeadHead = skip). */
async function skipDeadHeads(db: Kysely<Database>, ids: string[], note: string): Promise<void> {
  if (ids.length === 0) return;
  await sql`SELECT outbox_dispatcher.capacity_outbox_ordering_skip(id, ${note}) FROM unnest(${ids}::uuid[]) AS t(id)`.execute(db);
}

const STATUS_OF: Record<Outcome['kind'], OutboxStatus> = {
  done: 'done',
  retry: 'pending',
  dead: 'dead',
  release: 'pending',
};

/**
 * Writes a batch of outcomes in one statement. Only rows still leased by this
 * worker at the same attempt change; the ids returned are the ones that did.
 */
export async function completeBatch(db: Kysely<Database>, workerId: string, items: Completion[]): Promise<Set<string>> {
  if (items.length === 0) return new Set();
  const settles = items.some((c) => c.keyed && (c.outcome.kind === 'done' || c.outcome.kind === 'dead'));
  if (!settles) {
    const result = await completionStatement(workerId, items).execute(db);
    return new Set(result.rows.map((r) => r.id));
  }
  // Keyed events finished: their keys are settled with the outcomes, in the same statement
  // (settledCompletionStatement; migrations 0017, 0019) instead of the row trigger per event.
  const skips = items.filter((c) => c.skipKeyIfDead && c.outcome.kind === 'dead').map((c) => c.id);
  if (skips.length === 0) {
    const result = await settledCompletionStatement(workerId, items).execute(db);
    return new Set(result.rows.map((r) => r.id));
  }
  // A dead head whose route says skip is set aside in the same transaction: never a window in
  // which its key is blocked by an event whose route says skip.
  return db.transaction().execute(async (trx) => {
    const result = await settledCompletionStatement(workerId, items).execute(trx);
    const applied = new Set(result.rows.map((r) => r.id));
    await skipDeadHeads(trx, skips.filter((id) => applied.has(id)), 'route ordering.onDeadHead = skip');
    return applied;
  });
}

/**
 * The completion and the settle of the keys it finished, as one statement (one round trip, no
 * key arrays through the worker; ADR 0011). The UPDATE returns each row's key and new status,
 * and the settle (migration 0019) aggregates that RETURNING, so it runs once, after every row
 * is written, and always: `settled` is the outer side of the final join, so even with no row
 * updated it switches the flag off. The settle is VOLATILE, so its statements take snapshots
 * that see this statement's UPDATE (the claim's key release, migration 0012, works the same
 * way). The row trigger stands aside while the UPDATE runs: `flag` is joined into the UPDATE,
 * so the setting is on before the first row changes (an AFTER ROW trigger's WHEN is evaluated
 * as each row changes). Keys are classified by the status each row got (a batch may hold two
 * outcomes of a redelivered event; only the one whose attempt matched was applied). A key
 * finished twice in one batch is passed twice, which the settle allows.
 */
export function settledCompletionStatement(workerId: string, items: Completion[]) {
  const update = completionStatement(workerId, items, { settle: true });
  return sql<{ id: string }>`
    WITH flag AS (SELECT set_config('outbox_dispatcher.completion_settles_keys', 'on', true) AS flag_on),
    c AS (${update}),
    settled AS (
      SELECT outbox_dispatcher.capacity_outbox_ordering_settle_keys(
               COALESCE(array_agg(c.restaurant_id) FILTER (WHERE c.status = 'done' AND c.ordering_key IS NOT NULL), '{}'),
               COALESCE(array_agg(c.ordering_key) FILTER (WHERE c.status = 'done' AND c.ordering_key IS NOT NULL), '{}'),
               COALESCE(array_agg(c.id) FILTER (WHERE c.status = 'dead' AND c.ordering_key IS NOT NULL), '{}'),
               COALESCE(array_agg(c.created_at) FILTER (WHERE c.status = 'dead' AND c.ordering_key IS NOT NULL), '{}')) AS moved
      FROM c)
    SELECT c.id FROM settled LEFT JOIN c ON true WHERE c.id IS NOT NULL`;
}

/** The completion statement, unexecuted (for EXPLAIN in tests). */
export function completionStatement(workerId: string, items: Completion[], opts: { settle?: boolean } = {}) {
  const ids = items.map((c) => c.id);
  const createdAt = items.map((c) => c.createdAtKey);
  const attempts = items.map((c) => c.attempt);
  const statuses = items.map((c) => STATUS_OF[c.outcome.kind]);
  const delays = items.map((c) => ('delayMs' in c.outcome ? Math.max(0, Math.round(c.outcome.delayMs ?? 0)) : 0));
  // Error texts come from sinks (response bodies, exception messages): sanitised here,
  // the one place outcomes are written, so no writer can forget it.
  const errors = items.map((c) => ('error' in c.outcome ? safeText(c.outcome.error) : null));
  const released = items.map((c) => c.outcome.kind === 'release');
  // unnest() over parallel arrays has no Kysely builder, hence raw SQL.
  // Inside settledCompletionStatement: each row's key and new status for the settle, and its
  // trigger flag joined in.
  const keys = opts.settle ? sql`, o.created_at, o.restaurant_id, o.ordering_key, o.status` : sql``;
  const flag = opts.settle ? sql`, flag` : sql``;
  return sql<{ id: string; created_at?: Date; restaurant_id?: string; ordering_key?: string | null; status?: OutboxStatus }>`
    UPDATE capacity_outbox AS o SET
      status          = v.status,
      attempts        = CASE WHEN v.released THEN o.attempts - 1 ELSE o.attempts END,
      next_attempt_at = CASE WHEN v.status = 'pending'
                             THEN now() + v.delay_ms * interval '1 millisecond'
                             ELSE o.next_attempt_at END,
      last_error      = COALESCE(v.error, o.last_error),
      dispatched_at   = CASE WHEN v.status = 'done' THEN now() ELSE o.dispatched_at END,
      locked_by       = NULL,
      locked_until    = NULL
    FROM unnest(${ids}::uuid[], ${createdAt}::timestamptz[], ${attempts}::int[], ${statuses}::text[],
                ${delays}::bigint[], ${errors}::text[], ${released}::boolean[])
         AS v(id, created_at, attempt, status, delay_ms, error, released)${flag}
    WHERE o.id = v.id
      AND o.created_at = v.created_at
      -- Written so that no index can serve it: each row is found through the primary key.
      -- As a plain "status = 'processing'", never-analyzed statistics made the planner AND a
      -- bitmap of every 'processing' entry of the dispatch index (dead ones included) into
      -- each lookup: completions slowed with every batch (docs/adr/0006-backlog-proof-claim.md).
      AND (o.status = 'processing') IS TRUE
      AND o.locked_by = ${workerId}
      AND o.attempts = v.attempt
    RETURNING o.id${keys}`;
}

export interface RescueResult {
  requeued: number;
  deadLettered: number;
}

/** The prefix of the last_error the rescuer writes (matched to spot a repeated expiry). */
export const LEASE_EXPIRED_PREFIX = 'lease expired: ';

/**
 * Returns events whose lease expired (their worker died or hung) to pending, or
 * dead-letters them when the expired attempt was their last: an event that keeps
 * killing workers must not loop forever. "Last" follows the retry horizon (ADR 0007):
 * at maxAttempts or more, an event is dead-lettered if it is past the horizon or its
 * previous attempt had also ended in an expired lease; an event that reached many
 * attempts during a sink outage is not dead-lettered by one worker crash.
 */
export async function rescueExpiredLeases(
  db: Kysely<Database>,
  args: { limit: number; maxAttempts: number; retryHorizonMs: number; skipKeyOnDead?: (eventType: string) => boolean },
): Promise<RescueResult> {
  // One transaction: a keyed event dead-lettered here under a route whose ordering says skip
  // never leaves its key blocked.
  return db.transaction().execute(async (trx) => {
    const r = await rescueStatement(trx, args);
    await skipDeadHeads(
      trx,
      r.rows.filter((row) => row.status === 'dead' && row.ordering_key !== null && args.skipKeyOnDead?.(row.event_type)).map((row) => row.id),
      'route ordering.onDeadHead = skip',
    );
    const deadLettered = r.rows.filter((row) => row.status === 'dead').length;
    return { requeued: r.rows.length - deadLettered, deadLettered };
  });
}

async function rescueStatement(db: Kysely<Database>, args: { limit: number; maxAttempts: number; retryHorizonMs: number }) {
  const rows = await db
    .with('expired', (qc) => dueRows(qc, 'processing', args.limit))
    .updateTable('capacity_outbox as o')
    .from('expired')
    .set((eb) => ({
      status: sql<OutboxStatus>`CASE WHEN o.attempts >= ${args.maxAttempts}
                                      AND (o.created_at <= now() - ${args.retryHorizonMs} * interval '1 millisecond'
                                           OR starts_with(coalesce(o.last_error, ''), ${LEASE_EXPIRED_PREFIX}))
                                     THEN 'dead' ELSE 'pending' END`,
      last_error: sql<string>`${LEASE_EXPIRED_PREFIX} || 'worker ' || coalesce(o.locked_by, '?') || ' did not finish attempt ' || o.attempts`,
      next_attempt_at: sql<Date>`now()`,
      locked_by: null,
      locked_until: null,
    }))
    .whereRef('o.id', '=', 'expired.id')
    .whereRef('o.created_at', '=', 'expired.created_at')
    .returning(['o.id', 'o.status', 'o.event_type', 'o.ordering_key'])
    .execute();
  return { rows };
}
