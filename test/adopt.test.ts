import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { migrate } from '../src/db/migrator.ts';
import { BACKGROUND_ROLE, createKysely, createPool } from '../src/db/pool.ts';
import { claimBatch, completeBatch } from '../src/db/queries/outbox.ts';
import { createLogger } from '../src/log.ts';
import { adoptTable, AdoptError } from '../src/partitions/adopt.ts';
import { PartitionRotator } from '../src/partitions/rotator.ts';
import { asRole, createEmptyDatabase, produce, tenantId } from './support/db.ts';

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
    const worker = createKysely(createPool({ connectionString: asRole(target.url, 'worker'), max: 2, applicationName: 't', role: BACKGROUND_ROLE }));

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
          if (claimed.length === 0) claimed = await claimBatch(worker, { workerId: 'w', limit: 50, leaseMs: 60_000 });
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
    ]);
    const { rows: sec } = await admin.query(`SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE oid = 'public.capacity_outbox'::regclass`);
    expect(sec[0]).toEqual({ relrowsecurity: true, relforcerowsecurity: true });
    expect(await produce(asRole(target.url, 'producer'), tenant, [{ type: 'x', dedupeKey: 'k' }, { type: 'x', dedupeKey: 'k' }])).toHaveLength(1);
    expect((await claimBatch(worker, { workerId: 'w2', limit: 10, leaseMs: 1000 })).length).toBeGreaterThan(0);
    const { rows: idx } = await admin.query(`SELECT indexrelid::regclass::text AS name FROM pg_index WHERE indrelid = 'public.capacity_outbox'::regclass ORDER BY 1`);
    expect(idx.map((r) => r.name)).toEqual(['capacity_outbox_dispatch_idx', 'capacity_outbox_pkey']);
    // Rotation now manages it.
    const report = await new PartitionRotator(worker, log).runOnce();
    expect(report.tables[0]!.errors).toEqual([]);
    await worker.destroy();

    await expect(adoptTable(admin, log, { table: 'capacity_outbox' })).rejects.toThrow(AdoptError);
  });
});
