import { sql, type Kysely } from 'kysely';
import type { Database, OutboxStatus } from '../schema.ts';
import { filterExpr, type EventFilter } from './operator.ts';

// `events show` and `events list` (docs/adr/0014-sink-pause-and-audit-trail.md, "Finding
// events"). Which index serves what on a large partitioned table:
//   * show: the primary key (id, created_at), one probe per partition (id leads);
//   * list: the statuses an operator looks for (pending, processing, dead) are a small part
//     of the table and are read through the dispatch index (status, next_attempt_at); the
//     other filters are checked on those rows only. 'done' is most of the table: listing it
//     needs a --since window, which prunes the scan to that window's monthly partitions;
//   * a key's position: the partial ordering index (restaurant_id, ordering_key, ordering_seq).

export interface EventDetail {
  id: string;
  restaurant_id: string;
  event_type: string;
  status: OutboxStatus;
  attempts: number;
  dedupe_key: string | null;
  idempotency_key: string | null;
  locked_by: string | null;
  locked_until: Date | null;
  /** null while the event waits for its key or is parked (next_attempt_at is then a marker, not a time). */
  next_attempt_at: Date | null;
  last_error: string | null;
  created_at: Date;
  dispatched_at: Date | null;
  /** The partition the row lives in (tableoid::regclass). */
  partition: string;
  payload_bytes: number;
  headers: unknown;
  ordering_key: string | null;
  ordering_seq: string | null;
  /** Pending behind an earlier event of its ordering key (next_attempt_at = 'infinity'). */
  waiting: boolean;
  /** Given back by a worker because its sink is paused; the sink's name. */
  parked_sink: string | null;
  payload?: unknown;
  key?: KeyPosition;
}

export interface KeyPosition {
  /** Unsettled (pending or processing) events of the key with a smaller seq: delivered first. */
  ahead: number;
  /** Unsettled events of the key behind this one. */
  behind: number;
  /** The dead head blocking the key, if it is blocked. */
  blocked_by: string | null;
  blocked_since: Date | null;
}

/** One event by id, or undefined; with `payload`, its payload too. */
export async function showEvent(db: Kysely<Database>, id: string, opts: { payload?: boolean } = {}): Promise<EventDetail | undefined> {
  const r = await sql<EventDetail & { payload_bytes: string }>`
    SELECT o.id, o.restaurant_id, o.event_type, o.status, o.attempts, o.dedupe_key, o.idempotency_key,
           o.locked_by, o.locked_until,
           CASE WHEN o.next_attempt_at < outbox_dispatcher.sink_parked_horizon() THEN o.next_attempt_at END AS next_attempt_at,
           o.last_error, o.created_at, o.dispatched_at, o.tableoid::regclass::text AS partition,
           octet_length(o.payload::text) AS payload_bytes, o.headers, o.ordering_key, o.ordering_seq::text AS ordering_seq,
           (o.status = 'pending' AND o.next_attempt_at = 'infinity') AS waiting,
           p.sink AS parked_sink
           ${opts.payload ? sql`, o.payload` : sql``}
    FROM capacity_outbox o
    LEFT JOIN outbox_dispatcher.sink_parked p ON p.event_id = o.id AND p.event_created_at = o.created_at
    WHERE o.id = ${id}::uuid`.execute(db);
  const row = r.rows[0];
  if (!row) return undefined;
  const event: EventDetail = { ...row, payload_bytes: Number(row.payload_bytes) };
  if (row.ordering_key !== null && row.ordering_seq !== null) event.key = await keyPosition(db, row.restaurant_id, row.ordering_key, row.ordering_seq);
  return event;
}

async function keyPosition(db: Kysely<Database>, tenant: string, key: string, seq: string): Promise<KeyPosition> {
  const r = await sql<{ ahead: string; behind: string; blocked_by: string | null; blocked_since: Date | null }>`
    SELECT (SELECT count(*) FROM capacity_outbox w
             WHERE w.restaurant_id = ${tenant}::uuid AND w.ordering_key = ${key} AND w.ordering_key IS NOT NULL
               AND w.status IN ('pending', 'processing') AND w.ordering_seq < ${seq}::bigint) AS ahead,
           (SELECT count(*) FROM capacity_outbox w
             WHERE w.restaurant_id = ${tenant}::uuid AND w.ordering_key = ${key} AND w.ordering_key IS NOT NULL
               AND w.status IN ('pending', 'processing') AND w.ordering_seq > ${seq}::bigint) AS behind,
           b.event_id::text AS blocked_by, b.blocked_since
    FROM (SELECT 1) one
    LEFT JOIN outbox_dispatcher.capacity_outbox_ordering_blocked b
      ON b.restaurant_id = ${tenant}::uuid AND b.ordering_key = ${key}`.execute(db);
  const row = r.rows[0]!;
  return { ahead: Number(row.ahead), behind: Number(row.behind), blocked_by: row.blocked_by, blocked_since: row.blocked_since };
}

export interface ListedEvent {
  id: string;
  created_at: Date;
  status: OutboxStatus;
  event_type: string;
  restaurant_id: string;
  attempts: number;
  next_attempt_at: Date | null;
  ordering_key: string | null;
  last_error: string | null;
}

export interface ListQuery {
  statuses: OutboxStatus[];
  filter: EventFilter;
  limit: number;
  /** Continue after this position (the previous page's cursor). */
  after?: ListCursor;
}

/** A keyset position: created_at (as PostgreSQL's text, microseconds kept) and id. */
export interface ListCursor {
  createdAt: string;
  id: string;
}

export interface ListPage {
  events: ListedEvent[];
  /** Where the next page starts; undefined on the last page. */
  next: ListCursor | undefined;
}

/** Newest first, `limit` at a time, keyset-paged on (created_at, id): no OFFSET. */
export async function listEvents(db: Kysely<Database>, q: ListQuery): Promise<ListPage> {
  const rows = await listStatement(db, q).execute();
  const more = rows.length > q.limit;
  const page = rows.slice(0, q.limit);
  const last = page.at(-1);
  return {
    events: page.map(({ cursor_created_at: _c, ...e }) => e),
    next: more && last ? { createdAt: last.cursor_created_at, id: last.id } : undefined,
  };
}

/** The list statement, unexecuted (tests EXPLAIN it). */
export function listStatement(db: Kysely<Database>, q: ListQuery) {
  const after = q.after;
  return db
    .selectFrom('capacity_outbox')
    .select([
      'id',
      'created_at',
      sql<string>`created_at::text`.as('cursor_created_at'),
      'status',
      'event_type',
      'restaurant_id',
      'attempts',
      // Waiting ('infinity') and parked (the parked horizon) are markers, not times.
      sql<Date | null>`CASE WHEN next_attempt_at < outbox_dispatcher.sink_parked_horizon() THEN next_attempt_at END`.as('next_attempt_at'),
      'ordering_key',
      sql<string | null>`left(last_error, 500)`.as('last_error'),
    ])
    .where('status', 'in', q.statuses)
    .where((eb) => filterExpr(eb, q.filter))
    .$if(after !== undefined, (b) =>
      b.where((eb) => eb(eb.refTuple('created_at', 'id'), '<', eb.tuple(sql<Date>`${after!.createdAt}::timestamptz`, sql<string>`${after!.id}::uuid`))),
    )
    .orderBy('created_at', 'desc')
    .orderBy('id', 'desc')
    .limit(q.limit + 1);
}

export function encodeCursor(c: ListCursor): string {
  return Buffer.from(JSON.stringify([c.createdAt, c.id])).toString('base64url');
}

/** undefined when `text` is not a cursor this command printed. */
export function decodeCursor(text: string): ListCursor | undefined {
  try {
    const v = JSON.parse(Buffer.from(text, 'base64url').toString('utf8')) as unknown;
    if (!Array.isArray(v) || v.length !== 2 || typeof v[0] !== 'string' || typeof v[1] !== 'string') return undefined;
    if (!/^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d{1,6})?[+-]\d\d(:\d\d)?$/.test(v[0])) return undefined;
    if (!/^[0-9a-f-]{36}$/i.test(v[1])) return undefined;
    return { createdAt: v[0], id: v[1] };
  } catch {
    return undefined;
  }
}
