import pg from 'pg';
import { describe, expect } from 'vitest';
import { replayDead } from '../src/db/queries/operator.ts';
import { claimBatch, completeBatch, rescueExpiredLeases, type ClaimedRow } from '../src/db/queries/outbox.ts';
import { produce, tenantId, type TestDatabase } from './support/db.ts';
import { it } from './support/fixtures.ts';

async function producerClient(db: TestDatabase, tenant: string): Promise<pg.Client> {
  const c = new pg.Client(db.producerUrl);
  await c.connect();
  await c.query('BEGIN');
  await c.query('SELECT public.set_restaurant_context($1)', [tenant]);
  return c;
}

const insertSql = `INSERT INTO capacity_outbox (restaurant_id, event_type, payload, dedupe_key, idempotency_key)
                   VALUES ($1, $2, '{}', $3, $4) RETURNING id`;

describe('dedupe of active events', () => {
  it('drops a duplicate without aborting the producer transaction, and the producer can tell', async ({ fileDb: db }) => {
    const t = tenantId();
    const c = await producerClient(db, t);
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

  it('treats NULL and empty keys alike, keys on (event_type, dedupe_key, idempotency_key), and never dedupes keyless events', async ({ fileDb: db }) => {
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

  it('scopes keys to the tenant: one tenant cannot suppress another tenant’s event', async ({ fileDb: db }) => {
    const [a, b] = [tenantId(), tenantId()];
    expect(await produce(db.producerUrl, a, [{ type: 'x', dedupeKey: 'shared' }])).toHaveLength(1);
    expect(await produce(db.producerUrl, b, [{ type: 'x', dedupeKey: 'shared' }])).toHaveLength(1);
  });

  it('serialises concurrent producers of one key: the second waits, then is dropped if the first commits', async ({ fileDb: db }) => {
    const t = tenantId();
    const [c1, c2] = [await producerClient(db, t), await producerClient(db, t)];
    try {
      expect((await c1.query(insertSql, [t, 'race', 'k', null])).rowCount).toBe(1);
      let settled = false;
      const second = c2.query(insertSql, [t, 'race', 'k', null]).then((r) => {
        settled = true;
        return r;
      });
      // c2 blocks on c1's uncommitted key until c1 finishes.
      await waitForLockWait(db, c2);
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

  it('lets the waiting producer through when the first rolls back', async ({ fileDb: db }) => {
    const t = tenantId();
    const [c1, c2] = [await producerClient(db, t), await producerClient(db, t)];
    try {
      await c1.query(insertSql, [t, 'race2', 'k', null]);
      const second = c2.query(insertSql, [t, 'race2', 'k', null]);
      await waitForLockWait(db, c2);
      await c1.query('ROLLBACK');
      expect((await second).rowCount).toBe(1);
      await c2.query('COMMIT');
    } finally {
      await c1.end();
      await c2.end();
    }
  });

  it('holds across partitions: an active event from last month still blocks its key', async ({ fileDb: db }) => {
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

  it('releases the key when the event reaches done or dead', async ({ fileDb: db }) => {
    const t = tenantId();
    const [id] = await produce(db.producerUrl, t, [{ type: 'rel', dedupeKey: 'k' }]);
    await db.query("UPDATE capacity_outbox SET status = 'done' WHERE id = $1", [id]);
    const [id2] = await produce(db.producerUrl, t, [{ type: 'rel', dedupeKey: 'k' }]);
    expect(id2).toBeDefined();
    await db.query("UPDATE capacity_outbox SET status = 'dead' WHERE id = $1", [id2]);
    expect(await produce(db.producerUrl, t, [{ type: 'rel', dedupeKey: 'k' }])).toHaveLength(1);
  });

  it('replaying a dead event re-takes its key, and is skipped while another active event holds it', async ({ fileDb: db }) => {
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

describe('dedupe semantics of ADR 0001 (revision 2026-11-30)', () => {
  /** Claims everything due as `worker` and returns the row of `id` (other tests' rows are claimed too, harmlessly). */
  async function claim(db: TestDatabase, id: string, workerId = 'w-dedupe', leaseMs = 60_000): Promise<ClaimedRow> {
    const rows = await claimBatch(db.workerDb(), { workerId, limit: 5000, leaseMs, maxPayloadBytes: 1_048_576 });
    const row = rows.find((r) => r.id === id);
    if (!row) throw new Error(`event ${id} was not claimed`);
    return row;
  }
  async function eventRow(db: TestDatabase, id: string) {
    const { rows } = await db.query('SELECT status, payload, last_error, dispatched_at FROM capacity_outbox WHERE id = $1', [id]);
    return rows[0];
  }

  it('accepts a newer event while the older one is in flight, and delivers its payload (repro 20)', async ({ fileDb: db }) => {
    const t = tenantId();
    const [older] = await produce(db.producerUrl, t, [{ type: 'booking.updated', dedupeKey: 'booking-42', payload: { guests: 2 } }]);
    const row = await claim(db, older!);
    expect(row.payload).toEqual({ guests: 2 }); // handed to a worker: the consumer may already have it
    const [newer] = await produce(db.producerUrl, t, [{ type: 'booking.updated', dedupeKey: 'booking-42', payload: { guests: 6 } }]);
    expect(newer).toBeDefined();
    // A third event while the newer one is still queued is a duplicate of a pending event: dropped.
    expect(await produce(db.producerUrl, t, [{ type: 'booking.updated', dedupeKey: 'booking-42', payload: { guests: 7 } }])).toEqual([]);
    expect(await completeBatch(db.workerDb(), 'w-dedupe', [{ id: older!, createdAtKey: row.created_at_key, attempt: row.attempts, outcome: { kind: 'done' } }])).toEqual(new Set([older]));
    const next = await claim(db, newer!);
    expect(next.payload).toEqual({ guests: 6 });
    const { rows } = await db.query("SELECT status, payload FROM capacity_outbox WHERE restaurant_id = $1 ORDER BY created_at", [t]);
    expect(rows).toEqual([{ status: 'done', payload: { guests: 2 } }, { status: 'processing', payload: { guests: 6 } }]);
  });

  it('supersedes the older event when it is retried or released while a newer one is queued', async ({ fileDb: db }) => {
    const t = tenantId();
    for (const outcome of [{ kind: 'retry', delayMs: 0, error: 'HTTP 503' }, { kind: 'release' }] as const) {
      const type = `sup.${outcome.kind}`;
      const [older] = await produce(db.producerUrl, t, [{ type, dedupeKey: 'k', payload: { v: 1 } }]);
      const row = await claim(db, older!);
      const [newer] = await produce(db.producerUrl, t, [{ type, dedupeKey: 'k', payload: { v: 2 } }]);
      expect(await completeBatch(db.workerDb(), 'w-dedupe', [{ id: older!, createdAtKey: row.created_at_key, attempt: row.attempts, outcome }])).toEqual(new Set([older]));
      const o = await eventRow(db, older!);
      expect(o.status).toBe('done');
      expect(o.dispatched_at).toBeNull();
      expect(o.last_error).toContain(`superseded by event ${newer}`);
      expect((await eventRow(db, newer!)).status).toBe('pending');
      // Exactly one queued event holds the key.
      expect(await produce(db.producerUrl, t, [{ type, dedupeKey: 'k' }])).toEqual([]);
    }
  });

  it('supersedes an older event whose lease expired while a newer one is queued; without one, the retry re-takes the key', async ({ fileDb: db }) => {
    const t = tenantId();
    const [older] = await produce(db.producerUrl, t, [{ type: 'lease', dedupeKey: 'k' }]);
    await claim(db, older!, 'w-dies', 1000);
    const [newer] = await produce(db.producerUrl, t, [{ type: 'lease', dedupeKey: 'k' }]);
    await db.query("UPDATE capacity_outbox SET next_attempt_at = now() - interval '1 second' WHERE id = $1", [older]);
    await rescueExpiredLeases(db.workerDb(), { limit: 1000, maxAttempts: 10, retryHorizonMs: 86_400_000 });
    expect((await eventRow(db, older!)).last_error).toContain(`superseded by event ${newer}`);
    expect((await eventRow(db, newer!)).status).toBe('pending');

    // No newer event: the retried event goes back to pending and holds its key again.
    const [solo] = await produce(db.producerUrl, t, [{ type: 'solo', dedupeKey: 'k' }]);
    const row = await claim(db, solo!);
    await completeBatch(db.workerDb(), 'w-dedupe', [{ id: solo!, createdAtKey: row.created_at_key, attempt: row.attempts, outcome: { kind: 'retry', delayMs: 60_000, error: 'x' } }]);
    expect((await eventRow(db, solo!)).status).toBe('pending');
    expect(await produce(db.producerUrl, t, [{ type: 'solo', dedupeKey: 'k' }])).toEqual([]);
  });

  it('replays a dead event while a newer event of its key is in flight (no queued holder)', async ({ fileDb: db }) => {
    const t = tenantId();
    const [dead] = await produce(db.producerUrl, t, [{ type: 'rep2', dedupeKey: 'k' }]);
    await db.query("UPDATE capacity_outbox SET status = 'dead', last_error = 'x' WHERE id = $1", [dead]);
    const [active] = await produce(db.producerUrl, t, [{ type: 'rep2', dedupeKey: 'k' }]);
    await claim(db, active!);
    expect(await replayDead(db.workerDb(), { tenant: t, types: ['rep2'] })).toEqual({ replayed: 1, skippedDuplicateKey: 0 });
    expect((await eventRow(db, dead!)).status).toBe('pending');
  });

  // Both ways an event leaves pending in a claim: an UPDATE by hand (the row trigger frees the key)
  // and the claim function (it frees the batch's keys in one statement, migration 0012).
  for (const how of ['by hand', 'claim_batch'] as const) {
    it(`a claim racing a producer (${how}): the producer waits for the claim, accepted if it commits, dropped if it rolls back`, async ({ fileDb: db }) => {
      for (const end of ['COMMIT', 'ROLLBACK'] as const) {
        const t = tenantId();
        const type = `claimrace.${how === 'by hand' ? 'hand' : 'fn'}.${end}`;
        const [older] = await produce(db.producerUrl, t, [{ type, dedupeKey: 'k' }]);
        const worker = new pg.Client({ connectionString: db.workerUrl });
        await worker.connect();
        const producer = await producerClient(db, t);
        try {
          await worker.query('BEGIN');
          if (how === 'by hand') {
            const claimed = await worker.query(
              "UPDATE capacity_outbox SET status = 'processing', attempts = attempts + 1, locked_by = 'w', next_attempt_at = now() + interval '1 minute' WHERE id = $1 AND status = 'pending' RETURNING id",
              [older],
            );
            expect(claimed.rowCount).toBe(1);
          } else {
            const claimed = await worker.query("SELECT id FROM outbox_dispatcher.claim_batch('w-race', 5000, 60000, 1048576)");
            expect(claimed.rows.map((r) => r.id)).toContain(older);
            // The trigger stands aside only during the claim: later updates in the same transaction free keys as before.
            expect((await worker.query("SELECT current_setting('outbox_dispatcher.claim_frees_keys', true) AS v")).rows[0].v).toBe('off');
          }
          const dup = producer.query(insertSql, [t, type, 'k', null]);
          await waitForLockWait(db, producer);
          await worker.query(end);
          expect((await dup).rowCount).toBe(end === 'COMMIT' ? 1 : 0);
          await producer.query('COMMIT');
        } finally {
          await worker.end();
          await producer.end();
        }
      }
    });
  }

  it('the claim frees the keys of exactly the events it claimed, in one statement (migration 0012)', async ({ fileDb: db }) => {
    const t = tenantId();
    const type = 'claimfree';
    const ids = await produce(db.producerUrl, t, Array.from({ length: 6 }, (_, i) => ({ type, dedupeKey: `k${i}` })));
    expect(ids).toHaveLength(6);
    const held = async () =>
      (await db.query<{ n: number }>('SELECT count(*)::int AS n FROM outbox_dispatcher.capacity_outbox_active_keys WHERE event_id = ANY($1)', [ids])).rows[0]!.n;
    expect(await held()).toBe(6);
    // Claim through the real function (one batch, other tests' events included), as the worker's login.
    const claimed = await claimBatch(db.workerDb(), { workerId: 'w-free', limit: 5000, leaseMs: 60_000, maxPayloadBytes: 1_048_576 });
    const mine = claimed.filter((r) => ids.includes(r.id));
    expect(mine).toHaveLength(6);
    expect(await held()).toBe(0);
    // Each key is free again: a newer event of every key is accepted.
    expect(await produce(db.producerUrl, t, Array.from({ length: 6 }, (_, i) => ({ type, dedupeKey: `k${i}` })))).toHaveLength(6);
    // The per-row trigger still frees a key when an event leaves pending any other way.
    const [other] = await produce(db.producerUrl, t, [{ type: 'claimfree.byhand', dedupeKey: 'h' }]);
    await db.query("UPDATE capacity_outbox SET status = 'dead' WHERE id = $1", [other]);
    expect(await produce(db.producerUrl, t, [{ type: 'claimfree.byhand', dedupeKey: 'h' }])).toHaveLength(1);
  });

  it('the set-based release frees only keys of events no longer pending, and only the worker may call it', async ({ fileDb: db }) => {
    const t = tenantId();
    const [queued] = await produce(db.producerUrl, t, [{ type: 'relguard', dedupeKey: 'k' }]);
    const worker = new pg.Client({ connectionString: db.workerUrl });
    await worker.connect();
    try {
      const r = await worker.query('SELECT outbox_dispatcher.capacity_outbox_release_claimed_keys(ARRAY[$1::uuid]) AS n', [queued]);
      expect(r.rows[0].n).toBe(0);
    } finally {
      await worker.end();
    }
    expect(await produce(db.producerUrl, t, [{ type: 'relguard', dedupeKey: 'k' }])).toEqual([]);
    const producer = new pg.Client(db.producerUrl);
    await producer.connect();
    try {
      await expect(producer.query('SELECT outbox_dispatcher.capacity_outbox_release_claimed_keys(ARRAY[$1::uuid])', [queued])).rejects.toMatchObject({ code: '42501' });
    } finally {
      await producer.end();
    }
  });

  it('names the pending event holding a key to its own tenant only (capacity_outbox_key_holder, migration 0015)', async ({ fileDb: db }) => {
    const [a, b] = [tenantId(), tenantId()];
    const [held] = await produce(db.producerUrl, a, [{ type: 'holder', dedupeKey: 'k' }]);
    const holderAs = async (ctx: string | null, tenant: string, dedupeKey: string | null = 'k') => {
      const c = new pg.Client(db.producerUrl);
      await c.connect();
      try {
        await c.query('BEGIN'); // the context is transaction-local
        if (ctx) await c.query('SELECT public.set_restaurant_context($1)', [ctx]);
        return (await c.query("SELECT outbox_dispatcher.capacity_outbox_key_holder($1, 'holder', $2, NULL) AS id", [tenant, dedupeKey])).rows[0].id;
      } finally {
        await c.end();
      }
    };
    expect(await holderAs(a, a)).toBe(held);
    expect(await holderAs(a, a, 'other')).toBeNull();
    // Another tenant's key reads as not held; without a context the producer is refused.
    expect(await holderAs(b, a)).toBeNull();
    await expect(holderAs(null, a)).rejects.toMatchObject({ code: '42501' });
  });

  it('gives events time-ordered ids (UUID version 7): events inserted later sort after earlier ones', async ({ fileDb: db }) => {
    const t = tenantId();
    const [first] = await produce(db.producerUrl, t, [{ type: 'v7' }]);
    await new Promise((r) => setTimeout(r, 5));
    const [second] = await produce(db.producerUrl, t, [{ type: 'v7' }]);
    for (const id of [first!, second!]) {
      expect(id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    }
    expect(first! < second!).toBe(true);
    // The first 48 bits are the insert's Unix milliseconds.
    const ms = parseInt(first!.replace(/-/g, '').slice(0, 12), 16);
    const created = (await db.query<{ ms: number }>('SELECT (extract(epoch FROM created_at) * 1000)::float8 AS ms FROM capacity_outbox WHERE id = $1', [first])).rows[0]!.ms;
    expect(Math.abs(ms - created)).toBeLessThan(1000);
  });

  it('two producers of one key racing while the older event is in flight: exactly one newer event is queued', async ({ fileDb: db }) => {
    const t = tenantId();
    const [older] = await produce(db.producerUrl, t, [{ type: 'race3', dedupeKey: 'k' }]);
    await claim(db, older!);
    const [c1, c2] = [await producerClient(db, t), await producerClient(db, t)];
    try {
      expect((await c1.query(insertSql, [t, 'race3', 'k', null])).rowCount).toBe(1);
      const second = c2.query(insertSql, [t, 'race3', 'k', null]);
      await waitForLockWait(db, c2);
      await c1.query('COMMIT');
      expect((await second).rowCount).toBe(0);
      await c2.query('COMMIT');
    } finally {
      await c1.end();
      await c2.end();
    }
    const { rows } = await db.query("SELECT status FROM capacity_outbox WHERE restaurant_id = $1 ORDER BY created_at", [t]);
    expect(rows.map((r) => r.status)).toEqual(['processing', 'pending']);
  });

  it.for(['REPEATABLE READ', 'SERIALIZABLE'])('a %s producer racing a committed insert of its key is dropped, its transaction commits (repro 02)', async (level, { fileDb: db }) => {
    const t = tenantId();
    const rr = new pg.Client(db.producerUrl);
    await rr.connect();
    try {
      await rr.query(`BEGIN ISOLATION LEVEL ${level}`);
      await rr.query('SELECT public.set_restaurant_context($1)', [t]);
      await rr.query('SELECT count(*) FROM capacity_outbox'); // the snapshot is taken here
      expect(await produce(db.producerUrl, t, [{ type: 'stock.changed', dedupeKey: 'sku-1' }])).toHaveLength(1);
      expect((await rr.query(insertSql, [t, 'stock.changed', 'sku-1', null])).rowCount).toBe(0);
      expect((await rr.query(insertSql, [t, 'stock.changed', 'sku-2', null])).rowCount).toBe(1);
      await rr.query('COMMIT');
    } finally {
      await rr.end();
    }
    const { rows } = await db.query('SELECT dedupe_key FROM capacity_outbox WHERE restaurant_id = $1 ORDER BY dedupe_key', [t]);
    expect(rows.map((r) => r.dedupe_key)).toEqual(['sku-1', 'sku-2']);
  });

  it('a REPEATABLE READ producer waiting on an uncommitted insert of its key is dropped when that commits', async ({ fileDb: db }) => {
    const t = tenantId();
    const [c1, rr] = [await producerClient(db, t), new pg.Client(db.producerUrl)];
    await rr.connect();
    try {
      await rr.query('BEGIN ISOLATION LEVEL REPEATABLE READ');
      await rr.query('SELECT public.set_restaurant_context($1)', [t]);
      await rr.query('SELECT count(*) FROM capacity_outbox');
      expect((await c1.query(insertSql, [t, 'rr2', 'k', null])).rowCount).toBe(1);
      const dup = rr.query(insertSql, [t, 'rr2', 'k', null]);
      await waitForLockWait(db, rr);
      await c1.query('COMMIT');
      expect((await dup).rowCount).toBe(0);
      await rr.query('COMMIT');
    } finally {
      await c1.end();
      await rr.end();
    }
  });

  it('does not reveal whether another tenant holds a key (repro 01)', async ({ fileDb: db }) => {
    const [a, b] = [tenantId(), tenantId()];
    expect(await produce(db.producerUrl, b, [{ type: 'booking.created', dedupeKey: 'booking-42' }])).toHaveLength(1);
    const errorOf = async (context: string | null, key: string) => {
      const c = new pg.Client(db.producerUrl);
      await c.connect();
      try {
        await c.query('BEGIN');
        if (context) await c.query('SELECT public.set_restaurant_context($1)', [context]);
        await c.query(insertSql, [b, 'booking.created', key, null]);
        return 'accepted';
      } catch (err) {
        return `${(err as { code?: string }).code}: ${(err as Error).message}`;
      } finally {
        await c.end();
      }
    };
    // Held and free keys give the same answer: the RLS error for context A, "tenant context missing" without one.
    const held = await errorOf(a, 'booking-42');
    expect(held).toBe(await errorOf(a, 'booking-43'));
    expect(held).toMatch(/^42501: new row violates row-level security policy for table "capacity_outbox"/);
    const noContext = await errorOf(null, 'booking-42');
    expect(noContext).toBe(await errorOf(null, 'booking-43'));
    expect(noContext).toMatch(/^42501: tenant context missing/);
    // The producer cannot reach the key table directly either.
    const c = new pg.Client(db.producerUrl);
    await c.connect();
    try {
      await c.query('SELECT public.set_restaurant_context($1)', [a]);
      await expect(c.query("SELECT outbox_dispatcher.capacity_outbox_take_key($1, 'booking.created', 'booking-42', '', gen_random_uuid(), now())", [b])).rejects.toMatchObject({ code: '42501' });
      await expect(c.query('SELECT * FROM outbox_dispatcher.capacity_outbox_active_keys')).rejects.toMatchObject({ code: '42501' });
    } finally {
      await c.end();
    }
  });
});

/** Resolves once `client`'s backend is waiting on a lock. */
async function waitForLockWait(db: TestDatabase, client: pg.Client): Promise<void> {
  const pid = (client as unknown as { processID: number }).processID;
  for (let i = 0; i < 200; i++) {
    const { rows } = await db.query("SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1", [pid]);
    if (rows[0]?.wait_event_type === 'Lock') return;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error('second producer never waited on the first one’s key');
}
