import pg from 'pg';
import { describe, expect } from 'vitest';
import { claimBatch, type ClaimedRow, type Completion } from '../src/db/queries/outbox.ts';
import { Completer } from '../src/dispatch/completer.ts';
import { createLogger } from '../src/kernel/log.ts';
import { DispatcherMetrics } from '../src/metrics/metrics.ts';
import { produce, tenantId, waitFor, type TestDatabase } from './support/db.ts';
import { it } from './support/fixtures.ts';

// The completer writes a second batch beside the first when a whole one is waiting: a slow
// write (here: one outcome's row held by another session) no longer holds up every outcome
// behind it, and a keyed drain's settling uses the CPU a single writer left idle.

const BATCH = 5;

async function claimOwn(db: TestDatabase, workerId: string, n: number): Promise<ClaimedRow[]> {
  const t = tenantId();
  await produce(db.producerUrl, t, Array.from({ length: n }, (_, i) => ({ type: 'writers.case', payload: { i } })));
  const claimed = (await claimBatch(db.workerDb(), { workerId, limit: 1000, leaseMs: 60_000, maxPayloadBytes: 1_048_576 })).filter((r) => r.restaurant_id === t);
  expect(claimed).toHaveLength(n);
  return claimed.sort((a, b) => (a.payload as { i: number }).i - (b.payload as { i: number }).i);
}

const doneOf = (r: ClaimedRow): Completion => ({ id: r.id, createdAtKey: r.created_at_key, attempt: r.attempts, outcome: { kind: 'done' } });

async function statuses(db: TestDatabase, rows: ClaimedRow[]): Promise<string[]> {
  const r = await db.query<{ id: string; status: string }>('SELECT id, status FROM capacity_outbox WHERE id = ANY($1::uuid[])', [rows.map((x) => x.id)]);
  const byId = new Map(r.rows.map((x) => [x.id, x.status]));
  return rows.map((x) => byId.get(x.id)!);
}

/** Holds the first claimed row locked from another session until released. */
async function holdRow(db: TestDatabase, row: ClaimedRow): Promise<() => Promise<void>> {
  const c = new pg.Client({ connectionString: db.adminUrl });
  await c.connect();
  await c.query('BEGIN');
  await c.query('SELECT 1 FROM capacity_outbox WHERE id = $1 AND created_at = $2::timestamptz FOR UPDATE', [row.id, row.created_at_key]);
  return async () => {
    await c.query('ROLLBACK');
    await c.end();
  };
}

describe('completion writers', () => {
  it('writes a whole batch waiting behind a stuck write on a second connection', async ({ fileDb: db }) => {
    const rows = await claimOwn(db, 'w-two', 2 * BATCH);
    const release = await holdRow(db, rows[0]!);
    const completer = new Completer(db.workerDb(), createLogger('silent'), new DispatcherMetrics(), { workerId: 'w-two', maxBatch: BATCH, stopTimeoutMs: 5000 });
    try {
      for (const r of rows) completer.add(doneOf(r));
      // The second batch is written while the first waits for the held row.
      await waitFor(async () => ((await statuses(db, rows.slice(BATCH))).every((s) => s === 'done') ? true : undefined), { what: 'the second batch written', timeoutMs: 10_000 });
      expect(await statuses(db, rows.slice(0, BATCH))).toEqual(Array(BATCH).fill('processing'));
      expect(completer.pending).toBe(BATCH); // the stuck batch still counts against the window
    } finally {
      await release();
    }
    await completer.flush();
    expect(completer.pending).toBe(0);
    expect(await statuses(db, rows)).toEqual(Array(2 * BATCH).fill('done'));
    await completer.stop();
  });

  it('with one writer, outcomes behind a stuck write wait for it (maxWriters: 1, a pool under 4)', async ({ fileDb: db }) => {
    const rows = await claimOwn(db, 'w-one', 2 * BATCH);
    const release = await holdRow(db, rows[0]!);
    const completer = new Completer(db.workerDb(), createLogger('silent'), new DispatcherMetrics(), { workerId: 'w-one', maxBatch: BATCH, maxWriters: 1, stopTimeoutMs: 5000 });
    try {
      for (const r of rows) completer.add(doneOf(r));
      await new Promise((r) => setTimeout(r, 500));
      expect(await statuses(db, rows)).toEqual(Array(2 * BATCH).fill('processing'));
      expect(completer.pending).toBe(2 * BATCH);
    } finally {
      await release();
    }
    await completer.flush();
    expect(await statuses(db, rows)).toEqual(Array(2 * BATCH).fill('done'));
    await completer.stop();
  });

  it('a part-batch does not start a second writer: it waits for the running one', async ({ fileDb: db }) => {
    const rows = await claimOwn(db, 'w-part', BATCH + 2);
    const release = await holdRow(db, rows[0]!);
    const completer = new Completer(db.workerDb(), createLogger('silent'), new DispatcherMetrics(), { workerId: 'w-part', maxBatch: BATCH, flushIntervalMs: 10, stopTimeoutMs: 5000 });
    try {
      for (const r of rows) completer.add(doneOf(r));
      await new Promise((r) => setTimeout(r, 500));
      // Two outcomes are no reason for a second connection; they go with the next write.
      expect(await statuses(db, rows.slice(BATCH))).toEqual(['processing', 'processing']);
    } finally {
      await release();
    }
    await completer.flush();
    expect(await statuses(db, rows)).toEqual(Array(BATCH + 2).fill('done'));
    await completer.stop();
  });
});
