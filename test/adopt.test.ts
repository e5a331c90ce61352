import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { migrate } from '../src/db/migrator.ts';
import { createKysely, createPool } from '../src/db/pool.ts';
import { claimBatch, completeBatch } from '../src/db/queries/outbox.ts';
import { createLogger } from '../src/kernel/log.ts';
import { adoptTable, AdoptError } from '../src/partitions/adopt.ts';
import { PartitionRotator } from '../src/partitions/rotator.ts';
import { asRole, createEmptyDatabase, produce, tenantId, waitFor } from './support/db.ts';
import { createOwnedDatabase, type OwnedDatabase } from './support/owned-db.ts';

let target: Awaited<ReturnType<typeof createEmptyDatabase>>;
let admin: pg.Client;
const log = createLogger('silent');

beforeAll(async () => {
  target = await createEmptyDatabase();
  admin = new pg.Client(target.url);
  await admin.connect();
  // A team's existing, plain outbox with a subset of the contract's columns and history.
  await admin.query(`
    CREATE TABLE public.capacity_outbox (
      id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
      restaurant_id uuid NOT NULL,
      event_type text NOT NULL,
      payload jsonb NOT NULL DEFAULT '{}',
      status text NOT NULL DEFAULT 'pending',
      created_at timestamptz NOT NULL DEFAULT now()
    );
    INSERT INTO public.capacity_outbox (restaurant_id, event_type, status, created_at)
    SELECT gen_random_uuid(), 'legacy.e' || (g % 3), CASE WHEN g % 10 = 0 THEN 'pending' ELSE 'done' END,
           now() - (g % 80) * interval '1 day'
    FROM generate_series(1, 20000) g;
  `);
  await migrate(admin);
});
afterAll(async () => {
  await admin.end();
  await target.drop();
});

describe('partitions adopt', () => {
  it('converts a populated plain table online while producers and a worker keep writing, losing no row', async () => {
    const relkind = async () => (await admin.query(`SELECT relkind FROM pg_class WHERE oid = 'public.capacity_outbox'::regclass`)).rows[0].relkind;
    expect(await relkind()).toBe('r');
    const worker = createKysely(createPool({ connectionString: asRole(target.url, 'worker'), max: 2, applicationName: 't' }));

    let stop = false;
    const produced: string[] = [];
    const completed = new Set<string>();
    const tenant = tenantId();
    const producer = (async () => {
      let i = 0;
      while (!stop) {
        produced.push(...(await produce(asRole(target.url, 'producer'), tenant, Array.from({ length: 20 }, () => ({ type: 'live.e', payload: { i: i++ } })))));
      }
    })();
    const dispatcher = (async () => {
      // Like the daemon, it retries a statement that lost a deadlock against the copy.
      let claimed: Awaited<ReturnType<typeof claimBatch>> = [];
      while (!stop || claimed.length > 0) {
        try {
          if (claimed.length === 0) claimed = await claimBatch(worker, { workerId: 'w', limit: 50, leaseMs: 60_000, maxPayloadBytes: 1_048_576 });
          const done = claimed.map((r) => ({ id: r.id, createdAtKey: r.created_at_key, attempt: r.attempts, outcome: { kind: 'done' as const } }));
          for (const id of await completeBatch(worker, 'w', done)) completed.add(id);
          claimed = [];
        } catch (err) {
          if ((err as { code?: string }).code !== '40P01') throw err;
        }
        await new Promise((r) => setTimeout(r, 5));
      }
    })();

    const steps: string[] = [];
    let result;
    try {
      await new Promise((r) => setTimeout(r, 200));
      result = await adoptTable(admin, log, { table: 'capacity_outbox', batchSize: 1500, onStep: (m) => steps.push(m) });
      await new Promise((r) => setTimeout(r, 300)); // writes keep landing after the swap
    } finally {
      stop = true;
      await Promise.all([producer, dispatcher]);
    }

    expect(await relkind()).toBe('p');
    expect(result!.backupTable).toBe('public.capacity_outbox_unpartitioned');
    expect(steps.at(-1)).toMatch(/^done: public\.capacity_outbox is partitioned/);
    const total = await admin.query<{ n: string }>('SELECT count(*) AS n FROM capacity_outbox');
    expect(Number(total.rows[0]!.n)).toBe(20000 + produced.length);
    const missing = await admin.query('SELECT count(*)::int AS n FROM unnest($1::uuid[]) p(id) WHERE NOT EXISTS (SELECT 1 FROM capacity_outbox o WHERE o.id = p.id)', [produced]);
    expect(missing.rows[0].n).toBe(0);
    // Every completion the worker made, before or after the swap, is in the new table.
    const notDone = await admin.query(`SELECT count(*)::int AS n FROM capacity_outbox WHERE id = ANY($1::uuid[]) AND status <> 'done'`, [[...completed]]);
    expect(notDone.rows[0].n).toBe(0);
    expect(completed.size).toBeGreaterThan(0);

    // Rows sit in monthly partitions, none in the default.
    const spread = await admin.query(`SELECT count(*)::int AS n FROM capacity_outbox_default`);
    expect(spread.rows[0].n).toBe(0);
    // Triggers, RLS and grants came along: dedupe and NOTIFY work, the worker still claims.
    const { rows: trig } = await admin.query(`SELECT tgname FROM pg_trigger WHERE tgrelid = 'public.capacity_outbox'::regclass AND NOT tgisinternal ORDER BY 1`);
    expect(trig.map((t) => t.tgname)).toEqual([
      'capacity_outbox_dedupe_delete', 'capacity_outbox_dedupe_insert', 'capacity_outbox_dedupe_reactivate', 'capacity_outbox_dedupe_release', 'capacity_outbox_notify_insert',
      'capacity_outbox_ordering_insert', 'capacity_outbox_ordering_reactivate', 'capacity_outbox_ordering_settle',
    ]);
    const { rows: sec } = await admin.query(`SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE oid = 'public.capacity_outbox'::regclass`);
    expect(sec[0]).toEqual({ relrowsecurity: true, relforcerowsecurity: true });
    expect(await produce(asRole(target.url, 'producer'), tenant, [{ type: 'x', dedupeKey: 'k' }, { type: 'x', dedupeKey: 'k' }])).toHaveLength(1);
    expect((await claimBatch(worker, { workerId: 'w2', limit: 10, leaseMs: 1000, maxPayloadBytes: 1_048_576 })).length).toBeGreaterThan(0);
    const { rows: idx } = await admin.query(`SELECT indexrelid::regclass::text AS name FROM pg_index WHERE indrelid = 'public.capacity_outbox'::regclass ORDER BY 1`);
    expect(idx.map((r) => r.name)).toEqual(['capacity_outbox_dispatch_idx', 'capacity_outbox_ordering_idx', 'capacity_outbox_pkey', 'capacity_outbox_tenant_due_idx']);
    // Rotation now manages it.
    const report = await new PartitionRotator(worker, log).runOnce();
    expect(report.tables[0]!.errors).toEqual([]);
    await worker.destroy();

    await expect(adoptTable(admin, log, { table: 'capacity_outbox' })).rejects.toThrow(AdoptError);
  });
});

describe('the swap pattern adopt relies on (control, repro 19)', () => {
  it('a write queued behind the swap lock re-resolves the name and lands in the table swapped in (simple and prepared statements)', async () => {
    await admin.query('DROP TABLE IF EXISTS rv_plain, rv_twin, rv_backup; CREATE TABLE rv_plain (a int); CREATE TABLE rv_twin (a int)');
    const swapper = new pg.Client(target.url);
    const writer = new pg.Client(target.url);
    const prepared = new pg.Client(target.url);
    await Promise.all([swapper.connect(), writer.connect(), prepared.connect()]);
    try {
      // Planned (and cached) before the swap.
      await prepared.query({ name: 'ins', text: 'INSERT INTO rv_plain VALUES ($1)', values: [0] });
      await swapper.query('BEGIN');
      await swapper.query('LOCK rv_plain IN ACCESS EXCLUSIVE MODE');
      const queued = [writer.query('INSERT INTO rv_plain VALUES (1)'), prepared.query({ name: 'ins', text: 'INSERT INTO rv_plain VALUES ($1)', values: [2] })];
      await waitFor(async () => (await admin.query(`SELECT count(*)::int AS n FROM pg_locks WHERE NOT granted AND relation = 'rv_plain'::regclass`)).rows[0].n === 2, { what: 'both writes queued' });
      await swapper.query('ALTER TABLE rv_plain RENAME TO rv_backup');
      await swapper.query('ALTER TABLE rv_twin RENAME TO rv_plain');
      await swapper.query('COMMIT');
      await Promise.all(queued);
      const { rows } = await admin.query(`SELECT (SELECT array_agg(a ORDER BY a) FROM rv_backup) AS old, (SELECT array_agg(a ORDER BY a) FROM rv_plain) AS new`);
      expect(rows[0]).toEqual({ old: [0], new: [1, 2] });
    } finally {
      await Promise.all([swapper.end(), writer.end(), prepared.end()]);
      await admin.query('DROP TABLE IF EXISTS rv_plain, rv_twin, rv_backup');
    }
  });
});

describe('partitions adopt is resumable (repro 08), as a non-superuser owner with producers inserting', () => {
  const plain = async (owner: pg.Client) => {
    await owner.query(`CREATE TABLE public.capacity_outbox (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), restaurant_id uuid NOT NULL,
      event_type text NOT NULL, payload jsonb NOT NULL DEFAULT '{}', status text NOT NULL DEFAULT 'pending', created_at timestamptz NOT NULL DEFAULT now())`);
    await owner.query(`INSERT INTO public.capacity_outbox (restaurant_id, event_type, status, created_at)
      SELECT gen_random_uuid(), 'legacy', CASE WHEN g % 5 = 0 THEN 'pending' ELSE 'done' END, now() - (g % 400) * interval '1 day'
      FROM generate_series(1, 3000) g`);
  };

  /** A producer's business transactions, one event each, until stopped; every failure is kept. */
  function producerLoop(url: string) {
    let stop = false;
    const ids: string[] = [];
    const errors: string[] = [];
    const tenant = tenantId();
    const done = (async () => {
      const c = new pg.Client(url);
      await c.connect();
      try {
        while (!stop) {
          try {
            await c.query('BEGIN');
            await c.query('SELECT public.set_restaurant_context($1)', [tenant]);
            const r = await c.query<{ id: string }>(`INSERT INTO capacity_outbox (restaurant_id, event_type) VALUES ($1, 'live') RETURNING id`, [tenant]);
            await c.query('COMMIT');
            ids.push(r.rows[0]!.id);
          } catch (err) {
            errors.push((err as Error).message);
            await c.query('ROLLBACK').catch(() => undefined);
          }
          await new Promise((r) => setTimeout(r, 2));
        }
      } finally {
        await c.end();
      }
    })();
    return { ids, errors, stop: async () => { stop = true; await done; } };
  }

  async function verify(db: OwnedDatabase, produced: string[], rowsAtSwap: number) {
    const { rows } = await db.query(`SELECT (SELECT relkind FROM pg_class WHERE oid = 'public.capacity_outbox'::regclass) AS kind,
      (SELECT count(*)::int FROM capacity_outbox) AS n, (SELECT count(*)::int FROM capacity_outbox_unpartitioned) AS backup`);
    // Every row: the history and everything produced before, during and after the swap; the
    // backup holds exactly what was there at the swap.
    expect(rows[0]).toEqual({ kind: 'p', n: 3000 + produced.length, backup: rowsAtSwap });
    const missing = await db.query('SELECT count(*)::int AS n FROM unnest($1::uuid[]) p(id) WHERE NOT EXISTS (SELECT 1 FROM capacity_outbox o WHERE o.id = p.id)', [produced]);
    expect(missing.rows[0].n).toBe(0);
    const trig = await db.query(`SELECT tgname FROM pg_trigger WHERE tgrelid = 'public.capacity_outbox'::regclass AND NOT tgisinternal ORDER BY 1`);
    expect(trig.rows.map((t) => t.tgname)).toEqual([
      'capacity_outbox_dedupe_delete', 'capacity_outbox_dedupe_insert', 'capacity_outbox_dedupe_reactivate', 'capacity_outbox_dedupe_release', 'capacity_outbox_notify_insert',
      'capacity_outbox_ordering_insert', 'capacity_outbox_ordering_reactivate', 'capacity_outbox_ordering_settle',
    ]);
    expect((await db.query(`SELECT count(*)::int AS n FROM pg_proc WHERE proname LIKE 'adopt_sync_%'`)).rows[0].n).toBe(0);
    const idx = await db.query(`SELECT indexrelid::regclass::text AS name FROM pg_index WHERE indrelid = 'public.capacity_outbox'::regclass ORDER BY 1`);
    expect(idx.rows.map((r) => r.name)).toEqual(['capacity_outbox_dispatch_idx', 'capacity_outbox_ordering_idx', 'capacity_outbox_pkey', 'capacity_outbox_tenant_due_idx']);
  }

  for (const failAt of ['inspect', 'twin', 'backfill'] as const) {
    it(`fails after "${failAt}", and a rerun completes without a failed producer write or a lost event`, async () => {
      const db = await createOwnedDatabase({ beforeMigrate: plain });
      const producer = producerLoop(db.producerUrl);
      const owner = new pg.Client(db.ownerUrl);
      await owner.connect();
      let rowsAtSwap = 0;
      try {
        await waitFor(() => producer.ids.length > 5, { what: 'producer running' });
        await expect(
          adoptTable(owner, log, { table: 'capacity_outbox', batchSize: 700, afterStep: (s) => { if (s === failAt) throw new Error(`injected failure after ${s}`); } }),
        ).rejects.toThrow(`injected failure after ${failAt}`);
        const before = producer.ids.length;
        await waitFor(() => producer.ids.length > before + 5, { what: 'producer still writing between the runs' });
        const r = await adoptTable(owner, log, { table: 'capacity_outbox', batchSize: 700 });
        expect(r.resumed).toBe(failAt !== 'inspect');
        rowsAtSwap = r.rowsAtSwap;
        const after = producer.ids.length;
        await waitFor(() => producer.ids.length > after + 5, { what: 'producer writing after the swap' });
      } finally {
        await producer.stop();
        await owner.end();
      }
      try {
        expect(producer.errors).toEqual([]);
        expect(rowsAtSwap).toBeGreaterThan(3000); // producers wrote during the adopt
        await verify(db, producer.ids, rowsAtSwap);
      } finally {
        await db.drop();
      }
    });
  }

  it('repairs the state the old rerun left (mirror trigger live, twin gone) in one transaction', async () => {
    const db = await createOwnedDatabase({ beforeMigrate: plain });
    const owner = new pg.Client(db.ownerUrl);
    await owner.connect();
    try {
      await expect(adoptTable(owner, log, { table: 'capacity_outbox', afterStep: (s) => { if (s === 'twin') throw new Error('stop'); } })).rejects.toThrow('stop');
      await owner.query('DROP TABLE public.capacity_outbox__partitioned');
      // This is what producers saw between the old rerun's DROP and its new twin.
      await expect(produce(db.producerUrl, tenantId(), [{ type: 'x' }])).rejects.toThrow(/capacity_outbox__partitioned/);
      const r = await adoptTable(owner, log, { table: 'capacity_outbox' });
      expect(r.resumed).toBe(false);
      const ids = await produce(db.producerUrl, tenantId(), [{ type: 'after' }]);
      await verify(db, ids, r.rowsAtSwap);
      expect(r.rowsAtSwap).toBe(3000);
    } finally {
      await owner.end();
      await db.drop();
    }
  });

  it('a swap that times out on its lock is rolled back, and a rerun continues and swaps', async () => {
    const db = await createOwnedDatabase({ beforeMigrate: plain });
    const producer = producerLoop(db.producerUrl);
    const owner = new pg.Client(db.ownerUrl);
    await owner.connect();
    const reader = new pg.Client(db.adminUrl);
    await reader.connect();
    let rowsAtSwap = 0;
    try {
      await reader.query('BEGIN');
      await reader.query('SELECT count(*) FROM public.capacity_outbox');
      await expect(adoptTable(owner, log, { table: 'capacity_outbox', lockTimeoutSeconds: 0.3, lockAttempts: 2 })).rejects.toThrow(/swap failed and was rolled back.*lock timeout/);
      await reader.query('COMMIT');
      expect((await db.query(`SELECT relkind FROM pg_class WHERE oid = 'public.capacity_outbox'::regclass`)).rows[0].relkind).toBe('r');
      const before = producer.ids.length;
      await waitFor(() => producer.ids.length > before + 5, { what: 'producer still writing' });
      const r = await adoptTable(owner, log, { table: 'capacity_outbox' });
      expect(r.resumed).toBe(true);
      expect(r.copiedRows).toBe(0); // the mirror kept the twin current; nothing left to copy
      rowsAtSwap = r.rowsAtSwap;
    } finally {
      await producer.stop();
      await reader.end();
      await owner.end();
    }
    try {
      expect(producer.errors).toEqual([]);
      expect(rowsAtSwap).toBeGreaterThan(3000);
      await verify(db, producer.ids, rowsAtSwap);
    } finally {
      await db.drop();
    }
  });
});
