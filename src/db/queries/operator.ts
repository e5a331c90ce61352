import { sql, type Expression, type ExpressionBuilder, type Kysely, type SqlBool, type UpdateObject } from 'kysely';
import type { Database, OutboxStatus } from '../schema.ts';
import { notify, OUTBOX_CHANNEL } from './notify.ts';
import { safeText } from '../../domain/safe-text.ts';

// Queries behind the on-call CLI (events stats, events replay). They use the
// dispatch index (status, next_attempt_at) and never scan 'done' rows unless asked.

export interface EventFilter {
  /** Event type patterns; `*` matches any run of characters. */
  types?: string[];
  tenant?: string;
  /** created_at >= since */
  since?: Date;
  /** created_at < until */
  until?: Date;
  ids?: string[];
  /** last_error contains this text (case-insensitive). */
  errorContains?: string;
  orderingKey?: string;
}

/** `booking.*` -> `booking.%`, with LIKE's own wildcards escaped. */
export function patternToLike(pattern: string): string {
  return pattern.replace(/[\\%_]/g, '\\$&').replace(/\*/g, '%');
}

/** Text searched for literally inside a LIKE pattern. */
export function likeContains(text: string): string {
  return `%${text.replace(/[\\%_]/g, '\\$&')}%`;
}

/** The WHERE of every filtered operator command (events stats, list, replay). */
export function filterExpr(eb: ExpressionBuilder<Database, 'capacity_outbox'>, f: EventFilter): Expression<SqlBool> {
  const parts: Expression<SqlBool>[] = [];
  if (f.types?.length) parts.push(eb.or(f.types.map((t) => eb('event_type', 'like', patternToLike(t)))));
  if (f.tenant) parts.push(eb('restaurant_id', '=', f.tenant));
  if (f.since) parts.push(eb('created_at', '>=', f.since));
  if (f.until) parts.push(eb('created_at', '<', f.until));
  if (f.ids?.length) parts.push(eb('id', 'in', f.ids));
  if (f.errorContains !== undefined) parts.push(eb('last_error', 'ilike', likeContains(f.errorContains)));
  if (f.orderingKey !== undefined) parts.push(eb('ordering_key', '=', f.orderingKey));
  return eb.and(parts);
}

export interface StatsRow {
  status: OutboxStatus;
  event_type: string;
  count: number;
  oldest_created_at: Date | null;
}

export interface EventStats {
  rows: StatsRow[];
  /** Seconds the oldest due pending event has waited past next_attempt_at (lag). */
  oldestDueAgeSeconds: number | null;
}

export async function eventStats(db: Kysely<Database>, filter: EventFilter, opts: { includeDone?: boolean } = {}): Promise<EventStats> {
  const statuses: OutboxStatus[] = opts.includeDone ? ['pending', 'processing', 'dead', 'done'] : ['pending', 'processing', 'dead'];
  const rows = await db
    .selectFrom('capacity_outbox')
    .select((eb) => ['status', 'event_type', eb.fn.countAll<string>().as('count'), eb.fn.min('created_at').as('oldest_created_at')])
    .where('status', 'in', statuses)
    .where((eb) => filterExpr(eb, filter))
    .groupBy(['status', 'event_type'])
    .orderBy('status')
    .orderBy('event_type')
    .execute();
  const lag = await db
    .selectFrom('capacity_outbox')
    .select(sql<number>`extract(epoch FROM now() - next_attempt_at)::float8`.as('age'))
    .where('status', '=', 'pending')
    .where('next_attempt_at', '<=', sql<Date>`now()`)
    .where((eb) => filterExpr(eb, filter))
    .orderBy('next_attempt_at')
    .limit(1)
    .executeTakeFirst();
  return {
    rows: rows.map((r) => ({ ...r, count: Number(r.count) })),
    oldestDueAgeSeconds: lag ? Number(lag.age) : null,
  };
}

export interface DeadEventRow {
  id: string;
  event_type: string;
  restaurant_id: string;
  created_at: Date;
  attempts: number;
  last_error: string | null;
}

/** The dead events a replay with this filter would touch (first `limit`), and how many in all. */
export async function previewReplay(
  db: Kysely<Database>,
  filter: EventFilter,
  limit: number,
): Promise<{ total: number; sample: DeadEventRow[] }> {
  const base = db
    .selectFrom('capacity_outbox')
    .where('status', '=', 'dead')
    .where((eb) => filterExpr(eb, filter));
  const { total } = await base.select((eb) => eb.fn.countAll<string>().as('total')).executeTakeFirstOrThrow();
  const sample = await base
    .select(['id', 'event_type', 'restaurant_id', 'created_at', 'attempts', 'last_error'])
    .orderBy('created_at')
    .orderBy('id')
    .limit(limit)
    .execute();
  return { total: Number(total), sample };
}

export interface ReplayResult {
  /** Dead events moved back to pending with a fresh attempt budget. */
  replayed: number;
  /** Left dead because an active event already holds their dedupe key. */
  skippedDuplicateKey: number;
}

/**
 * Moves matching dead events back to pending, in keyset-ordered batches so a large
 * replay never holds many row locks at once. The dedupe trigger refuses (skips)
 * an event whose key an active event holds; those are counted, not lost.
 */
export async function replayDead(
  db: Kysely<Database>,
  filter: EventFilter,
  opts: { batchSize?: number; max?: number; auditId?: string } = {},
): Promise<ReplayResult> {
  const r = await changeDead(db, filter, opts, { status: 'pending', attempts: 0, next_attempt_at: sql<Date>`now()`, locked_by: null, locked_until: null });
  // Wakes every dispatcher as a producer's insert does.
  if (r.changed > 0) await notify(db, OUTBOX_CHANNEL, '');
  return { replayed: r.changed, skippedDuplicateKey: r.seen - r.changed };
}

/**
 * Gives up on matching dead events: they become 'done' with dispatched_at left NULL and
 * last_error prefixed "abandoned by <login>: <reason>", so a partition past retention can be
 * retired and the event stays explainable (`events show`). A dead head of an ordering key
 * marked done lets the key move on (the settle trigger, migration 0010).
 */
export async function abandonDead(
  db: Kysely<Database>,
  filter: EventFilter,
  reason: string,
  opts: { batchSize?: number; max?: number; auditId?: string } = {},
): Promise<{ abandoned: number }> {
  const note = safeText(reason);
  const r = await changeDead(db, filter, opts, {
    status: 'done',
    last_error: sql<string>`left('abandoned by ' || session_user || ': ' || ${note}::text || '; ' || coalesce(o.last_error, ''), 4000)`,
  });
  return { abandoned: r.changed };
}

/**
 * Applies `set` to matching dead events in keyset-ordered batches (`max` in all), each batch one
 * statement that also adds its count to the audit entry. `seen` counts the dead events a batch
 * locked; `changed` those the update changed (a trigger may skip some: replay's dedupe rule).
 */
async function changeDead(
  db: Kysely<Database>,
  filter: EventFilter,
  opts: { batchSize?: number; max?: number; auditId?: string },
  set: UpdateObject<Database & { o: Database['capacity_outbox'] }, 'o'>,
): Promise<{ seen: number; changed: number }> {
  const batchSize = opts.batchSize ?? 500;
  const max = opts.max ?? Number.POSITIVE_INFINITY;
  const total = { seen: 0, changed: 0 };
  let cursor: { createdAt: string; id: string } | undefined;
  while (total.seen < max) {
    const take = Math.min(batchSize, max - total.seen);
    const after = cursor;
    const row = await db
      .with('candidates', (qb) =>
        qb
          .selectFrom('capacity_outbox')
          .select(['id', 'created_at'])
          .where('status', '=', 'dead')
          .where((eb) => filterExpr(eb, filter))
          .$if(after !== undefined, (q) =>
            q.where((eb) => eb(eb.refTuple('created_at', 'id'), '>', eb.tuple(sql<Date>`${after!.createdAt}::timestamptz`, after!.id))),
          )
          .orderBy('created_at')
          .orderBy('id')
          .limit(take)
          .forUpdate(),
      )
      .with('changed', (qb) =>
        qb
          .updateTable('capacity_outbox as o')
          .from('candidates as c')
          .set(set)
          .whereRef('o.id', '=', 'c.id')
          .whereRef('o.created_at', '=', 'c.created_at')
          .returning('o.id'),
      )
      .selectNoFrom((eb) => [
        eb.selectFrom('candidates').select(eb.fn.countAll<string>().as('n')).as('seen'),
        eb.selectFrom('changed').select(eb.fn.countAll<string>().as('n')).as('changed'),
        eb
          .selectFrom('candidates')
          .select(sql<string>`created_at::text`.as('k'))
          .orderBy('created_at', 'desc')
          .orderBy('id', 'desc')
          .limit(1)
          .as('last_created_at'),
        eb.selectFrom('candidates').select('id').orderBy('created_at', 'desc').orderBy('id', 'desc').limit(1).as('last_id'),
        // The audit entry counts each batch in the batch's own statement (same transaction).
        ...(opts.auditId === undefined
          ? []
          : [sql<null>`outbox_dispatcher.operator_audit_add(${opts.auditId}::bigint, (SELECT count(*) FROM changed))`.as('audited')]),
      ])
      .executeTakeFirstOrThrow();
    const seen = Number(row.seen ?? 0);
    total.seen += seen;
    total.changed += Number(row.changed ?? 0);
    if (seen < take || !row.last_id || !row.last_created_at) break;
    cursor = { createdAt: row.last_created_at, id: row.last_id };
  }
  return total;
}
