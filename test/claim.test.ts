import { describe, expect } from 'vitest';
import { claimBatch, claimStatement, completeBatch, rescueExpiredLeases } from '../src/db/queries/outbox.ts';
import { explainNested } from './support/explain.ts';
import { produce, statusCounts, tenantId, waitFor } from './support/db.ts';
import { recordingSink, startDaemon } from './support/daemon.ts';
import type { Daemon } from '../src/lifecycle/daemon.ts';
import { it } from './support/fixtures.ts';

describe('claim query', () => {
  it('walks the (status, next_attempt_at) dispatch index, as deployed (worker role, RLS on)', async ({ db }) => {
    await db.query(
      `INSERT INTO capacity_outbox (restaurant_id, event_type, status)
       SELECT gen_random_uuid(), 'x', CASE WHEN g % 100 = 0 THEN 'pending' ELSE 'done' END FROM generate_series(1, 20000) g`,
    );
    await db.query('ANALYZE capacity_outbox');
    const { rows: idx } = await db.query<{ relname: string; part: string }>(
      `SELECT c.relname, t.relname AS part FROM pg_inherits i
       JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_index x ON x.indexrelid = c.oid JOIN pg_class t ON t.oid = x.indrelid
       WHERE i.inhparent = 'public.capacity_outbox_dispatch_idx'::regclass`,
    );
    const q = claimStatement({ workerId: 'w', limit: 100, leaseMs: 1000, maxPayloadBytes: 1_048_576 }).compile(db.workerDb());
    const plans = await explainNested(db.adminUrl, 'app_background', q.sql, q.parameters);
    const text = plans.filter((p) => /skip locked/i.test(p.queryText)).map((p) => JSON.stringify(p.plan)).join('\n');
    const { rows: hot } = await db.query<{ part: string }>(`SELECT DISTINCT tableoid::regclass::text AS part FROM capacity_outbox`);
    const populated = hot[0]!.part;
    const populatedIdx = idx.find((i) => i.part === populated)!.relname;
    expect(text).toContain(`"Index Name":"${populatedIdx}"`);
    expect(text).not.toMatch(/"Node Type":"(Seq Scan|Sort|Bitmap Heap Scan)"/);
  });

  it('never hands one event to two concurrent claimers', async ({ db }) => {
    await db.query(`INSERT INTO capacity_outbox (restaurant_id, event_type) SELECT gen_random_uuid(), 'x' FROM generate_series(1, 2000)`);
    const worker = db.workerDb();
    const seen = new Map<string, string>();
    await Promise.all(
      ['w1', 'w2', 'w3', 'w4'].map(async (w) => {
        for (;;) {
          const rows = await claimBatch(worker, { workerId: w, limit: 37, leaseMs: 60_000, maxPayloadBytes: 1_048_576 });
          if (rows.length === 0) return;
          for (const r of rows) {
            expect(seen.has(r.id), `event ${r.id} claimed by ${seen.get(r.id)} and ${w}`).toBe(false);
            seen.set(r.id, w);
          }
        }
      }),
    );
    expect(seen.size).toBe(2000);
    expect(await statusCounts(db)).toEqual({ processing: 2000 });
    const { rows } = await db.query(`SELECT count(*)::int AS n FROM capacity_outbox WHERE locked_until IS NULL OR next_attempt_at <> locked_until OR attempts <> 1`);
    expect(rows[0].n).toBe(0);
  });

  it('completes only events still leased by the same worker at the same attempt', async ({ db }) => {
    const t = tenantId();
    await produce(db.producerUrl, t, [{ type: 'x' }, { type: 'x' }]);
    const worker = db.workerDb();
    const rows = await claimBatch(worker, { workerId: 'w1', limit: 10, leaseMs: 60_000, maxPayloadBytes: 1_048_576 });
    const [a, b] = rows;
    const applied = await completeBatch(worker, 'w1', [
      { id: a!.id, createdAtKey: a!.created_at_key, attempt: 1, outcome: { kind: 'done' } },
      { id: b!.id, createdAtKey: b!.created_at_key, attempt: 2, outcome: { kind: 'done' } }, // stale attempt
    ]);
    expect([...applied]).toEqual([a!.id]);
    expect(await completeBatch(worker, 'w2', [{ id: b!.id, createdAtKey: b!.created_at_key, attempt: 1, outcome: { kind: 'done' } }])).toEqual(new Set());
  });

  it('rescues expired leases back to pending, and dead-letters them on the last attempt', async ({ db }) => {
    await produce(db.producerUrl, tenantId(), [{ type: 'x' }, { type: 'y' }]);
    const worker = db.workerDb();
    await claimBatch(worker, { workerId: 'gone', limit: 10, leaseMs: 1, maxPayloadBytes: 1_048_576 });
    await db.query("UPDATE capacity_outbox SET attempts = 3 WHERE event_type = 'y'");
    await waitFor(async () => (await db.query('SELECT 1 FROM capacity_outbox WHERE next_attempt_at > now()')).rowCount === 0);
    expect(await rescueExpiredLeases(worker, { limit: 100, maxAttempts: 3, retryHorizonMs: 0 })).toEqual({ requeued: 1, deadLettered: 1 });
    const { rows } = await db.query('SELECT event_type, status, locked_by, last_error FROM capacity_outbox ORDER BY event_type');
    expect(rows[0]).toMatchObject({ event_type: 'x', status: 'pending', locked_by: null });
    expect(rows[1]).toMatchObject({ event_type: 'y', status: 'dead' });
    expect(rows[1].last_error).toMatch(/lease expired: worker gone did not finish attempt 3/);
  });

  it('within the retry horizon, dead-letters an expired last attempt only if the one before also expired (ADR 0007)', async ({ db }) => {
    // Events that spent many attempts on a sink outage, then lost their worker.
    await produce(db.producerUrl, tenantId(), [{ type: 'outage' }, { type: 'poison' }, { type: 'old' }]);
    const worker = db.workerDb();
    await claimBatch(worker, { workerId: 'gone', limit: 10, leaseMs: 1, maxPayloadBytes: 1_048_576 });
    await db.query("UPDATE capacity_outbox SET attempts = 12, last_error = 'HTTP 503: deploying'");
    await db.query("UPDATE capacity_outbox SET last_error = 'lease expired: worker gone did not finish attempt 11' WHERE event_type = 'poison'");
    await waitFor(async () => (await db.query('SELECT 1 FROM capacity_outbox WHERE next_attempt_at > now()')).rowCount === 0);
    const horizon = 3_600_000;
    // 'old' was committed before the horizon: its expired last attempt dead-letters it.
    const oldId = (await db.query("SELECT id FROM capacity_outbox WHERE event_type = 'old'")).rows[0].id;
    await db.query("DELETE FROM capacity_outbox WHERE event_type = 'old'");
    await db.query(
      `INSERT INTO capacity_outbox (id, restaurant_id, event_type, status, attempts, locked_by, locked_until, next_attempt_at, last_error, created_at)
       VALUES ($1, $2, 'old', 'processing', 12, 'gone', now() - interval '1 second', now() - interval '1 second', 'HTTP 503: deploying', now() - interval '2 hours')`,
      [oldId, tenantId()],
    );
    expect(await rescueExpiredLeases(worker, { limit: 100, maxAttempts: 10, retryHorizonMs: horizon })).toEqual({ requeued: 1, deadLettered: 2 });
    const { rows } = await db.query('SELECT event_type, status, last_error FROM capacity_outbox ORDER BY event_type');
    expect(rows.map((r) => [r.event_type, r.status])).toEqual([['old', 'dead'], ['outage', 'pending'], ['poison', 'dead']]);
    expect(rows[1].last_error).toBe('lease expired: worker gone did not finish attempt 12');
  });
});

describe('dispatch with four workers', () => {
  it('dispatches every event exactly once, never to two workers at the same time', async ({ db }) => {
    const sinks = [1, 2, 3, 4].map(() => recordingSink('test', () => new Promise((r) => setTimeout(r, Math.random() * 5))));
    const daemons: Daemon[] = [];
    try {
      for (const [i, sink] of sinks.entries()) {
        daemons.push(await startDaemon(db, { sinks: { test: sink }, env: { OUTBOX_WORKER_ID: `w${i}`, OUTBOX_BATCH_SIZE: '20', OUTBOX_CONCURRENCY: '8' } }));
      }
      const tenants = Array.from({ length: 10 }, tenantId);
      for (const t of tenants) await produce(db.producerUrl, t, Array.from({ length: 80 }, (_, i) => ({ type: `booking.e${i % 5}`, payload: { i } })));
      await waitFor(async () => (await statusCounts(db)).done === 800, { what: '800 events done' });
    } finally {
      await Promise.all(daemons.map((d) => d.stop()));
    }
    const calls = sinks.flatMap((s, w) => s.calls.map((c) => ({ ...c, w })));
    expect(calls).toHaveLength(800);
    expect(new Set(calls.map((c) => c.event.id)).size).toBe(800);
    expect(sinks.filter((s) => s.calls.length > 0).length).toBeGreaterThan(1);
    const { rows } = await db.query('SELECT count(*)::int AS n FROM capacity_outbox WHERE status <> $1 OR dispatched_at IS NULL OR locked_by IS NOT NULL', ['done']);
    expect(rows[0].n).toBe(0);
  });
});
