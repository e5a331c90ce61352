import { sql, type Kysely } from 'kysely';
import pg from 'pg';
import { describe, expect } from 'vitest';
import { claimBatch, completeBatch, completionStatement, rescueExpiredLeases, settledCompletionStatement, type ClaimedRow } from '../src/db/queries/outbox.ts';
import { settlePendingKeys } from '../src/db/queries/ordering.ts';
import type { Database } from '../src/db/schema.ts';
import { PermanentDispatchError, RetryableDispatchError } from '../src/domain/dispatch-errors.ts';
import type { Daemon } from '../src/lifecycle/daemon.ts';
import { runCli } from './support/cli.ts';
import { startDaemon, recordingSink } from './support/daemon.ts';
import { test } from './support/fixtures.ts';
import { produce, tenantId, waitFor, type TestDatabase } from './support/db.ts';

// Per-key ordering (migration 0010, ADR 0011), as the daemon's login and a producer's login.

// Each test gets its own database (no cleanup between tests); daemons a test starts are stopped
// before its database is dropped (the daemons fixture depends on db, so it ends first).
const it = test.extend<{ worker: Kysely<Database>; daemons: Daemon[] }>({
  worker: async ({ db }, use) => use(db.workerDb()),
  // Names db only to depend on it: vitest then ends this fixture before it drops the database.
  daemons: async ({ db }, use) => {
    const started: Daemon[] = [];
    await use(started);
    await Promise.all(started.map((d) => d.stop()));
  },
});

interface Row {
  id: string;
  status: string;
  ordering_seq: string | null;
  waiting: boolean;
  attempts: number;
  last_error: string | null;
}

async function rowsOf(db: TestDatabase, tenant: string, key: string): Promise<Row[]> {
  const r = await db.query<Row>(
    `SELECT id, status, ordering_seq::text, next_attempt_at = 'infinity' AS waiting, attempts, last_error
     FROM capacity_outbox WHERE restaurant_id = $1 AND ordering_key = $2 ORDER BY ordering_seq`,
    [tenant, key],
  );
  return r.rows;
}

async function claimAll(worker: Kysely<Database>, workerId = 'w1', leaseMs = 60_000): Promise<ClaimedRow[]> {
  return claimBatch(worker, { workerId, limit: 1000, leaseMs, maxPayloadBytes: 1_048_576 });
}

// As the dispatcher completes a keyed event: its key is settled with the outcome, in the same statement (migrations 0017, 0019).
const done = (r: ClaimedRow) => ({ id: r.id, createdAtKey: r.created_at_key, attempt: r.attempts, keyed: r.ordering_key !== null, outcome: { kind: 'done' as const } });

describe('the queue of one key', () => {
  it('makes only the head due, and the completion of the head promotes the next, in sequence order', async ({ db, worker }) => {
    const t = tenantId();
    const ids = await produce(db.producerUrl, t, [
      { type: 'booking.created', orderingKey: 'booking:1' },
      { type: 'booking.modified', orderingKey: 'booking:1' },
      { type: 'booking.cancelled', orderingKey: 'booking:1' },
      { type: 'table.held' }, // unkeyed: due at once
    ]);
    const rows = await rowsOf(db, t, 'booking:1');
    expect(rows.map((r) => r.id)).toEqual(ids.slice(0, 3));
    expect(rows.map((r) => r.waiting)).toEqual([false, true, true]);
    const seqs = rows.map((r) => BigInt(r.ordering_seq!));
    expect(seqs[0]! < seqs[1]! && seqs[1]! < seqs[2]!).toBe(true);

    for (let step = 0; step < 3; step++) {
      const claimed = await claimAll(worker);
      const keyed = claimed.filter((c) => c.ordering_key !== null);
      expect(keyed.map((c) => c.id)).toEqual([ids[step]]);
      expect(keyed[0]!.ordering_seq).toBe(rows[step]!.ordering_seq);
      if (step === 0) expect(claimed.filter((c) => c.ordering_key === null)).toHaveLength(1);
      expect(await completeBatch(worker, 'w1', claimed.map(done))).toEqual(new Set(claimed.map((c) => c.id)));
    }
    expect(await claimAll(worker)).toEqual([]);
    // The key's row is given up once nothing of the key is active.
    expect((await db.query('SELECT 1 FROM outbox_dispatcher.capacity_outbox_ordering_keys')).rowCount).toBe(0);
  });

  it('keeps the key waiting while the head retries: later events spend no attempts', async ({ db, worker }) => {
    const t = tenantId();
    const ids = await produce(db.producerUrl, t, [1, 2, 3].map((i) => ({ type: 'e', orderingKey: 'k', payload: { i } })));
    for (let attempt = 1; attempt <= 3; attempt++) {
      const [head] = await claimAll(worker);
      expect(head!.id).toBe(ids[0]);
      await completeBatch(worker, 'w1', [{ id: head!.id, createdAtKey: head!.created_at_key, attempt, outcome: { kind: 'retry', delayMs: 0, error: 'HTTP 503' } }]);
      const rows = await rowsOf(db, t, 'k');
      expect(rows.map((r) => [r.status, r.attempts, r.waiting])).toEqual([
        ['pending', attempt, false],
        ['pending', 0, true],
        ['pending', 0, true],
      ]);
    }
  });

  it('keys are per tenant and per key: other keys and unkeyed events keep their parallelism', async ({ db, worker }) => {
    const a = tenantId();
    const b = tenantId();
    await produce(db.producerUrl, a, [{ type: 'e', orderingKey: 'k' }, { type: 'e', orderingKey: 'k' }, { type: 'e', orderingKey: 'j' }, { type: 'e' }, { type: 'e' }]);
    await produce(db.producerUrl, b, [{ type: 'e', orderingKey: 'k' }]);
    const claimed = await claimAll(worker);
    expect(claimed).toHaveLength(5); // heads of a/k, a/j, b/k and both unkeyed
  });

  it('refuses an unusable ordering key with a clear error and keeps nothing of the transaction', async ({ db }) => {
    const t = tenantId();
    await expect(produce(db.producerUrl, t, [{ type: 'e', orderingKey: '' }])).rejects.toThrow(/invalid ordering_key/);
    await expect(produce(db.producerUrl, t, [{ type: 'e', orderingKey: 'x'.repeat(201) }])).rejects.toThrow(/invalid ordering_key/);
    await expect(produce(db.producerUrl, t, [{ type: 'e', orderingKey: 'a\nb' }])).rejects.toThrow(/invalid ordering_key/);
  });

  it('a producer cannot assign the sequence itself', async ({ db }) => {
    const t = tenantId();
    const c = new pg.Client({ connectionString: db.producerUrl });
    await c.connect();
    try {
      await c.query('BEGIN');
      await c.query('SELECT public.set_restaurant_context($1)', [t]);
      await expect(
        c.query(`INSERT INTO capacity_outbox (restaurant_id, event_type, ordering_key, ordering_seq) VALUES ($1, 'e', 'k', 1)`, [t]),
      ).rejects.toThrow(/permission denied/);
      await c.query('ROLLBACK');
    } finally {
      await c.end();
    }
  });
});

describe('overlapping producers of one key', () => {
  it('the second producer waits for the first; sequence order is commit order', async ({ db, daemons }) => {
    const t = tenantId();
    const tx1 = new pg.Client({ connectionString: db.producerUrl });
    const tx2 = new pg.Client({ connectionString: db.producerUrl });
    await tx1.connect();
    await tx2.connect();
    try {
      for (const c of [tx1, tx2]) {
        await c.query('BEGIN');
        await c.query('SELECT public.set_restaurant_context($1)', [t]);
      }
      const first = await tx1.query<{ id: string }>(`INSERT INTO capacity_outbox (restaurant_id, event_type, ordering_key, payload) VALUES ($1, 'booking.created', 'booking:7', '{"n":1}') RETURNING id`, [t]);
      const tx2Pid = (await tx2.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]!.pid;
      let tx2Inserted = false;
      const second = tx2
        .query<{ id: string }>(`INSERT INTO capacity_outbox (restaurant_id, event_type, ordering_key, payload) VALUES ($1, 'booking.cancelled', 'booking:7', '{"n":2}') RETURNING id`, [t])
        .then(async (r) => {
          tx2Inserted = true;
          await tx2.query('COMMIT'); // tx2 commits as soon as it can
          return r;
        });
      // tx2 is waiting on the key's lock, not merely slow.
      await waitFor(async () => (await db.query(`SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND wait_event_type = 'Lock'`, [tx2Pid])).rowCount === 1, { what: 'tx2 waiting for the key lock' });
      expect(tx2Inserted).toBe(false);
      // An unrelated key is not held up by tx1.
      await produce(db.producerUrl, t, [{ type: 'other', orderingKey: 'booking:8' }]);
      await tx1.query('COMMIT');
      const secondResult = await second;
      const rows = await rowsOf(db, t, 'booking:7');
      expect(rows.map((r) => r.id)).toEqual([first.rows[0]!.id, secondResult.rows[0]!.id]);
      expect(rows.map((r) => r.waiting)).toEqual([false, true]);

      const sink = recordingSink();
      daemons.push(await startDaemon(db, { sinks: { test: sink } }));
      await waitFor(() => sink.calls.filter((c) => c.event.orderingKey === 'booking:7').length === 2, { what: 'both delivered' });
      const seen = sink.calls.filter((c) => c.event.orderingKey === 'booking:7');
      expect(seen.map((c) => c.event.eventType)).toEqual(['booking.created', 'booking.cancelled']);
      expect(BigInt(seen[0]!.event.sequence!) < BigInt(seen[1]!.event.sequence!)).toBe(true);
      // One at a time: the second started only after the first finished.
      expect(seen[1]!.start).toBeGreaterThanOrEqual(seen[0]!.end);
    } finally {
      await tx1.end();
      await tx2.end();
    }
  });

  it('a completion never waits for a producer holding the key: the key is settled once the producer commits', async ({ db, worker }) => {
    const t = tenantId();
    const [h] = await produce(db.producerUrl, t, [{ type: 'e', orderingKey: 'k' }]);
    const [head] = await claimAll(worker);
    expect(head!.id).toBe(h);
    const p = new pg.Client({ connectionString: db.producerUrl });
    await p.connect();
    try {
      await p.query('BEGIN');
      await p.query('SELECT public.set_restaurant_context($1)', [t]);
      const next = await p.query<{ id: string }>(`INSERT INTO capacity_outbox (restaurant_id, event_type, ordering_key) VALUES ($1, 'e', 'k') RETURNING id`, [t]);
      // The producer holds the key's lock (open transaction); the completion goes through.
      expect(await completeBatch(worker, 'w1', [done(head!)])).toEqual(new Set([h]));
      expect((await db.query('SELECT 1 FROM outbox_dispatcher.capacity_outbox_ordering_unsettled')).rowCount).toBe(1);
      expect(await settlePendingKeys(worker, 100)).toBe(0); // still held: stays for later
      await p.query('COMMIT');
      expect(await settlePendingKeys(worker, 100)).toBe(1);
      expect((await claimAll(worker)).map((c) => c.id)).toEqual([next.rows[0]!.id]);
      expect((await db.query('SELECT 1 FROM outbox_dispatcher.capacity_outbox_ordering_unsettled')).rowCount).toBe(0);
    } finally {
      await p.end();
    }
  });

  it('a REPEATABLE READ producer that lost the race gets a serialization failure, never a wrong order', async ({ db }) => {
    const t = tenantId();
    const rr = new pg.Client({ connectionString: db.producerUrl });
    await rr.connect();
    try {
      await rr.query('BEGIN ISOLATION LEVEL REPEATABLE READ');
      await rr.query('SELECT public.set_restaurant_context($1)', [t]);
      await rr.query('SELECT count(*) FROM capacity_outbox'); // snapshot taken
      await produce(db.producerUrl, t, [{ type: 'e', orderingKey: 'k' }]); // committed after the snapshot
      await expect(rr.query(`INSERT INTO capacity_outbox (restaurant_id, event_type, ordering_key) VALUES ($1, 'e', 'k')`, [t])).rejects.toMatchObject({ code: '40001' });
      await rr.query('ROLLBACK');
    } finally {
      await rr.end();
    }
    // Retried, it queues behind the first.
    await produce(db.producerUrl, t, [{ type: 'e', orderingKey: 'k' }]);
    expect((await rowsOf(db, t, 'k')).map((r) => r.waiting)).toEqual([false, true]);
  });

  // The completion's settle locks key rows without rewriting them (migration 0019). A REPEATABLE
  // READ producer whose snapshot predates a settle must still never place an event wrongly.
  async function rrProducerAcross(db: TestDatabase, worker: Kysely<Database>, t: string, queued: number) {
    await produce(db.producerUrl, t, Array.from({ length: 1 + queued }, () => ({ type: 'e', orderingKey: 'k' })));
    const [head] = await claimAll(worker);
    const rr = new pg.Client({ connectionString: db.producerUrl });
    await rr.connect();
    try {
      await rr.query('BEGIN ISOLATION LEVEL REPEATABLE READ');
      await rr.query('SELECT public.set_restaurant_context($1)', [t]);
      await rr.query('SELECT count(*) FROM capacity_outbox'); // snapshot: the head still in flight
      expect(await completeBatch(worker, 'w1', [done(head!)])).toEqual(new Set([head!.id])); // settled after it
      const inserted = await rr
        .query(`INSERT INTO capacity_outbox (restaurant_id, event_type, ordering_key) VALUES ($1, 'e', 'k')`, [t])
        .then(() => rr.query('COMMIT').then(() => 'committed' as const))
        .catch(async (err: { code?: string }) => {
          await rr.query('ROLLBACK');
          return err.code;
        });
      return inserted;
    } finally {
      await rr.end();
    }
  }

  it('a REPEATABLE READ producer across a settle that promoted the next event queues behind it', async ({ db, worker }) => {
    const t = tenantId();
    expect(await rrProducerAcross(db, worker, t, 1)).toBe('committed');
    // Its stale snapshot saw an active event, and there is one: the promoted second.
    expect((await rowsOf(db, t, 'k')).map((r) => [r.status, r.waiting])).toEqual([
      ['done', false],
      ['pending', false],
      ['pending', true],
    ]);
  });

  it('a REPEATABLE READ producer across a settle that emptied the key gets a serialization failure, never a stuck event', async ({ db, worker }) => {
    const t = tenantId();
    // Its snapshot saw the head in flight; committed, its event would wait behind a finished one forever.
    expect(await rrProducerAcross(db, worker, t, 0)).toBe('40001');
    expect((await db.query('SELECT 1 FROM outbox_dispatcher.capacity_outbox_ordering_keys')).rowCount).toBe(0);
    await produce(db.producerUrl, t, [{ type: 'e', orderingKey: 'k' }]); // retried: due at once
    expect((await rowsOf(db, t, 'k')).map((r) => [r.status, r.waiting])).toEqual([
      ['done', false],
      ['pending', false],
    ]);
  });
});

describe('the batch settle (migration 0019)', () => {
  it('takes a key passed twice once, and recreates a key row that went missing', async ({ db, worker }) => {
    const t = tenantId();
    await produce(db.producerUrl, t, ['dup', 'dup', 'gone', 'gone'].map((k) => ({ type: 'e', orderingKey: k })));
    const claimed = await claimAll(worker);
    expect(claimed.map((c) => c.ordering_key).sort()).toEqual(['dup', 'gone']);
    await db.query(`DELETE FROM outbox_dispatcher.capacity_outbox_ordering_keys WHERE restaurant_id = $1 AND ordering_key = 'gone'`, [t]);
    const moved = await worker.transaction().execute(async (trx) => {
      await sql`SELECT set_config('outbox_dispatcher.completion_settles_keys', 'on', true)`.execute(trx);
      await completionStatement('w1', claimed.map(done)).execute(trx);
      const r = await sql<{ n: number }>`SELECT outbox_dispatcher.capacity_outbox_ordering_settle_keys(
          ${[t, t, t]}::uuid[], ${['dup', 'dup', 'gone']}::text[], '{}'::uuid[], '{}'::timestamptz[]) AS n`.execute(trx);
      return r.rows[0]!.n;
    });
    expect(moved).toBe(2);
    for (const key of ['dup', 'gone']) {
      expect((await rowsOf(db, t, key)).map((r) => [r.status, r.waiting])).toEqual([
        ['done', false],
        ['pending', false],
      ]);
    }
    const keys = await db.query('SELECT ordering_key FROM outbox_dispatcher.capacity_outbox_ordering_keys WHERE restaurant_id = $1 ORDER BY 1', [t]);
    expect(keys.rows.map((r) => r.ordering_key)).toEqual(['dup', 'gone']);
    expect((await db.query('SELECT 1 FROM outbox_dispatcher.capacity_outbox_ordering_unsettled')).rowCount).toBe(0);
  });

  it('the previous release\'s entry point (event ids) settles the same way, through the same function', async ({ db, worker }) => {
    const t = tenantId();
    await produce(db.producerUrl, t, ['a', 'a', 'b', 'b', 'c'].map((k) => ({ type: 'e', orderingKey: k })));
    const claimed = await claimAll(worker);
    expect(claimed.map((c) => c.ordering_key).sort()).toEqual(['a', 'b', 'c']);
    const outcomes = claimed.map((c) => (c.ordering_key === 'b' ? { ...done(c), outcome: { kind: 'dead' as const, error: 'x', reason: 'permanent' as const } } : done(c)));
    await worker.transaction().execute(async (trx) => {
      await sql`SELECT set_config('outbox_dispatcher.completion_settles_keys', 'on', true)`.execute(trx);
      await completionStatement('w1', outcomes).execute(trx);
      await sql`SELECT outbox_dispatcher.capacity_outbox_ordering_settle_completed(${claimed.map((c) => c.id)}::uuid[], ${claimed.map((c) => c.created_at_key)}::timestamptz[])`.execute(trx);
    });
    expect((await rowsOf(db, t, 'a')).map((r) => [r.status, r.waiting])).toEqual([['done', false], ['pending', false]]);
    expect((await rowsOf(db, t, 'b')).map((r) => [r.status, r.waiting])).toEqual([['dead', false], ['pending', true]]); // blocked
    expect((await rowsOf(db, t, 'c')).map((r) => r.status)).toEqual(['done']);
    const keys = await db.query('SELECT ordering_key FROM outbox_dispatcher.capacity_outbox_ordering_keys WHERE restaurant_id = $1 ORDER BY 1', [t]);
    expect(keys.rows.map((r) => r.ordering_key)).toEqual(['a', 'b']); // c gave its row up
    const blocked = await db.query('SELECT ordering_key FROM outbox_dispatcher.capacity_outbox_ordering_blocked WHERE restaurant_id = $1', [t]);
    expect(blocked.rows.map((r) => r.ordering_key)).toEqual(['b']);
  });
});

describe('the completion and its settle in one statement', () => {
  it('settles every finished key once, through the batch settle and never the row trigger, in one round trip', async ({ db, worker }) => {
    const t = tenantId();
    await produce(db.producerUrl, t, ['a', 'a', 'b', 'b', 'c', 'd', 'd'].map((k) => ({ type: 'e', orderingKey: k })));
    const claimed = await claimAll(worker);
    expect(claimed.map((c) => c.ordering_key).sort()).toEqual(['a', 'b', 'c', 'd']);
    const outcomes = claimed.map((c) =>
      c.ordering_key === 'b' ? { ...done(c), outcome: { kind: 'dead' as const, error: 'x', reason: 'permanent' as const } }
      : c.ordering_key === 'd' ? { ...done(c), outcome: { kind: 'retry' as const, delayMs: 0, error: 'HTTP 503' } }
      : done(c));
    // Function call counts of this transaction (track_functions is a superuser setting, so this
    // session runs the worker's statement as the owner; the worker's own runs are the tests above).
    const q = settledCompletionStatement('w1', outcomes).compile(worker);
    const c = new pg.Client(db.adminUrl);
    await c.connect();
    try {
      await c.query("SET track_functions = 'pl'");
      await c.query('BEGIN');
      const r = await c.query(q.sql, q.parameters as unknown[]);
      expect(r.rows.map((x) => x.id).sort()).toEqual(claimed.map((x) => x.id).sort());
      const calls = await c.query(`SELECT
          COALESCE(pg_stat_get_xact_function_calls('outbox_dispatcher.capacity_outbox_ordering_settle()'::regprocedure), 0)::int AS row_trigger,
          pg_stat_get_xact_function_calls('outbox_dispatcher.capacity_outbox_ordering_settle_keys(uuid[],text[],uuid[],timestamptz[])'::regprocedure)::int AS batch,
          current_setting('outbox_dispatcher.completion_settles_keys', true) AS flag`);
      expect(calls.rows[0]).toEqual({ row_trigger: 0, batch: 1, flag: 'off' });
      await c.query('COMMIT');
    } finally {
      await c.end();
    }
    expect((await rowsOf(db, t, 'a')).map((r) => [r.status, r.waiting])).toEqual([['done', false], ['pending', false]]);
    expect((await rowsOf(db, t, 'b')).map((r) => [r.status, r.waiting])).toEqual([['dead', false], ['pending', true]]); // blocked
    expect((await rowsOf(db, t, 'c')).map((r) => r.status)).toEqual(['done']);
    expect((await rowsOf(db, t, 'd')).map((r) => [r.status, r.waiting])).toEqual([['pending', false], ['pending', true]]); // the head retries
    const keys = await db.query('SELECT ordering_key FROM outbox_dispatcher.capacity_outbox_ordering_keys WHERE restaurant_id = $1 ORDER BY 1', [t]);
    expect(keys.rows.map((r) => r.ordering_key)).toEqual(['a', 'b', 'd']); // c gave its row up
    const blocked = await db.query('SELECT ordering_key FROM outbox_dispatcher.capacity_outbox_ordering_blocked WHERE restaurant_id = $1', [t]);
    expect(blocked.rows.map((r) => r.ordering_key)).toEqual(['b']);
  });

  it('is what completeBatch runs as the daemon\'s login: outcomes written, next events due, nothing left unsettled', async ({ db, worker }) => {
    const t = tenantId();
    await produce(db.producerUrl, t, ['a', 'a', 'a', 'b', 'b'].map((k) => ({ type: 'e', orderingKey: k })));
    // Every statement Kysely sends (BEGIN and COMMIT of a transaction are the driver's, not these).
    const sent: string[] = [];
    const counted = worker.withPlugin({
      transformQuery: (args) => {
        sent.push(args.node.kind);
        return args.node;
      },
      transformResult: async (args) => args.result,
    });
    for (let round = 0; round < 3; round++) {
      const claimed = await claimAll(worker);
      if (claimed.length === 0) break;
      sent.length = 0;
      const applied = await completeBatch(counted, 'w1', claimed.map((c) => ({ ...done(c), keyed: true })));
      expect(applied.size).toBe(claimed.length);
      expect(sent).toEqual(['RawNode']); // one statement, not the transaction's three
    }
    expect((await rowsOf(db, t, 'a')).map((r) => r.status)).toEqual(['done', 'done', 'done']);
    expect((await rowsOf(db, t, 'b')).map((r) => r.status)).toEqual(['done', 'done']);
    expect((await db.query('SELECT 1 FROM outbox_dispatcher.capacity_outbox_ordering_keys WHERE restaurant_id = $1', [t])).rowCount).toBe(0);
    expect((await db.query('SELECT 1 FROM outbox_dispatcher.capacity_outbox_ordering_unsettled')).rowCount).toBe(0);
  });
});

describe('dedupe, rescue, partitions', () => {
  it('a duplicate of a queued keyed event is dropped without taking a sequence; a newer one queued behind an in-flight head supersedes it and moves the key on', async ({ db, worker }) => {
    const t = tenantId();
    const [h] = await produce(db.producerUrl, t, [{ type: 'booking.state', orderingKey: 'b', dedupeKey: 'b' }]);
    expect(await produce(db.producerUrl, t, [{ type: 'booking.state', orderingKey: 'b', dedupeKey: 'b' }])).toEqual([]);
    expect(await rowsOf(db, t, 'b')).toHaveLength(1);
    const [head] = await claimAll(worker);
    expect(head!.id).toBe(h);
    const [n] = await produce(db.producerUrl, t, [{ type: 'booking.state', orderingKey: 'b', dedupeKey: 'b' }]);
    expect((await rowsOf(db, t, 'b')).map((r) => [r.id, r.waiting])).toEqual([[h, false], [n, true]]);
    // The head fails and goes back to pending: superseded by the newer event, which becomes due.
    await completeBatch(worker, 'w1', [{ id: head!.id, createdAtKey: head!.created_at_key, attempt: 1, outcome: { kind: 'retry', delayMs: 0, error: 'HTTP 503' } }]);
    const rows = await rowsOf(db, t, 'b');
    expect(rows.map((r) => [r.id, r.status, r.waiting])).toEqual([[h, 'done', false], [n, 'pending', false]]);
    expect((await claimAll(worker)).map((c) => c.id)).toEqual([n]);
  });

  it('a batch holding two outcomes of a redelivered head settles its key by the one applied (review finding)', async ({ db, worker }) => {
    const t = tenantId();
    const ids = await produce(db.producerUrl, t, [{ type: 'e', orderingKey: 'k' }, { type: 'e', orderingKey: 'k' }]);
    const [first] = await claimBatch(worker, { workerId: 'w1', limit: 10, leaseMs: 1, maxPayloadBytes: 1_048_576 });
    await new Promise((r) => setTimeout(r, 20));
    await rescueExpiredLeases(worker, { limit: 100, maxAttempts: 10, retryHorizonMs: 0 });
    const [second] = await claimAll(worker);
    expect([first!.attempts, second!.attempts, second!.id]).toEqual([1, 2, ids[0]]);
    // Attempt 2 delivered, then attempt 1's slow send ends in a retry; both in one batch, the stale one last.
    const applied = await completeBatch(worker, 'w1', [
      done(second!),
      { ...done(first!), outcome: { kind: 'retry', delayMs: 0, error: 'HTTP 503' } },
    ]);
    expect(applied).toEqual(new Set([ids[0]]));
    expect((await rowsOf(db, t, 'k')).map((r) => [r.status, r.waiting])).toEqual([
      ['done', false],
      ['pending', false], // promoted, not left waiting for good
    ]);
  });

  it('an expired lease returns the head to pending as the head; the next never overtakes it', async ({ db, worker }) => {
    const t = tenantId();
    const ids = await produce(db.producerUrl, t, [{ type: 'e', orderingKey: 'k' }, { type: 'e', orderingKey: 'k' }]);
    const [head] = await claimBatch(worker, { workerId: 'dead-worker', limit: 10, leaseMs: 1, maxPayloadBytes: 1_048_576 });
    expect(head!.id).toBe(ids[0]);
    await new Promise((r) => setTimeout(r, 20));
    expect(await rescueExpiredLeases(worker, { limit: 100, maxAttempts: 10, retryHorizonMs: 0 })).toEqual({ requeued: 1, deadLettered: 0 });
    expect((await claimAll(worker)).map((c) => c.id)).toEqual([ids[0]]);
  });

  it('a lease expiring on the last attempt dead-letters the head and blocks the key (route default)', async ({ db, worker }) => {
    const t = tenantId();
    const ids = await produce(db.producerUrl, t, [{ type: 'e', orderingKey: 'k' }, { type: 'e', orderingKey: 'k' }]);
    await claimBatch(worker, { workerId: 'dead-worker', limit: 10, leaseMs: 1, maxPayloadBytes: 1_048_576 });
    await new Promise((r) => setTimeout(r, 20));
    expect(await rescueExpiredLeases(worker, { limit: 100, maxAttempts: 1, retryHorizonMs: 0 })).toEqual({ requeued: 0, deadLettered: 1 });
    const blocked = await db.query('SELECT event_id FROM outbox_dispatcher.capacity_outbox_ordering_blocked WHERE restaurant_id = $1', [t]);
    expect(blocked.rows).toEqual([{ event_id: ids[0] }]);
    expect(await claimAll(worker)).toEqual([]);
    // With the skip policy the key moves on in the same transaction.
    const [j] = await produce(db.producerUrl, t, [{ type: 'e', orderingKey: 'j' }, { type: 'e', orderingKey: 'j' }]);
    await claimBatch(worker, { workerId: 'dead-worker', limit: 10, leaseMs: 1, maxPayloadBytes: 1_048_576 });
    await new Promise((r) => setTimeout(r, 20));
    await rescueExpiredLeases(worker, { limit: 100, maxAttempts: 1, retryHorizonMs: 0, skipKeyOnDead: () => true });
    const jRows = await rowsOf(db, t, 'j');
    expect(jRows.map((r) => [r.status, r.waiting])).toEqual([['dead', false], ['pending', false]]);
    expect(jRows[0]!.id).toBe(j);
    expect(jRows[0]!.last_error).toMatch(/^skipped \(ordering key moved on: route ordering.onDeadHead = skip\)/);
  });

  it('keeps its place when partition rotation moves a key’s events out of the default partition', async ({ db, worker }) => {
    const t = tenantId();
    // A month with no partition yet: the rows land in the default partition.
    const month = '2031-03-01';
    const c = new pg.Client({ connectionString: db.producerUrl });
    await c.connect();
    try {
      await c.query('BEGIN');
      await c.query('SELECT public.set_restaurant_context($1)', [t]);
      for (let i = 0; i < 3; i++) {
        await c.query(`INSERT INTO capacity_outbox (restaurant_id, event_type, ordering_key, payload) VALUES ($1, 'e', 'k', $2)`, [t, JSON.stringify({ i })]);
      }
      await c.query('COMMIT');
    } finally {
      await c.end();
    }
    // Events of one key spanning the current month and the default partition.
    await db.query(`UPDATE capacity_outbox SET created_at = $1::timestamptz + (ordering_seq % 1000) * interval '1 second' WHERE ordering_key = 'k' AND next_attempt_at = 'infinity'`, [month]);
    const before = await db.query(`SELECT id, ordering_seq::text, next_attempt_at = 'infinity' AS waiting, tableoid::regclass::text AS part FROM capacity_outbox WHERE ordering_key = 'k' ORDER BY ordering_seq`);
    expect(before.rows.filter((r) => r.part === 'capacity_outbox_default')).toHaveLength(2);
    await db.query(`SELECT outbox_dispatcher.partition_create('public.capacity_outbox', $1::date, false)`, [month]);
    const after = await db.query(`SELECT id, ordering_seq::text, next_attempt_at = 'infinity' AS waiting, tableoid::regclass::text AS part FROM capacity_outbox WHERE ordering_key = 'k' ORDER BY ordering_seq`);
    expect(after.rows.map((r) => [r.id, r.ordering_seq, r.waiting])).toEqual(before.rows.map((r) => [r.id, r.ordering_seq, r.waiting]));
    expect(after.rows.filter((r) => r.part === 'capacity_outbox_default')).toHaveLength(0);
    for (let i = 0; i < 3; i++) {
      const claimed = await claimAll(worker);
      expect(claimed.map((r) => r.id)).toEqual([before.rows[i].id]);
      await completeBatch(worker, 'w1', claimed.map(done));
    }
  });
});

describe('a dead head: block and skip', { timeout: 240_000 }, () => {
  const routes = (onDeadHead: 'block' | 'skip') => ({
    routes: [{ match: '*', sink: { type: 'noop' as const, name: 'test' }, ordering: { onDeadHead } }],
  });
  const env = (db: TestDatabase) => ({ DATABASE_URL: db.workerUrl, LOG_LEVEL: 'warn' });

  it('block (default): the key waits, other keys flow; listed by events blocked; events replay unblocks in order', async ({ db, daemons }) => {
    const t = tenantId();
    let failHead = true;
    const sink = recordingSink('test', (e) => {
      if (failHead && e.payload.n === 1 && e.orderingKey === 'booking:1') throw new PermanentDispatchError('HTTP 400: rejected');
    });
    daemons.push(await startDaemon(db, { routes: { routes: [{ match: '*', sink: { type: 'noop', name: 'test' } }] }, sinks: { test: sink } }));
    const ids = await produce(db.producerUrl, t, [1, 2, 3].map((n) => ({ type: 'booking.x', orderingKey: 'booking:1', payload: { n } })));
    await produce(db.producerUrl, t, [1, 2].map((n) => ({ type: 'booking.x', orderingKey: 'booking:2', payload: { n } })));
    await waitFor(() => sink.calls.filter((c) => c.event.orderingKey === 'booking:2').length === 2, { what: 'other key delivered' });
    await waitFor(async () => (await rowsOf(db, t, 'booking:1'))[0]!.status === 'dead', { what: 'head dead' });
    expect(sink.calls.filter((c) => c.event.orderingKey === 'booking:1').map((c) => c.event.payload.n)).toEqual([1]);

    const listed = await runCli(['events', 'blocked', '--json'], env(db));
    expect(listed.stderr).toBe('');
    expect(listed.code).toBe(0);
    const blocked = JSON.parse(listed.stdout).blocked;
    expect(blocked).toHaveLength(1);
    expect(blocked[0]).toMatchObject({ restaurant_id: t, ordering_key: 'booking:1', head_event_id: ids[0], head_event_type: 'booking.x', waiting: 2 });
    expect(blocked[0].last_error).toMatch(/HTTP 400/);
    expect(Date.parse(blocked[0].blocked_since)).not.toBeNaN();
    const text = await runCli(['events', 'blocked'], env(db));
    expect(text.stdout).toContain('booking:1');
    expect(text.stdout).toContain(ids[0]);

    failHead = false;
    const replay = await runCli(['events', 'replay', '--id', ids[0]!], env(db));
    expect(replay.code).toBe(0);
    await waitFor(() => sink.calls.filter((c) => c.event.orderingKey === 'booking:1').length === 4, { what: 'key drained' });
    const seen = sink.calls.filter((c) => c.event.orderingKey === 'booking:1');
    expect(seen.map((c) => c.event.payload.n)).toEqual([1, 1, 2, 3]);
    expect(seen[0]!.event.sequence).toBe(seen[1]!.event.sequence); // the replayed head keeps its place
    expect(JSON.parse((await runCli(['events', 'blocked', '--json'], env(db))).stdout).blocked).toEqual([]);
  });

  it('events skip leaves the head dead and delivers the rest in order; a non-blocking id is refused', async ({ db, daemons }) => {
    const t = tenantId();
    const sink = recordingSink('test', (e) => {
      if (e.payload.n === 1) throw new PermanentDispatchError('HTTP 422');
    });
    daemons.push(await startDaemon(db, { routes: routes('block'), sinks: { test: sink } }));
    const ids = await produce(db.producerUrl, t, [1, 2, 3].map((n) => ({ type: 'e', orderingKey: 'k', payload: { n } })));
    await waitFor(async () => (await rowsOf(db, t, 'k'))[0]!.status === 'dead', { what: 'head dead' });
    const wrong = await runCli(['events', 'skip', '--id', ids[1]!], env(db));
    expect(wrong.code).toBe(1);
    expect(wrong.stderr).toBe('');
    expect(wrong.stdout).toMatch(/does not block an ordering key/);
    const skip = await runCli(['events', 'skip', '--id', ids[0]!, '--json'], env(db));
    expect(skip.code).toBe(0);
    expect(JSON.parse(skip.stdout)).toEqual({ results: [{ id: ids[0], result: 'skipped' }] });
    await waitFor(() => sink.calls.filter((c) => c.event.payload.n !== 1).length === 2, { what: 'rest delivered' });
    expect(sink.calls.map((c) => c.event.payload.n)).toEqual([1, 2, 3]);
    // The last outcome is written by the completer shortly after the send.
    await waitFor(async () => (await rowsOf(db, t, 'k')).map((r) => r.status).join() === 'dead,done,done', { what: 'outcomes written' });
  });

  it('skip policy: a dead head is set aside at once and the key moves on', async ({ db, daemons }) => {
    const t = tenantId();
    const sink = recordingSink('test', (e) => {
      if (e.payload.n === 2) throw new PermanentDispatchError('HTTP 400');
      if (e.payload.n === 3 && e.attempt < 3) throw new RetryableDispatchError('HTTP 503');
    });
    daemons.push(await startDaemon(db, { routes: routes('skip'), sinks: { test: sink } }));
    await produce(db.producerUrl, t, [1, 2, 3, 4].map((n) => ({ type: 'e', orderingKey: 'k', payload: { n } })));
    await waitFor(async () => (await rowsOf(db, t, 'k')).every((r) => r.status === 'done' || r.status === 'dead'), { what: 'key drained' });
    expect(sink.calls.map((c) => c.event.payload.n)).toEqual([1, 2, 3, 3, 3, 4]);
    const rows = await rowsOf(db, t, 'k');
    expect(rows.map((r) => r.status)).toEqual(['done', 'dead', 'done', 'done']);
    expect(rows[1]!.last_error).toMatch(/skipped/);
    expect((await db.query('SELECT 1 FROM outbox_dispatcher.capacity_outbox_ordering_keys')).rowCount).toBe(0);
  });

  it('rejects an unknown onDeadHead in the routes file, naming the key', async ({ db }) => {
    const r = await runCli(['run'], {
      DATABASE_URL: db.workerUrl,
      OUTBOX_ROUTES: JSON.stringify({ routes: [{ match: '*', sink: { type: 'noop' }, ordering: { onDeadHead: 'drop' } }] }),
    });
    expect(r.code).toBe(78);
    expect(r.stdout + r.stderr).toMatch(/OUTBOX_ROUTES.*ordering\.onDeadHead/s);
  });
});
