import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { claimBatch, completionStatement, type ClaimedRow } from '../src/db/queries/outbox.ts';
import { explainNested, planShape, walk, type NestedPlan } from './support/explain.ts';
import { createTestDatabase, keepNeverAnalyzed, type TestDatabase } from './support/db.ts';

// Settling keys must cost what the batch costs, whatever the planner's statistics say and however
// long the table or a key's queue is (migration 0018). A keyed drain once spent over half its time
// here: the batch settle scanned every partition twice per completion batch, and a key's next
// head was found by reading and sorting the key's whole queue.

const HISTORY = 30_000;
const KEYS = 400;
const DEEP = 2_000; // events queued behind the head of one key
let db: TestDatabase;

beforeAll(async () => {
  db = await createTestDatabase();
  await keepNeverAnalyzed(db);
});
afterAll(async () => {
  await db.drop();
});

const tenant = '00000000-0000-4000-8000-000000000001';

async function seed() {
  await db.query('TRUNCATE capacity_outbox');
  await db.query('TRUNCATE outbox_dispatcher.capacity_outbox_ordering_keys, outbox_dispatcher.capacity_outbox_ordering_blocked, outbox_dispatcher.capacity_outbox_ordering_unsettled');
  // Delivered history, keyed like the live events.
  await db.query(
    `INSERT INTO capacity_outbox (restaurant_id, event_type, payload, status, ordering_key, ordering_seq, dispatched_at, attempts)
     SELECT $1::uuid, 'plan.e', '{}', 'done', 'old:' || (g % 1000), g, now(), 1 FROM generate_series(1, $2::int) g`,
    [tenant, HISTORY],
  );
}

/** Live keyed events: KEYS keys with three events each, and one key with DEEP + 1. */
async function addKeyed() {
  await db.query(
    `INSERT INTO capacity_outbox (restaurant_id, event_type, payload, ordering_key)
     SELECT $1::uuid, 'plan.e', '{}', 'k' || (g % $2::int) FROM generate_series(1, $2::int * 3) g ORDER BY g`,
    [tenant, KEYS],
  );
  await db.query(
    `INSERT INTO capacity_outbox (restaurant_id, event_type, payload, ordering_key)
     SELECT $1::uuid, 'plan.e', '{}', 'deep' FROM generate_series(0, $2::int) g ORDER BY g`,
    [tenant, DEEP],
  );
}

/**
 * Claims the due heads and writes the completion of all but the deep key's as the completer does,
 * leaving their keys to settle; the deep key's head stays in flight.
 */
async function completeHeadsUnsettled(): Promise<{ heads: ClaimedRow[]; deep: ClaimedRow }> {
  const worker = db.workerDb();
  const claimed = await claimBatch(worker, { workerId: 'w', limit: 1000, leaseMs: 60_000, maxPayloadBytes: 1_048_576 });
  expect(claimed).toHaveLength(KEYS + 1);
  const heads = claimed.filter((h) => h.ordering_key !== 'deep');
  await worker.transaction().execute(async (trx) => {
    await sql`SELECT set_config('outbox_dispatcher.completion_settles_keys', 'on', true)`.execute(trx);
    await completionStatement('w', heads.map((r) => ({ id: r.id, createdAtKey: r.created_at_key, attempt: r.attempts, outcome: { kind: 'done' as const } }))).execute(trx);
  });
  return { heads, deep: claimed.find((h) => h.ordering_key === 'deep')! };
}

/** What the statements on capacity_outbox read, and any scan or sort that grows with the table or a queue. */
function reads(plans: NestedPlan[]) {
  const bad: string[] = [];
  let entries = 0;
  for (const p of plans) {
    walk(p.plan, (n) => {
      const rel = n['Relation Name'] ?? '';
      if (n['Node Type'] === 'Bitmap Heap Scan') bad.push(`Bitmap Heap Scan in ${planShape(p.plan)}`);
      // A sort of a key's queue (the next head found by sorting every queued event). Sorting the
      // batch's own rows is bounded by the batch (PostgreSQL 16+ plans DISTINCT aggregates so).
      if (['Sort', 'Incremental Sort'].includes(n['Node Type'])) {
        let queue = false;
        walk(n, (m) => (queue ||= /restaurant_id_ordering_key/.test(m['Index Name'] ?? '')));
        if (queue) bad.push(`${n['Node Type']} of a key's queue in ${planShape(p.plan)}`);
      }
      if (n['Node Type'] === 'Seq Scan' && /^capacity_outbox_(p\d{4}_\d{2}|default)$/.test(rel)) bad.push(`Seq Scan on ${rel}`);
      if (/^capacity_outbox_(p\d{4}_\d{2}|default)_/.test(n['Index Name'] ?? '')) {
        entries += (n['Actual Rows'] ?? 0) * (n['Actual Loops'] ?? 1) + (n['Rows Removed by Filter'] ?? 0);
      }
    });
  }
  return { bad, entries };
}

/**
 * The batch settle as the completer calls it (migration 0019: the finished keys, from the
 * completion's RETURNING), or as the previous release's completer did (0017: the events' ids,
 * read again by primary key; kept for rolling upgrades).
 */
function batchSettle(heads: ClaimedRow[], by: 'keys' | 'ids'): [string, unknown[]] {
  if (by === 'ids') {
    return ['SELECT outbox_dispatcher.capacity_outbox_ordering_settle_completed($1::uuid[], $2::timestamptz[])', [heads.map((h) => h.id), heads.map((h) => h.created_at_key)]];
  }
  return [
    'SELECT outbox_dispatcher.capacity_outbox_ordering_settle_keys($1::uuid[], $2::text[], $3::uuid[], $4::timestamptz[])',
    [heads.map((h) => h.restaurant_id), heads.map((h) => h.ordering_key), [], []],
  ];
}

async function checkSettles(by: 'keys' | 'ids' = 'keys') {
  const { heads, deep } = await completeHeadsUnsettled();
  const batch = await explainNested(db.adminUrl, 'app_background', ...batchSettle(heads, by));
  const settled = reads(batch);
  expect(settled.bad).toEqual([]);
  // Per event, by id: its row by primary key (twice); then its key's next head (one entry per
  // partition) and the head's promotion by primary key.
  expect(settled.entries).toBeLessThan((by === 'ids' ? 10 : 7) * heads.length);

  // The row trigger's path (operators, the rescuer, hand-written SQL): the deep key's head.
  const one = await explainNested(db.adminUrl, 'app_background', "UPDATE capacity_outbox SET status = 'done' WHERE id = $1 AND created_at = $2::timestamptz", [deep.id, deep.created_at_key]);
  const single = reads(one);
  expect(one.some((p) => /ORDER BY o\.ordering_seq/.test(p.queryText)), 'the trigger looked up the next head').toBe(true);
  expect(single.bad).toEqual([]);
  expect(single.entries).toBeLessThan(100); // not the 2,000 events queued behind it
}

describe('settling keys reads what the batch needs, in every statistics state', { timeout: 120_000 }, () => {
  it('never analyzed', async () => {
    await seed();
    await addKeyed();
    await checkSettles();
  });

  it('never analyzed, settled by event ids (the previous release, during a rolling upgrade)', async () => {
    await seed();
    await addKeyed();
    await checkSettles('ids');
  });

  it('analyzed while nearly everything was done, then keyed events added', async () => {
    await seed();
    await db.query('ANALYZE capacity_outbox');
    await addKeyed();
    await checkSettles();
  });

  it('fresh statistics', async () => {
    await seed();
    await addKeyed();
    await db.query('ANALYZE capacity_outbox');
    await checkSettles();
  });
});
