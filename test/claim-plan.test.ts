import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { claimBatch, claimStatement, completeBatch, completionStatement, settledCompletionStatement } from '../src/db/queries/outbox.ts';
import { ClaimCursor } from '../src/dispatch/claim-cursor.ts';
import { explainNested, planShape, walk, type NestedPlan, type PlanNode } from './support/explain.ts';
import { createTestDatabase, keepNeverAnalyzed, type TestDatabase } from './support/db.ts';

// The claim must read about `batch` index entries whatever the planner's statistics say
// (docs/adr/0006-backlog-proof-claim.md). Each state below has a large due backlog spread
// over two partitions; the plan the claim really executes is read through auto_explain.

const BATCH = 100;
const BACKLOG = 50_000;
let db: TestDatabase;

beforeAll(async () => {
  db = await createTestDatabase();
  // "Never analyzed" must stay true while the test runs.
  await keepNeverAnalyzed(db);
});
afterAll(async () => {
  await db.drop();
});

/** `n` keyed events, due over the last hour, half of them in the default partition (an old month). */
async function addBacklog(n: number, prefix: string, status = 'pending') {
  await db.query(
    `INSERT INTO capacity_outbox (restaurant_id, event_type, payload, dedupe_key, status, created_at, next_attempt_at)
     SELECT ('00000000-0000-4000-8000-' || lpad((g % 20)::text, 12, '0'))::uuid, 'bench.e', jsonb_build_object('g', g, 'pad', repeat('p', 150)),
            $2 || g, $3,
            CASE WHEN g % 2 = 0 THEN now() ELSE now() - interval '4 months' END,
            now() - interval '1 hour' + (g * (3600000.0 / $1)) * interval '1 millisecond'
     FROM generate_series(1, $1::int) g`,
    [n, prefix, status],
  );
}

async function explainClaim(after: Date | null = null): Promise<PlanNode> {
  const compiled = claimStatement({ workerId: 'w', limit: BATCH, leaseMs: 30_000, maxPayloadBytes: 1_048_576, after }).compile(db.workerDb());
  const plans = await explainNested(db.adminUrl, 'app_background', compiled.sql, compiled.parameters);
  const claim = plans.find((p: NestedPlan) => /skip locked/i.test(p.queryText) && /update/i.test(p.queryText));
  expect(claim, 'the claim statement ran').toBeDefined();
  return claim!.plan;
}

/** Index entries the walk of the due range returned or filtered, and the buffers the walk touched. */
function dueWalk(plan: PlanNode) {
  let rowsRead = 0;
  let buffers = 0;
  const bad: string[] = [];
  walk(plan, (n) => {
    if (['Sort', 'Incremental Sort', 'Bitmap Heap Scan', 'Bitmap Index Scan'].includes(n['Node Type'])) bad.push(n['Node Type']);
    if (n['Node Type'] === 'Seq Scan' && /^capacity_outbox/.test(n['Relation Name'] ?? '')) bad.push(`Seq Scan on ${n['Relation Name']}`);
    if (n['Index Name']?.endsWith('status_next_attempt_at_idx')) {
      rowsRead += (n['Actual Rows'] ?? 0) * (n['Actual Loops'] ?? 1) + (n['Rows Removed by Filter'] ?? 0);
    }
  });
  walk(plan, (n) => {
    if (n['Node Type'] === 'Limit' && buffers === 0) buffers = (n['Shared Hit Blocks'] ?? 0) + (n['Shared Read Blocks'] ?? 0);
  });
  return { rowsRead, buffers, bad, shape: planShape(plan) };
}

function expectBounded(plan: PlanNode) {
  const w = dueWalk(plan);
  expect(w.bad, w.shape).toEqual([]);
  expect(w.shape).toMatch(/Limit > (Result > )?LockRows > Merge Append > Index Scan \(…_status_next_attempt_at_idx\)/);
  // About one batch of index entries (plus one look at each partition), never the backlog.
  expect(w.rowsRead).toBeGreaterThanOrEqual(BATCH);
  expect(w.rowsRead).toBeLessThanOrEqual(BATCH + 10);
  // Locking reads one heap page per row at most; the index walk a few pages.
  expect(w.buffers).toBeLessThan(3 * BATCH + 50);
  return w;
}

// Seeding a large backlog is slow on a loaded machine; the assertions are about plans, not time.
describe('claim plan with a large due backlog', { timeout: 300_000 }, () => {
  it('never analyzed: ordered index walk of about one batch', async () => {
    await addBacklog(BACKLOG, 'a');
    const { rows } = await db.query<{ n: number }>(
      "SELECT count(*)::int AS n FROM pg_stat_user_tables WHERE relname LIKE 'capacity_outbox%' AND (last_analyze IS NOT NULL OR last_autoanalyze IS NOT NULL)",
    );
    expect(rows[0]!.n).toBe(0);
    expectBounded(await explainClaim());
    // Completions find each row through the primary key, never through a bitmap of every
    // 'processing' entry (dead ones included) of the dispatch index.
    const worker = db.workerDb();
    for (let i = 0; i < 20; i++) {
      const claimed = await claimBatch(worker, { workerId: 'w', limit: 500, leaseMs: 60_000, maxPayloadBytes: 1_048_576 });
      await completeBatch(worker, 'w', claimed.map((r) => ({ id: r.id, createdAtKey: r.created_at_key, attempt: r.attempts, outcome: { kind: 'done' as const } })));
    }
    const claimed = await claimBatch(worker, { workerId: 'w', limit: BATCH, leaseMs: 60_000, maxPayloadBytes: 1_048_576 });
    const items = claimed.map((r) => ({ id: r.id, createdAtKey: r.created_at_key, attempt: r.attempts, outcome: { kind: 'done' as const } }));
    // Both forms: the plain UPDATE, and the keyed one with its settle in the same statement
    // (settledCompletionStatement; the settle's own statements are test/ordering-plans' subject).
    for (const q of [completionStatement('w', items).compile(worker), settledCompletionStatement('w', items).compile(worker)]) {
      const plans = await explainNested(db.adminUrl, 'app_background', q.sql, q.parameters);
      const completion = plans.find((p) => /RETURNING o\.id/.test(p.queryText))!;
      const indexes = new Set<string>();
      walk(completion.plan, (n) => {
        if (n['Index Name']) indexes.add(n['Index Name'].replace(/^capacity_outbox_(p\d{4}_\d{2}|default)_/, ''));
      });
      expect([...indexes]).toEqual(['pkey']);
    }
  });

  it('analyzed while nearly everything was done, then a backlog added: same walk', async () => {
    await db.query('TRUNCATE capacity_outbox');
    await db.query('TRUNCATE outbox_dispatcher.capacity_outbox_active_keys');
    await addBacklog(30_000, 'd', 'done');
    await addBacklog(300, 'p');
    await db.query('ANALYZE capacity_outbox');
    await addBacklog(BACKLOG, 'b');
    expectBounded(await explainClaim());
  });

  it('fresh statistics: same walk', async () => {
    await db.query('ANALYZE capacity_outbox');
    expectBounded(await explainClaim());
  });

  it('a walk that starts behind the last claim skips the dead entries a held snapshot keeps at the head', async () => {
    await db.query('TRUNCATE capacity_outbox');
    await db.query('TRUNCATE outbox_dispatcher.capacity_outbox_active_keys');
    await addBacklog(BACKLOG, 'h');
    await db.query('VACUUM ANALYZE capacity_outbox');
    const holder = new pg.Client({ connectionString: db.adminUrl });
    await holder.connect();
    try {
      // A long report: its snapshot keeps every row version claimed from now on alive.
      await holder.query('BEGIN ISOLATION LEVEL REPEATABLE READ');
      await holder.query('SELECT count(*) FROM capacity_outbox_default');
      const worker = db.workerDb();
      const cursor = new ClaimCursor({ headScanIntervalMs: 60_000, slackMs: 1000 });
      let after: Date | null = cursor.next();
      for (let i = 0; i < 30; i++) {
        const rows = await claimBatch(worker, { workerId: 'w', limit: 500, leaseMs: 60_000, maxPayloadBytes: 1_048_576, after });
        cursor.advance(rows.map((r) => r.due_at), after);
        await completeBatch(worker, 'w', rows.map((r) => ({ id: r.id, createdAtKey: r.created_at_key, attempt: r.attempts, outcome: { kind: 'done' as const } })));
        after = cursor.next();
        expect(after).not.toBeNull();
      }
      const fromHead = dueWalk(await explainClaim(null));
      const fromCursor = expectBounded(await explainClaim(after));
      // From the head the walk visits the heap pages of 15,000 dead entries (about 30 rows a
      // page); from the cursor only the slack's worth.
      expect(fromHead.buffers).toBeGreaterThan(500);
      expect(fromHead.buffers).toBeGreaterThan(5 * fromCursor.buffers);
    } finally {
      await holder.query('ROLLBACK').catch(() => undefined);
      await holder.end();
    }
  });
});

describe('functions with pinned plans', () => {
  // Migration 0021: a plan that cannot avoid a disabled method costs over 1e10, far above
  // jit_above_cost, and would be JIT-compiled at every execution (about half a second each).
  it('switch JIT off wherever they switch planner methods off', async () => {
    const { rows } = await db.query<{ fn: string; config: string[] }>(
      `SELECT p.oid::regprocedure::text AS fn, p.proconfig AS config
       FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
       WHERE n.nspname IN ('public', 'outbox_dispatcher')
         AND EXISTS (SELECT 1 FROM unnest(p.proconfig) c WHERE c LIKE 'enable\\_%')`,
    );
    expect(rows.map((r) => r.fn)).toEqual(expect.arrayContaining([
      expect.stringMatching(/^outbox_dispatcher\.claim_batch\(/),
      expect.stringMatching(/^outbox_dispatcher\.capacity_outbox_ordering_settle_keys\(/),
    ]));
    expect(rows.filter((r) => !r.config.includes('jit=off')).map((r) => r.fn)).toEqual([]);
  });
});

describe('claim cursor', () => {
  it('walks from the head first, then behind the last claim, and from the head again every interval', () => {
    let now = 0;
    const c = new ClaimCursor({ headScanIntervalMs: 1000, slackMs: 100, now: () => now });
    expect(c.next()).toBeNull();
    c.advance([new Date(5000), new Date(7000)], null);
    now = 10;
    expect(c.next()).toEqual(new Date(6900));
    c.advance([], new Date(6900)); // nothing new: keeps its place
    now = 20;
    expect(c.next()).toEqual(new Date(6900));
    now = 1000;
    expect(c.next()).toBeNull();
    c.advance([], null); // nothing due from the head: keep walking from the head
    now = 1001;
    expect(c.next()).toBeNull();
  });
});
