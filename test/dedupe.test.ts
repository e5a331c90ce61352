import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { replayDead } from '../src/db/queries/operator.ts';
import { createTestDatabase, produce, tenantId, type TestDatabase } from './support/db.ts';

let db: TestDatabase;
beforeAll(async () => {
  db = await createTestDatabase();
});
afterAll(async () => {
  await db.drop();
});

async function producerClient(tenant: string): Promise<pg.Client> {
  const c = new pg.Client(db.producerUrl);
  await c.connect();
  await c.query('BEGIN');
  await c.query('SELECT public.set_restaurant_context($1)', [tenant]);
  return c;
}

const insertSql = `INSERT INTO capacity_outbox (restaurant_id, event_type, payload, dedupe_key, idempotency_key)
                   VALUES ($1, $2, '{}', $3, $4) RETURNING id`;

describe('dedupe of active events', () => {
  it('drops a duplicate without aborting the producer transaction, and the producer can tell', async () => {
    const t = tenantId();
    const c = await producerClient(t);
    try {
      const first = await c.query(insertSql, [t, 'booking.created', 'b-1', null]);
      const dup = await c.query(insertSql, [t, 'booking.created', 'b-1', null]);
      expect(first.rowCount).toBe(1);
      expect(dup.rowCount).toBe(0); // dropped: RETURNING yields nothing
      // The transaction is still usable and commits the producer's other work.
      const other = await c.query(insertSql, [t, 'booking.created', 'b-2', null]);
      expect(other.rowCount).toBe(1);
      await c.query('COMMIT');
    } finally {
      await c.end();
    }
    const { rows } = await db.query('SELECT dedupe_key FROM capacity_outbox WHERE restaurant_id = $1 ORDER BY dedupe_key', [t]);
    expect(rows.map((r) => r.dedupe_key)).toEqual(['b-1', 'b-2']);
  });

  it('treats NULL and empty keys alike, keys on (event_type, dedupe_key, idempotency_key), and never dedupes keyless events', async () => {
    const t = tenantId();
    const ids = await produce(db.producerUrl, t, [
      { type: 'a', dedupeKey: 'k', idempotencyKey: null },
      { type: 'a', dedupeKey: 'k', idempotencyKey: '' }, // same key as above
      { type: 'a', dedupeKey: 'k', idempotencyKey: 'i1' }, // different idempotency key
      { type: 'b', dedupeKey: 'k' }, // different event type
      { type: 'a', idempotencyKey: 'i1' }, // dedupe_key '' vs 'k'
      { type: 'a' }, // no keys at all: always accepted
      { type: 'a' },
    ]);
    expect(ids).toHaveLength(6);
  });

  it('scopes keys to the tenant: one tenant cannot suppress another tenant’s event', async () => {
    const [a, b] = [tenantId(), tenantId()];
    expect(await produce(db.producerUrl, a, [{ type: 'x', dedupeKey: 'shared' }])).toHaveLength(1);
    expect(await produce(db.producerUrl, b, [{ type: 'x', dedupeKey: 'shared' }])).toHaveLength(1);
  });

  it('serialises concurrent producers of one key: the second waits, then is dropped if the first commits', async () => {
    const t = tenantId();
    const [c1, c2] = [await producerClient(t), await producerClient(t)];
    try {
      expect((await c1.query(insertSql, [t, 'race', 'k', null])).rowCount).toBe(1);
      let settled = false;
      const second = c2.query(insertSql, [t, 'race', 'k', null]).then((r) => {
        settled = true;
        return r;
      });
      // c2 blocks on c1's uncommitted key until c1 finishes.
      await waitForLockWait(c2);
      expect(settled).toBe(false);
      await c1.query('COMMIT');
      expect((await second).rowCount).toBe(0);
      await c2.query('COMMIT');
    } finally {
      await c1.end();
      await c2.end();
    }
    const { rows } = await db.query("SELECT count(*)::int AS n FROM capacity_outbox WHERE restaurant_id = $1 AND event_type = 'race'", [t]);
    expect(rows[0].n).toBe(1);
  });

  it('lets the waiting producer through when the first rolls back', async () => {
    const t = tenantId();
    const [c1, c2] = [await producerClient(t), await producerClient(t)];
    try {
      await c1.query(insertSql, [t, 'race2', 'k', null]);
      const second = c2.query(insertSql, [t, 'race2', 'k', null]);
      await waitForLockWait(c2);
      await c1.query('ROLLBACK');
      expect((await second).rowCount).toBe(1);
      await c2.query('COMMIT');
    } finally {
      await c1.end();
      await c2.end();
    }
  });

  it('holds across partitions: an active event from last month still blocks its key', async () => {
    const t = tenantId();
    await db.query(`SELECT outbox_dispatcher.ensure_monthly_partition('public.capacity_outbox', (date_trunc('month', now() AT TIME ZONE 'UTC') - interval '1 month')::date)`);
    // Written as the owner: producers cannot choose created_at.
    const old = await db.query(
      `INSERT INTO capacity_outbox (restaurant_id, event_type, dedupe_key, created_at)
       VALUES ($1, 'booking.updated', 'b-9', date_trunc('month', now()) - interval '3 days') RETURNING tableoid::regclass::text AS part`,
      [t],
    );
    expect(old.rows[0].part).toMatch(/^capacity_outbox_p\d{4}_\d{2}$/);
    expect(await produce(db.producerUrl, t, [{ type: 'booking.updated', dedupeKey: 'b-9' }])).toEqual([]);
  });

  it('releases the key when the event reaches done or dead', async () => {
    const t = tenantId();
    const [id] = await produce(db.producerUrl, t, [{ type: 'rel', dedupeKey: 'k' }]);
    await db.query("UPDATE capacity_outbox SET status = 'done' WHERE id = $1", [id]);
    const [id2] = await produce(db.producerUrl, t, [{ type: 'rel', dedupeKey: 'k' }]);
    expect(id2).toBeDefined();
    await db.query("UPDATE capacity_outbox SET status = 'dead' WHERE id = $1", [id2]);
    expect(await produce(db.producerUrl, t, [{ type: 'rel', dedupeKey: 'k' }])).toHaveLength(1);
  });

  it('replaying a dead event re-takes its key, and is skipped while another active event holds it', async () => {
    const t = tenantId();
    const [dead] = await produce(db.producerUrl, t, [{ type: 'rep', dedupeKey: 'k' }]);
    await db.query("UPDATE capacity_outbox SET status = 'dead', last_error = 'x' WHERE id = $1", [dead]);
    const [active] = await produce(db.producerUrl, t, [{ type: 'rep', dedupeKey: 'k' }]);
    const worker = db.workerDb();
    expect(await replayDead(worker, { tenant: t, types: ['rep'] })).toEqual({ replayed: 0, skippedDuplicateKey: 1 });
    await db.query("UPDATE capacity_outbox SET status = 'done' WHERE id = $1", [active]);
    expect(await replayDead(worker, { tenant: t, types: ['rep'] })).toEqual({ replayed: 1, skippedDuplicateKey: 0 });
    // The replayed event holds the key again.
    expect(await produce(db.producerUrl, t, [{ type: 'rep', dedupeKey: 'k' }])).toEqual([]);
  });
});

/** Resolves once `client`'s backend is waiting on a lock. */
async function waitForLockWait(client: pg.Client): Promise<void> {
  const pid = (client as unknown as { processID: number }).processID;
  for (let i = 0; i < 200; i++) {
    const { rows } = await db.query("SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1", [pid]);
    if (rows[0]?.wait_event_type === 'Lock') return;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error('second producer never waited on the first one’s key');
}
