import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { listStatement, type ListQuery } from '../src/db/queries/event-lookup.ts';
import { explainNested, walk, type PlanNode } from './support/explain.ts';
import { createTestDatabase, type TestDatabase } from './support/db.ts';

// `events list` must stay cheap on a table of ten million rows (issue 13). Such a table is
// mostly 'done' events; what on-call looks for (pending, processing, dead) is a small part of
// it. A 10M-row table is not built here: the property is stated in rows instead. The table
// holds DONE settled rows and ACTIVE unsettled ones (1 : 100) and is ANALYZEd, so the planner
// sees the proportions of a real outbox; for each common filter the plan the statement really
// executes (auto_explain, as the daemon's role) must read capacity_outbox through an index
// and examine at most the unsettled rows, never the settled bulk: that bound does not grow
// with the table. 'done' needs a time window, and the window prunes to its partitions.

const DONE = 60_000;
const ACTIVE = 600;
const T = '00000000-0000-4000-8000-00000000000a';
let db: TestDatabase;

beforeAll(async () => {
  db = await createTestDatabase();
  // The settled bulk over 20 tenants and several types, this month (one partition).
  await db.query(
    `INSERT INTO capacity_outbox (restaurant_id, event_type, payload, status, attempts, created_at, next_attempt_at, dispatched_at)
     SELECT ('00000000-0000-4000-8000-' || lpad((g % 20)::text, 12, '0'))::uuid, (ARRAY['booking.created','booking.cancelled','table.held'])[1 + g % 3],
            '{}', 'done', 1, date_trunc('month', now()) + (g % 86400) * interval '1 second', now(), now()
     FROM generate_series(1, $1::int) g`,
    [DONE],
  );
  // The unsettled part: dead with errors, pending (some keyed), a few processing.
  await db.query(
    `INSERT INTO capacity_outbox (restaurant_id, event_type, payload, status, attempts, created_at, next_attempt_at, last_error, ordering_key)
     SELECT ('00000000-0000-4000-8000-' || lpad((g % 20)::text, 12, '0'))::uuid, (ARRAY['booking.created','booking.cancelled','table.held'])[1 + g % 3],
            '{}', (ARRAY['dead','pending','pending','processing'])[1 + g % 4], 3, date_trunc('month', now()) + (g % 86400) * interval '1 second',
            now() + interval '1 minute', CASE WHEN g % 4 = 0 THEN 'HTTP 503 from receiver ' || g END, NULL
     FROM generate_series(1, $1::int) g`,
    [ACTIVE],
  );
  await db.query('ANALYZE capacity_outbox');
}, 120_000);
afterAll(async () => {
  await db.drop();
});

interface Read {
  /** Rows produced or filtered out by the scans of capacity_outbox partitions. */
  examined: number;
  scans: string[];
  /** Sequential scans that examined a row (an empty partition's costs nothing and is allowed). */
  fullReads: string[];
  partitions: Set<string>;
}

async function explainList(q: Partial<ListQuery>): Promise<Read> {
  const compiled = listStatement(db.workerDb(), { statuses: ['pending', 'processing', 'dead'], filter: {}, limit: 50, ...q }).compile();
  const plans = await explainNested(db.adminUrl, 'app_background', compiled.sql, compiled.parameters);
  const plan = plans.find((p) => /from "capacity_outbox"/i.test(p.queryText));
  expect(plan, 'the list statement ran').toBeDefined();
  const read: Read = { examined: 0, scans: [], fullReads: [], partitions: new Set() };
  walk(plan!.plan as PlanNode, (n) => {
    const rel = n['Relation Name'] ?? '';
    if (!/^capacity_outbox/.test(rel)) return;
    read.partitions.add(rel);
    read.scans.push(`${n['Node Type']}${n['Index Name'] ? ` (${n['Index Name']})` : ''}`);
    const examined = (n['Actual Rows'] ?? 0) * (n['Actual Loops'] ?? 1) + (n['Rows Removed by Filter'] ?? 0) + ((n as { 'Rows Removed by Index Recheck'?: number })['Rows Removed by Index Recheck'] ?? 0);
    read.examined += examined;
    if (n['Node Type'] === 'Seq Scan' && examined > 0) read.fullReads.push(`Seq Scan on ${rel} (${examined} rows)`);
  });
  return read;
}

describe('events list reads an index, and at most the unsettled rows, for the common filters', () => {
  const cases: [string, Partial<ListQuery>][] = [
    ['--status dead --tenant T --type booking.*', { statuses: ['dead'], filter: { tenant: T, types: ['booking.*'] } }],
    ['(default statuses) --tenant T', { filter: { tenant: T } }],
    ['(default statuses) --error-contains 503', { filter: { errorContains: '503' } }],
    ['--status pending --ordering-key k-1', { statuses: ['pending'], filter: { orderingKey: 'k-1' } }],
    ['--status dead --since --until (one day)', { statuses: ['dead'], filter: { since: new Date(Date.now() - 86_400_000), until: new Date(Date.now() + 86_400_000) } }],
  ];
  it.each(cases)('%s', async (_name, q) => {
    const read = await explainList(q);
    expect(read.fullReads, read.scans.join(', ')).toEqual([]);
    expect(read.scans.some((s) => /Index|Bitmap/.test(s)), read.scans.join(', ')).toBe(true);
    expect(read.examined, `${read.scans.join(', ')}: rows examined`).toBeLessThanOrEqual(ACTIVE);
  });

  it("'done' within a month's window touches only that month's partition", async () => {
    const start = new Date(Date.UTC(new Date().getUTCFullYear(), new Date().getUTCMonth(), 1));
    const end = new Date(Date.UTC(start.getUTCFullYear(), start.getUTCMonth() + 1, 1));
    const read = await explainList({ statuses: ['done'], filter: { since: start, until: end } });
    expect([...read.partitions]).toHaveLength(1);
    expect([...read.partitions][0]).toMatch(/^capacity_outbox_p\d{4}_\d\d$/);
  });
});
