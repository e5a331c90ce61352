// 1. Claim-query latency on capacity_outbox holding N rows, 1% due, spread over six monthly
//    partitions, with the dedupe triggers and RLS as deployed (worker role, app_background).
import pg from 'pg';
import { createKysely, createPool } from '../../src/db/pool.ts';
import { claimStatement } from '../../src/db/queries/outbox.ts';
import { createBenchDb, ensureHistory, quantile, round } from '../lib.ts';

export interface ClaimLatencyResult {
  rows: number;
  due: number;
  seedSeconds: number;
  p50Ms: number;
  p99Ms: number;
  plan: string;
  planExecutionMs: number;
}

function planShape(node: Record<string, unknown>, depth = 0, out: string[] = []): string[] {
  const label = [node['Node Type'], node['Index Name'] ? `(${node['Index Name']})` : ''].filter(Boolean).join(' ');
  if (!['Result', 'CTE Scan'].includes(String(node['Node Type'])) || depth < 2) out.push(label);
  for (const child of (node.Plans as Record<string, unknown>[] | undefined) ?? []) planShape(child, depth + 1, out);
  return out;
}

export async function claimLatency(rootUrl: string, rows: number, iterations: number, log: (s: string) => void): Promise<ClaimLatencyResult> {
  const db = await createBenchDb(rootUrl, `claim${rows}`);
  try {
    await ensureHistory(db.admin, 5);
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
      log(`  seeded ${to.toLocaleString()} / ${rows.toLocaleString()} rows`);
    }
    await db.admin.query('VACUUM ANALYZE capacity_outbox');
    const seedSeconds = (performance.now() - t0) / 1000;

    const kysely = createKysely(createPool({ connectionString: db.workerUrl, max: 1, applicationName: 'bench' }));
    const q = claimStatement({ workerId: 'bench', limit: 100, leaseMs: 30_000, maxPayloadBytes: 1_048_576 }).compile(kysely);
    await kysely.destroy();
    const client = new pg.Client({ connectionString: db.workerUrl, options: '-c role=app_background' });
    await client.connect();
    const samples: number[] = [];
    try {
      for (let i = 0; i < iterations + 20; i++) {
        await client.query('BEGIN');
        const s = performance.now();
        const r = await client.query(q.sql, q.parameters as unknown[]);
        const e = performance.now() - s;
        await client.query('ROLLBACK');
        if (r.rowCount !== 100) throw new Error(`claim returned ${r.rowCount} rows`);
        if (i >= 20) samples.push(e); // first 20 warm the caches
      }
      await client.query('BEGIN');
      const explain = await client.query(`EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) ${q.sql}`, q.parameters as unknown[]);
      await client.query('ROLLBACK');
      const plan = (explain.rows[0]['QUERY PLAN'] as { Plan: Record<string, unknown>; 'Execution Time': number }[])[0]!;
      samples.sort((a, b) => a - b);
      return {
        rows,
        due: rows / 100,
        seedSeconds: round(seedSeconds),
        p50Ms: round(quantile(samples, 0.5), 2),
        p99Ms: round(quantile(samples, 0.99), 2),
        plan: [...new Set(planShape(plan.Plan))].join(' > '),
        planExecutionMs: round(plan['Execution Time'], 2),
      };
    } finally {
      await client.end();
    }
  } finally {
    await db.drop();
  }
}
