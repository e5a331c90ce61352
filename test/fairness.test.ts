import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { claimBatch, claimStatement, type ClaimArgs, type ClaimedRow } from '../src/db/queries/outbox.ts';
import { fairLane, TOP_UP_GAP_MS } from '../src/dispatch/dispatcher.ts';
import { recordingSink, startDaemon } from './support/daemon.ts';
import { explainNested, planShape, walk, type PlanNode } from './support/explain.ts';
import { createTestDatabase, keepNeverAnalyzed, waitFor, type TestDatabase } from './support/db.ts';

// Per-tenant fairness in the claim (docs/adr/0012-tenant-fairness.md): a share of every claim
// is taken tenant by tenant, so one tenant's backlog never delays another tenant's events by
// more than one rotation, and the claim's reads stay bounded by its arguments, whatever the
// number of due rows or of tenants.

const BATCH = 500; // the default OUTBOX_BATCH_SIZE
const FAIR = fairLane(BATCH, 25); // the default OUTBOX_FAIR_SHARE_PERCENT
let db: TestDatabase;

beforeAll(async () => {
  db = await createTestDatabase();
  // Statistics stay as the inserts left them (never analyzed) unless a test analyzes.
  await keepNeverAnalyzed(db);
});
afterAll(async () => {
  await db.drop();
});
beforeEach(async () => {
  await db.query('TRUNCATE capacity_outbox');
  await db.query('TRUNCATE outbox_dispatcher.capacity_outbox_active_keys');
});

const tenant = (n: number) => `00000000-0000-4000-8000-${n.toString().padStart(12, '0')}`;

/** `count` due events of tenant `t`, the oldest due `ageSeconds` ago, in due order. */
async function backlog(t: string, count: number, ageSeconds: number, type = 'fair.e') {
  await db.query(
    `INSERT INTO capacity_outbox (restaurant_id, event_type, payload, dedupe_key, next_attempt_at)
     SELECT $1::uuid, $4, jsonb_build_object('g', g, 'pad', repeat('p', 150)), $4 || ':' || $1 || ':' || g,
            now() - $3 * interval '1 second' + g * interval '1 microsecond'
     FROM generate_series(1, $2::int) g`,
    [t, count, ageSeconds, type],
  );
}

const args = (over: Partial<ClaimArgs> = {}): ClaimArgs => ({
  workerId: 'w',
  limit: BATCH,
  leaseMs: 60_000,
  maxPayloadBytes: 1_048_576,
  fairRows: FAIR.rows,
  fairPerTenant: FAIR.perTenant,
  fairTenants: FAIR.tenants,
  ...over,
});

const byTenant = (rows: ClaimedRow[]) => {
  const m = new Map<string, number>();
  for (const r of rows) m.set(r.restaurant_id, (m.get(r.restaurant_id) ?? 0) + 1);
  return m;
};

describe('fair lane', () => {
  it('splits the default batch: a quarter tenant by tenant, at most a fifth of that per tenant, at most 32 tenants', () => {
    expect(FAIR).toEqual({ rows: 125, perTenant: 25, tenants: 32 });
    expect(fairLane(500, 0)).toEqual({ rows: 0, perTenant: 1, tenants: 0 });
    expect(fairLane(1, 25)).toEqual({ rows: 0, perTenant: 1, tenants: 0 });
    expect(fairLane(100, 100)).toEqual({ rows: 100, perTenant: 20, tenants: 32 });
  });

  it("claims a second tenant's events committed behind a first tenant's backlog in the very next claim", async () => {
    await backlog(tenant(1), 20_000, 60);
    await backlog(tenant(2), 20, 1);
    const rows = await claimBatch(db.workerDb(), args());
    expect(rows).toHaveLength(BATCH);
    const counts = byTenant(rows);
    expect(counts.get(tenant(2))).toBe(20);
    expect(counts.get(tenant(1))).toBe(BATCH - 20);
    // B's come from the fair lane; A keeps draining through both lanes, oldest first within A.
    expect(rows.filter((r) => r.restaurant_id === tenant(2)).every((r) => r.fair)).toBe(true);
    const a = rows.filter((r) => r.restaurant_id === tenant(1)).map((r) => r.due_at.getTime());
    expect(Math.max(...a)).toBeLessThan(Date.now() - 55_000); // all from the old end of A's backlog
    // Without the fair lane (OUTBOX_FAIR_SHARE_PERCENT=0) the same claim is A's oldest only.
    await db.query("UPDATE capacity_outbox SET status = 'pending', next_attempt_at = now() - interval '90 seconds', locked_by = NULL WHERE status = 'processing' AND restaurant_id = $1", [tenant(1)]);
    await db.query("UPDATE capacity_outbox SET status = 'pending', next_attempt_at = now(), locked_by = NULL WHERE status = 'processing'");
    const unfair = await claimBatch(db.workerDb(), args({ fairRows: 0, fairTenants: 0 }));
    expect(byTenant(unfair).get(tenant(2))).toBeUndefined();
  });

  it('rotates: every tenant with due events is served within ceil(tenants / 5) claims, from where the last claim stopped', async () => {
    const tenants = 40;
    for (let t = 1; t <= tenants; t++) await backlog(tenant(t), 200, 30 + t);
    const served = new Set<string>();
    let cursor: string | null = null;
    const rounds = Math.ceil(tenants / (FAIR.rows / FAIR.perTenant));
    for (let i = 0; i < rounds; i++) {
      const rows = await claimBatch(db.workerDb(), args({ tenantAfter: cursor }));
      const fair = rows.filter((r) => r.fair);
      expect(fair).toHaveLength(FAIR.rows);
      for (const n of byTenant(fair).values()) expect(n).toBeLessThanOrEqual(FAIR.perTenant);
      // The head lane drains the oldest tenants meanwhile; a tenant counts as served by either lane.
      for (const r of rows) served.add(r.restaurant_id);
      cursor = rows[0]!.tenant_cursor;
    }
    expect(served.size).toBe(tenants);
  });

  it('wraps around the ring of tenants and never claims an event twice in one claim', async () => {
    await backlog(tenant(1), 30, 10);
    await backlog(tenant(2), 30, 9);
    await backlog(tenant(3), 30, 8);
    const rows = await claimBatch(db.workerDb(), args({ tenantAfter: tenant(2), limit: 60, fairRows: 40, fairPerTenant: 10, fairTenants: 32 }));
    expect(new Set(rows.map((r) => r.id)).size).toBe(rows.length);
    expect(rows).toHaveLength(60);
    // Starts after tenant 2: tenant 3, then around to tenants 1 and 2, then stops (each once).
    expect(byTenant(rows.filter((r) => r.fair))).toEqual(new Map([[tenant(3), 10], [tenant(1), 10], [tenant(2), 10]]));
    expect(rows[0]!.tenant_cursor).toBe(tenant(2));
  });

  it('skips tenants with nothing due (retries later, keyed events waiting) without claiming them', async () => {
    await backlog(tenant(1), 100, 5);
    await db.query(
      `INSERT INTO capacity_outbox (restaurant_id, event_type, next_attempt_at)
       SELECT $1::uuid, 'fair.later', now() + interval '1 hour' FROM generate_series(1, 50)`,
      [tenant(2)],
    );
    const rows = await claimBatch(db.workerDb(), args());
    expect(byTenant(rows)).toEqual(new Map([[tenant(1), 100]]));
  });
});

describe('between full claims', () => {
  // Behind a deep backlog the window is full and full claims come only every batch / drain
  // rate. A NOTIFY then makes a top-up claim of the fair lane's share once that share fits,
  // so another tenant's new event is claimed without waiting for room for a whole batch.
  it("a notified event of another tenant is claimed while the window has room only for the fair lane's share", async () => {
    const batch = 100;
    const fair = fairLane(batch, 25);
    // Tenant 1's sends hang until released, so the window stays as full as the test makes it.
    const gates: (() => void)[] = [];
    const release = (n: number) => gates.splice(0, n).forEach((open) => open());
    const sink = recordingSink('test', (e) => (e.restaurantId === tenant(1) ? new Promise<void>((resolve) => gates.push(resolve)) : undefined));
    await backlog(tenant(1), 1000, 60);
    const daemon = await startDaemon(db, { sinks: { test: sink }, env: { OUTBOX_BATCH_SIZE: String(batch), OUTBOX_CONCURRENCY: '10' } });
    const claims = async () => {
      const { values } = await daemon.metrics.claimBatchSize.get();
      const sum = values.find((v) => v.metricName === 'outbox_claim_batch_size_sum')!.value;
      const empty = values.find((v) => v.metricName === 'outbox_claim_batch_size_bucket' && v.labels.le === 0)!.value;
      const count = values.find((v) => v.metricName === 'outbox_claim_batch_size_count')!.value;
      return { rows: sum, claims: count - empty };
    };
    try {
      // Window = 10 + 2 x 100: two full claims, then 10 slots free, fewer than a batch.
      await waitFor(async () => (await claims()).rows === 2 * batch && gates.length === 10, { what: 'two full claims and ten hung sends' });
      // Finish 30 sends: room for the fair lane's 25, not for a batch. No event arrived, so no claim.
      for (let i = 0; i < 3; i++) {
        await waitFor(() => gates.length === 10, { what: 'ten hung sends' });
        release(10);
      }
      await waitFor(() => daemon.dispatcher.held === 2 * batch - 30 && daemon.completer.pending === 0, { what: '30 sends finished and written' });
      await new Promise((r) => setTimeout(r, 4 * TOP_UP_GAP_MS));
      expect(await claims()).toEqual({ rows: 2 * batch, claims: 2 });

      // Tenant 2 commits one event: its NOTIFY brings a top-up claim of exactly the fair share.
      await db.query(`INSERT INTO capacity_outbox (restaurant_id, event_type, payload) VALUES ($1, 'fair.e', '{}')`, [tenant(2)]);
      await waitFor(async () => (await claims()).claims === 3, { what: 'a third claim', timeoutMs: 10_000 });
      expect(await claims()).toEqual({ rows: 2 * batch + fair.rows, claims: 3 });
      const b = await db.query<{ status: string }>('SELECT status FROM capacity_outbox WHERE restaurant_id = $1', [tenant(2)]);
      expect(b.rows[0]!.status).toBe('processing');
      // Tenants take turns for send slots: it starts within two freed slots, not behind
      // tenant 1's 160 queued events.
      const delivered = () => sink.calls.some((c) => c.event.restaurantId === tenant(2));
      for (let freed = 1; freed <= 2 && !delivered(); freed++) {
        const before = sink.calls.length;
        release(1);
        await waitFor(() => sink.calls.length > before && gates.length === 10, { what: 'a slot freed and taken' });
      }
      expect(delivered()).toBe(true);
    } finally {
      release(gates.length);
      const drain = setInterval(() => release(gates.length), 20);
      await daemon.stop();
      clearInterval(drain);
    }
  });
});

describe('without a poke', () => {
  // The fair lane runs on claims after a poke and otherwise at least every FAIR_LANE_INTERVAL_MS:
  // an event that comes due silently (a retry, a lost NOTIFY) still gets past a backlog.
  it("an event of another tenant that comes due silently is claimed within the fair lane's interval, not behind the backlog", async () => {
    await backlog(tenant(1), 20_000, 60);
    // Due in half a second: no NOTIFY will announce it.
    await db.query(`INSERT INTO capacity_outbox (restaurant_id, event_type, payload, next_attempt_at) VALUES ($1, 'fair.e', '{}', now() + interval '500 ms')`, [tenant(2)]);
    const sink = recordingSink('test', () => new Promise((r) => setTimeout(r, 10)));
    const daemon = await startDaemon(db, { sinks: { test: sink }, env: { OUTBOX_BATCH_SIZE: '100', OUTBOX_CONCURRENCY: '20' } });
    try {
      await waitFor(() => sink.calls.some((c) => c.event.restaurantId === tenant(2)), { what: "tenant 2's event delivered", timeoutMs: 20_000 });
      // Tenant 1's backlog (about 2,000 a second here) is far from drained.
      const left = await db.query<{ n: string }>("SELECT count(*) AS n FROM capacity_outbox WHERE restaurant_id = $1 AND status = 'pending'", [tenant(1)]);
      expect(Number(left.rows[0]!.n)).toBeGreaterThan(5_000);
    } finally {
      await daemon.stop();
    }
  });
});

/** Every statement the claim ran, as executed (auto_explain), with what it read from each index. */
async function explainFairClaim(over: Partial<ClaimArgs> = {}) {
  const compiled = claimStatement(args(over)).compile(db.workerDb());
  const plans = await explainNested(db.adminUrl, 'app_background', compiled.sql, compiled.parameters);
  const bad: string[] = [];
  const read = new Map<string, number>();
  for (const p of plans) {
    walk(p.plan, (n: PlanNode) => {
      if (['Sort', 'Incremental Sort', 'Bitmap Heap Scan', 'Bitmap Index Scan'].includes(n['Node Type'])) bad.push(`${n['Node Type']} in ${planShape(p.plan)}`);
      if (n['Node Type'] === 'Seq Scan' && /^capacity_outbox/.test(n['Relation Name'] ?? '')) bad.push(`Seq Scan on ${n['Relation Name']}`);
      const idx = n['Index Name']?.replace(/^capacity_outbox_(p\d{4}_\d{2}|default)_/, '');
      if (idx) read.set(idx, (read.get(idx) ?? 0) + (n['Actual Rows'] ?? 0) * (n['Actual Loops'] ?? 1) + (n['Rows Removed by Filter'] ?? 0));
    });
  }
  const total = [...read.values()].reduce((a, b) => a + b, 0);
  return { bad, read, total, statements: plans.length };
}

describe('fair lane reads stay bounded', { timeout: 300_000 }, () => {
  it('10,000 tenants with due events: one claim visits at most 32 of them, in every statistics state', async () => {
    // 10,000 tenants with 3 due events each, plus one tenant's backlog of 20,000.
    await db.query(
      `INSERT INTO capacity_outbox (restaurant_id, event_type, payload, next_attempt_at)
       SELECT ('00000000-0000-4000-8000-' || lpad((10 + g % 10000)::text, 12, '0'))::uuid, 'fair.many', '{"x":1}',
              now() - interval '10 seconds' + g * interval '1 microsecond'
       FROM generate_series(1, 30000) g`,
    );
    await backlog(tenant(1), 20_000, 60);
    for (const state of ['never analyzed', 'fresh'] as const) {
      if (state === 'fresh') await db.query('ANALYZE capacity_outbox');
      const { bad, read, total } = await explainFairClaim();
      expect(bad, state).toEqual([]);
      // Every statement the claim ran (key release included) reads a bounded number of index entries.
      expect(total, state).toBeLessThan(8 * BATCH);
      // The tenant index: per visited tenant one "next tenant" entry and at most perTenant due
      // entries, per partition, never the 50,000 due rows or the 10,001 tenants.
      const tenantReads = read.get('restaurant_id_next_attempt_at_idx') ?? 0;
      expect(tenantReads, state).toBeGreaterThan(0);
      expect(tenantReads, state).toBeLessThanOrEqual(FAIR.tenants * (1 + FAIR.perTenant) + 4 * FAIR.tenants);
      // The head lane: about the rest of the batch.
      expect(read.get('status_next_attempt_at_idx') ?? 0, state).toBeLessThanOrEqual(BATCH + 10);
    }
  });

  it('analyzed while nearly everything was done, then a backlog added: same bounded reads', async () => {
    await db.query(
      `INSERT INTO capacity_outbox (restaurant_id, event_type, status, next_attempt_at)
       SELECT ('00000000-0000-4000-8000-' || lpad((10 + g % 500)::text, 12, '0'))::uuid, 'fair.old', 'done', now() - interval '1 day'
       FROM generate_series(1, 30000) g`,
    );
    await db.query('ANALYZE capacity_outbox');
    await backlog(tenant(1), 30_000, 60);
    for (let t = 2; t <= 200; t++) await backlog(tenant(t), 5, 30);
    const { bad, read, total } = await explainFairClaim();
    expect(bad).toEqual([]);
    expect(total).toBeLessThan(8 * BATCH);
    expect(read.get('restaurant_id_next_attempt_at_idx') ?? 0).toBeLessThanOrEqual(FAIR.tenants * (1 + FAIR.perTenant) + 4 * FAIR.tenants);
    expect(read.get('status_next_attempt_at_idx') ?? 0).toBeLessThanOrEqual(BATCH + 10);
  });
});
