// 1. Claim latency on capacity_outbox holding N rows over six monthly partitions, with the
//    dedupe triggers and RLS as deployed (worker role, app_background), in the three
//    statistics states of issue 9: never analyzed (99% done, 1% due); analyzed in that state
//    and then 300k pending events added; fresh (analyzed again). The plan the claim function
//    executes is read through auto_explain, with the index entries its walk read.
//    Beside each state, the floor in the same run: the bare claim of the first 100 due rows
//    (the walk, the row locks and the update, as the owner: no fair lane, no key release, no
//    RLS, no payload check; the product's head lane takes about 75 of the same rows, its fair
//    lane 25 from five tenants) and the commit of such a claim (the WAL flush a committed claim
//    waits for). The target's limit on this machine is read from these, not argued.
import pg from 'pg';
import { createKysely, createPool } from '../../src/db/pool.ts';
import { claimBatch, claimStatement, completeBatch } from '../../src/db/queries/outbox.ts';
import { ClaimCursor } from '../../src/dispatch/claim-cursor.ts';
import { fairLane } from '../../src/dispatch/dispatcher.ts';
import { explainNested, planShape, walk } from '../../test/support/explain.ts';
import { createBenchDb, ensureHistory, partitionsOf, quantile, round } from '../lib.ts';

export type StatsState = 'never analyzed' | 'analyzed at 99% done, then 300k pending added' | 'fresh';

export interface ClaimLatencyResult {
  rows: number;
  state: StatsState;
  due: number;
  seedSeconds: number;
  p50Ms: number;
  p99Ms: number;
  plan: string;
  /** Index entries all of the claim's statements returned or filtered (a few times the batch of 100: fair lane, head lane, key release). */
  indexRowsRead: number;
  hasSortOrBitmap: boolean;
  /**
   * The same claim as the worker makes it: committed, from the worker's claim cursor and
   * tenant cursor, each batch then completed as done (not timed). Fewer samples where the due
   * set is small (it is consumed).
   */
  committed: { samples: number; p50Ms: number; p99Ms: number };
  /** The bare claim of the first 100 due rows, rolled back, sampled alternately with the claim. */
  bare: { p50Ms: number; p99Ms: number };
  /** COMMIT of a bare claim of 100 due rows (each then put back, untimed). */
  commit: { samples: number; p50Ms: number; p99Ms: number };
}

// The floor: what recording a claim of 100 rows costs with nothing of the product around it.
// Run as the owner under the claim function's own planner settings (read from its definition,
// so the two cannot drift apart); the key-release trigger stands aside (the flag the claim
// itself sets), so no key is freed.
const CLAIM_SETTINGS = `SELECT c.setting FROM pg_proc p, unnest(p.proconfig) AS c(setting)
  WHERE p.oid = 'outbox_dispatcher.claim_batch(text, integer, integer, integer, timestamptz, uuid, integer, integer, integer)'::regprocedure
    AND c.setting NOT LIKE 'search_path=%'`;
const BARE_CLAIM = `WITH head AS (
    SELECT d.id, d.created_at, d.next_attempt_at FROM capacity_outbox d
    WHERE d.status = 'pending' AND d.next_attempt_at <= now()
    ORDER BY d.next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED)
  UPDATE capacity_outbox o SET status = 'processing', attempts = o.attempts + 1, locked_by = 'bench-bare',
         locked_until = now() + interval '30 s', next_attempt_at = now() + interval '30 s'
  FROM head WHERE o.id = head.id AND o.created_at = head.created_at
  RETURNING o.id, o.created_at::text AS created_at_key, head.next_attempt_at::text AS due_key, o.restaurant_id, o.event_type, o.payload,
            o.dedupe_key, o.idempotency_key, o.headers, o.attempts, o.ordering_key, o.ordering_seq`;
// Puts a committed bare claim back as it was (the reactivation trigger finds the key still held
// by the same event). Timestamps go back as text: a JavaScript Date would drop the microseconds.
const BARE_UNDO = `UPDATE capacity_outbox o SET status = 'pending', attempts = o.attempts - 1, locked_by = NULL,
         locked_until = NULL, next_attempt_at = v.due
  FROM unnest($1::uuid[], $2::timestamptz[], $3::timestamptz[]) AS v(id, created_at, due)
  WHERE o.id = v.id AND o.created_at = v.created_at AND o.locked_by = 'bench-bare'`;

const BATCH = 100;

/** p50 and p99 of `xs` in ms (sorts `xs`). */
function timed(xs: number[]): { p50Ms: number; p99Ms: number } {
  xs.sort((a, b) => a - b);
  return { p50Ms: round(quantile(xs, 0.5), 2), p99Ms: round(quantile(xs, 0.99), 2) };
}

export async function claimLatency(rootUrl: string, rows: number, iterations: number, log: (s: string) => void): Promise<ClaimLatencyResult[]> {
  const db = await createBenchDb(rootUrl, `claim${rows}`);
  try {
    await ensureHistory(db.admin, 5);
    for (const p of await partitionsOf(db.admin)) await db.admin.query(`ALTER TABLE ${p} SET (autovacuum_enabled = off)`);
    const t0 = performance.now();
    const chunk = 1_000_000;
    for (let from = 1; from <= rows; from += chunk) {
      const to = Math.min(rows, from + chunk - 1);
      // 99% done history, 1% due pending (keyed, so the dedupe key table is populated too).
      await db.admin.query(
        `INSERT INTO capacity_outbox (restaurant_id, event_type, payload, status, created_at, next_attempt_at, dedupe_key, dispatched_at, attempts)
         SELECT ('00000000-0000-4000-8000-' || lpad((g % 1000)::text, 12, '0'))::uuid, 'bench.e' || (g % 8), jsonb_build_object('g', g),
                CASE WHEN g % 100 = 0 THEN 'pending' ELSE 'done' END,
                now() - ((g::bigint * 5 * 30 * 24 * 3600 / $3) * interval '1 second'),
                now() - (g % 600) * interval '1 second',
                CASE WHEN g % 100 = 0 THEN 'k' || g END,
                CASE WHEN g % 100 = 0 THEN NULL ELSE now() END,
                CASE WHEN g % 100 = 0 THEN 0 ELSE 1 END
         FROM generate_series($1::int, $2::int) g`,
        [from, to, rows],
      );
      log(`  seeded ${to.toLocaleString()} / ${rows.toLocaleString()} rows (${Math.round((performance.now() - t0) / 1000)} s)`);
    }
    const seedSeconds = round((performance.now() - t0) / 1000);

    const kysely = createKysely(createPool({ connectionString: db.workerUrl, max: 1, applicationName: 'bench' }));
    // The claim as a worker with default settings makes it: the fair lane takes a quarter of the
    // batch tenant by tenant (ADR 0012), the head lane the rest.
    const fair = fairLane(BATCH, Number(process.env.BENCH_CLAIM_FAIR_PERCENT ?? 25));
    const claimArgs = {
      workerId: 'bench', limit: BATCH, leaseMs: 30_000, maxPayloadBytes: 1_048_576,
      fairRows: fair.rows, fairPerTenant: fair.perTenant, fairTenants: fair.tenants,
    };
    const q = claimStatement(claimArgs).compile(kysely);

    // Committed claims as the worker's loop makes them, each batch completed afterwards. This
    // consumes the due set, so it runs after the rolled-back samples of each state.
    const committedClaims = async (max: number) => {
      const cursor = new ClaimCursor({ headScanIntervalMs: 1000, slackMs: 1000 });
      let tenantAfter: string | null = null;
      const samples: number[] = [];
      for (let i = 0; i < max + 20; i++) {
        const after = cursor.next();
        const s = performance.now();
        const rows = await claimBatch(kysely, { ...claimArgs, after, tenantAfter });
        const e = performance.now() - s;
        if (rows.length < BATCH) break;
        if (i >= 20) samples.push(e);
        cursor.advance(rows.filter((r) => !r.fair).map((r) => r.due_at), after);
        tenantAfter = rows[0]!.tenant_cursor;
        await completeBatch(kysely, 'bench', rows.map((r) => ({ id: r.id, createdAtKey: r.created_at_key, attempt: r.attempts, outcome: { kind: 'done' as const } })));
      }
      return { samples: samples.length, ...timed(samples) };
    };
    const client = new pg.Client({ connectionString: db.workerUrl, options: '-c role=app_background' });
    await client.connect();
    const owner = new pg.Client({ connectionString: db.adminUrl });
    await owner.connect();
    const settings = (await owner.query<{ setting: string }>(CLAIM_SETTINGS)).rows.map((r) => r.setting);
    if (!settings.includes('enable_sort=off')) throw new Error(`unexpected claim_batch settings: ${settings.join(', ')}`);
    const bareSettings = settings.map((kv) => kv.split('='))
      .map(([k, v]) => `SET LOCAL ${k} = ${v}`)
      .concat('SET LOCAL outbox_dispatcher.claim_frees_keys = on').join('; ');
    const bareClaim = async () => {
      await owner.query('BEGIN');
      await owner.query(bareSettings);
      const s = performance.now();
      // Prepared once, as the claim function's statements are (plpgsql caches their plans).
      const r = await owner.query({ name: 'bench-bare-claim', text: BARE_CLAIM, values: [BATCH] });
      return { rows: r.rows as { id: string; created_at_key: string; due_key: string }[], ms: performance.now() - s };
    };
    const measure = async (state: StatsState): Promise<ClaimLatencyResult> => {
      const samples: number[] = [];
      const bareSamples: number[] = [];
      // Each claim is rolled back, so every sample claims the same head of the due range. This
      // overstates the tail a little: every rolled-back claim (the bare ones too, so twice as
      // many as before the floor was measured) leaves a dead primary-key entry beside each
      // claimed row's. Committing instead (and not passing the worker's claim cursor) times the
      // opposite artifact, a growing run of dead entries at the head.
      for (let i = 0; i < iterations + 20; i++) {
        await client.query('BEGIN');
        const s = performance.now();
        const r = await client.query(q.sql, q.parameters as unknown[]);
        const e = performance.now() - s;
        await client.query('ROLLBACK');
        if (r.rowCount !== BATCH) throw new Error(`claim returned ${r.rowCount} rows`);
        if (i >= 20) samples.push(e); // first 20 warm the caches
        // The floor, on the head of the due range, alternating with the claim.
        const b = await bareClaim();
        await owner.query('ROLLBACK');
        if (b.rows.length !== BATCH) throw new Error(`bare claim returned ${b.rows.length} rows`);
        if (i >= 20) bareSamples.push(b.ms);
      }
      const plans = await explainNested(db.adminUrl, 'app_background', q.sql, q.parameters);
      const plan = plans.find((p) => /WITH head AS/.test(p.queryText))!.plan;
      // Every statement the claim ran (fair lane, head lane, key release): the index entries
      // they returned or filtered, and whether any of them sorted or used a bitmap.
      let indexRowsRead = 0;
      let hasSortOrBitmap = false;
      for (const p of plans) {
        walk(p.plan, (n) => {
          if (/Sort|Bitmap/.test(n['Node Type'])) hasSortOrBitmap = true;
          if (n['Node Type'] === 'Seq Scan' && /^capacity_outbox/.test(n['Relation Name'] ?? '')) hasSortOrBitmap = true;
          if (n['Index Name']) indexRowsRead += (n['Actual Rows'] ?? 0) * (n['Actual Loops'] ?? 1) + (n['Rows Removed by Filter'] ?? 0);
        });
      }
      const due = Number((await db.admin.query("SELECT count(*) AS n FROM capacity_outbox WHERE status = 'pending'")).rows[0].n);
      // The WAL flush a committed claim waits for: commit a bare claim, then put it back. After
      // the rolled-back samples and the plans, before the committed method (which may consume
      // every due event of a small state); the dead row versions it leaves precede only that.
      const commitSamples: number[] = [];
      for (let i = 0; i < iterations + 20; i++) {
        const b = await bareClaim();
        const s = performance.now();
        await owner.query('COMMIT');
        const e = performance.now() - s;
        const undone = await owner.query(BARE_UNDO, [b.rows.map((x) => x.id), b.rows.map((x) => x.created_at_key), b.rows.map((x) => x.due_key)]);
        if (b.rows.length !== BATCH || undone.rowCount !== BATCH) throw new Error(`bare claim of ${b.rows.length} rows, ${undone.rowCount} put back`);
        if (i >= 20) commitSamples.push(e);
      }
      // At most half of the due events, so the state keeps its backlog.
      const committed = await committedClaims(Math.min(iterations, Math.floor(due / BATCH / 2)));
      const claim = timed(samples);
      const bare = timed(bareSamples);
      const commit = { samples: commitSamples.length, ...timed(commitSamples) };
      log(`  ${state}: p50 ${claim.p50Ms} ms, p99 ${claim.p99Ms} ms, ${indexRowsRead} index rows read; committed with the cursor: ${JSON.stringify(committed)}; floor: bare claim ${JSON.stringify(bare)}, commit ${JSON.stringify(commit)}`);
      return {
        rows,
        state,
        due,
        seedSeconds,
        ...claim,
        plan: `${planShape(plan)} (+ ${plans.length - 1} fair-lane and key-release statements)`,
        indexRowsRead,
        hasSortOrBitmap,
        committed,
        bare,
        commit,
      };
    };
    try {
      const out: ClaimLatencyResult[] = [];
      out.push(await measure('never analyzed'));
      await db.admin.query('ANALYZE capacity_outbox');
      await db.admin.query(
        `INSERT INTO capacity_outbox (restaurant_id, event_type, payload, next_attempt_at, dedupe_key)
         SELECT ('00000000-0000-4000-8000-' || lpad((g % 20)::text, 12, '0'))::uuid, 'bench.burst', jsonb_build_object('g', g),
                now() - interval '10 minutes' + g * interval '1 ms', 'burst-' || g
         FROM generate_series(1, 300000) g`,
      );
      out.push(await measure('analyzed at 99% done, then 300k pending added'));
      await db.admin.query('ANALYZE capacity_outbox');
      out.push(await measure('fresh'));
      return out;
    } finally {
      await client.end();
      await owner.end();
      await kysely.destroy();
    }
  } finally {
    await db.drop();
  }
}
