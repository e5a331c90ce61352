import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { migrate } from '../src/db/migrator.ts';
import { BACKGROUND_ROLE, createKysely, createPool } from '../src/db/pool.ts';
import { claimBatch } from '../src/db/queries/outbox.ts';
import { createLogger } from '../src/kernel/log.ts';
import { adoptTable } from '../src/partitions/adopt.ts';
import { PartitionRotator } from '../src/partitions/rotator.ts';
import { produce, tenantId } from './support/db.ts';
import { runCli } from './support/cli.ts';
import { createOwnedDatabase, type OwnedDatabase } from './support/owned-db.ts';

// Partition maintenance and adopt as the people who run them: a plain (non-superuser) owner
// that ran the migrations, the daemon's login, a producer's login; and a superuser's adopt.
const log = createLogger('silent');

function monthStart(k: number): string {
  const now = new Date();
  return new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() + k, 1)).toISOString().slice(0, 10);
}
const partName = (k: number) => `capacity_outbox_p${monthStart(k).slice(0, 7).replace('-', '_')}`;

async function owners(db: OwnedDatabase): Promise<Record<string, string>> {
  const { rows } = await db.query<{ name: string; owner: string }>(
    `SELECT c.relname AS name, pg_get_userbyid(c.relowner) AS owner FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
     WHERE i.inhparent = 'public.capacity_outbox'::regclass ORDER BY 1`,
  );
  return Object.fromEntries(rows.map((r) => [r.name, r.owner]));
}

/** A team's existing plain outbox, created by the owner before `migrate`. */
const plainOutbox = (rows: string) => async (owner: pg.Client) => {
  await owner.query(`CREATE TABLE public.capacity_outbox (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), restaurant_id uuid NOT NULL,
    event_type text NOT NULL, payload jsonb NOT NULL DEFAULT '{}', status text NOT NULL DEFAULT 'pending', created_at timestamptz NOT NULL DEFAULT now())`);
  await owner.query(rows);
};

describe('a non-superuser schema owner (migrated by it)', () => {
  let db: OwnedDatabase;
  beforeAll(async () => {
    db = await createOwnedDatabase();
  });
  afterAll(async () => db?.drop());

  it('owns the table and is neither superuser nor BYPASSRLS', async () => {
    const { rows } = await db.query(
      `SELECT r.rolsuper, r.rolbypassrls, pg_get_userbyid(c.relowner) AS owner FROM pg_class c, pg_roles r
       WHERE c.oid = 'public.capacity_outbox'::regclass AND r.rolname = $1`,
      [db.ownerRole],
    );
    expect(rows[0]).toEqual({ rolsuper: false, rolbypassrls: false, owner: db.ownerRole });
  });

  it("sees producers' events through the parent table, as the runbooks' owner SQL expects", async () => {
    const t = tenantId();
    const ids = await produce(db.producerUrl, t, [{ type: 'a' }, { type: 'b' }]);
    // runbooks/outbox.md "One event, as the owner"
    const one = await db.ownerQuery(
      `SELECT id, restaurant_id, event_type, status, attempts, next_attempt_at, locked_by, locked_until, last_error, created_at, dispatched_at
       FROM capacity_outbox WHERE id = $1`,
      [ids[0]],
    );
    expect(one.rows).toHaveLength(1);
    expect(one.rows[0].restaurant_id).toBe(t);
    const n = await db.ownerQuery(`SELECT count(*)::int AS n FROM capacity_outbox WHERE restaurant_id = $1`, [t]);
    expect(n.rows[0].n).toBe(2);
  });

  it('rotation as the daemon moves rows out of the default partition (repro 04) and hands new partitions to the owner', async () => {
    const t = tenantId();
    // A row whose month has no partition, as a producer's insert would leave it.
    await db.ownerQuery(`INSERT INTO capacity_outbox_default (restaurant_id, event_type, dedupe_key, created_at) VALUES ($1, 'late', 'k', $2::date + interval '2 days')`, [t, monthStart(7)]);
    const worker = createKysely(createPool({ connectionString: db.workerUrl, max: 2, applicationName: 't', role: BACKGROUND_ROLE }));
    try {
      const report = await new PartitionRotator(worker, log).runOnce();
      const r = report.tables[0]!;
      expect(r.errors).toEqual([]);
      expect(r.created).toContain(monthStart(7));
      const where = await db.query(`SELECT tableoid::regclass::text AS part FROM capacity_outbox WHERE restaurant_id = $1`, [t]);
      expect(where.rows).toEqual([{ part: partName(7) }]);
      // The moved active event still holds its dedupe key.
      const active = await db.query(`SELECT count(*)::int AS n FROM outbox_dispatcher.capacity_outbox_active_keys WHERE restaurant_id = $1`, [t]);
      expect(active.rows[0].n).toBe(1);
      for (const [name, owner] of Object.entries(await owners(db))) expect([name, owner]).toEqual([name, db.ownerRole]);

      // The same through the CLI with the daemon's login, and the runbook's default-partition SQL as the owner.
      await db.ownerQuery(`INSERT INTO capacity_outbox_default (restaurant_id, event_type, created_at) VALUES ($1, 'late', $2::date)`, [t, monthStart(9)]);
      const seen = await db.ownerQuery(`SELECT event_type, min(created_at), max(created_at), count(*)::int AS n FROM capacity_outbox_default GROUP BY 1`);
      expect(seen.rows.map((x) => x.n)).toEqual([1]);
      const cli = await runCli(['partitions', 'rotate'], { DATABASE_URL: db.workerUrl, LOG_LEVEL: 'warn' });
      expect(cli.code, cli.stdout + cli.stderr).toBe(0);
      expect((await db.query(`SELECT tableoid::regclass::text AS part FROM capacity_outbox WHERE created_at = $1::date`, [monthStart(9)])).rows).toEqual([{ part: partName(9) }]);
    } finally {
      await worker.destroy();
    }
  });
});

describe('migration 0005 on a database with a partition a superuser left behind', () => {
  let db: OwnedDatabase;
  beforeAll(async () => {
    db = await createOwnedDatabase();
  });
  afterAll(async () => db?.drop());

  it('applies as the plain owner with a warning, and hands the partition over when a superuser applies it', async () => {
    await db.query(`CREATE TABLE public.capacity_outbox_p2040_01 PARTITION OF public.capacity_outbox FOR VALUES FROM ('2040-01-01 00:00:00+00') TO ('2040-02-01 00:00:00+00')`);
    const ownerOf = async () => (await owners(db)).capacity_outbox_p2040_01;
    expect(await ownerOf()).not.toBe(db.ownerRole);
    const rerun = async (url: string) => {
      await db.query(`DELETE FROM outbox_dispatcher.schema_migrations WHERE version = '0005'`);
      const c = new pg.Client(url);
      const warnings: string[] = [];
      c.on('notice', (n) => warnings.push(n.message ?? ''));
      await c.connect();
      try {
        await migrate(c);
      } finally {
        await c.end();
      }
      return warnings;
    };
    const warnings = await rerun(db.ownerUrl);
    expect(warnings.join('\n')).toMatch(/partition capacity_outbox_p2040_01 is not owned by the owner of capacity_outbox; as a superuser run: ALTER TABLE capacity_outbox_p2040_01 OWNER TO/);
    expect(await ownerOf()).not.toBe(db.ownerRole);
    await rerun(db.adminUrl);
    expect(await ownerOf()).toBe(db.ownerRole);
    // Re-applied by a superuser, the owner's policy still names the table owner.
    const pol = await db.query(`SELECT polroles::regrole[]::text[] AS roles FROM pg_policy WHERE polname = 'capacity_outbox_owner'`);
    expect(pol.rows[0].roles).toEqual([db.ownerRole]);
  });
});

describe('partitions adopt by a non-superuser owner (repro 05)', () => {
  let db: OwnedDatabase;
  beforeAll(async () => {
    db = await createOwnedDatabase({
      beforeMigrate: plainOutbox(`INSERT INTO public.capacity_outbox (restaurant_id, event_type, status, created_at)
        SELECT gen_random_uuid(), 'legacy.e', CASE WHEN g % 4 = 0 THEN 'pending' ELSE 'done' END, now() - (g % 250) * interval '1 day'
        FROM generate_series(1, 1000) g`),
    });
  });
  afterAll(async () => db?.drop());

  it('refuses before changing anything when RLS would hide rows from it', async () => {
    await db.ownerQuery('ALTER POLICY capacity_outbox_owner ON public.capacity_outbox TO app_background');
    const owner = new pg.Client(db.ownerUrl);
    await owner.connect();
    try {
      await expect(adoptTable(owner, log, { table: 'capacity_outbox' })).rejects.toThrow(/row-level security may hide rows of public\.capacity_outbox/);
      expect((await db.query(`SELECT to_regclass('public.capacity_outbox__partitioned') AS t`)).rows[0].t).toBeNull();
    } finally {
      await db.ownerQuery(`ALTER POLICY capacity_outbox_owner ON public.capacity_outbox TO ${db.ownerRole}`);
      await owner.end();
    }
  });

  it('copies every row, swaps, and leaves a table the daemon claims from and rotates (partitions owned by the owner)', async () => {
    const owner = new pg.Client(db.ownerUrl);
    await owner.connect();
    let result;
    try {
      result = await adoptTable(owner, log, { table: 'capacity_outbox' });
    } finally {
      await owner.end();
    }
    expect(result.copiedRows).toBe(1000);
    expect(result.rowsAtSwap).toBe(1000);
    const counts = await db.query(`SELECT (SELECT count(*) FROM capacity_outbox)::int AS new, (SELECT count(*) FROM capacity_outbox_unpartitioned)::int AS old,
      (SELECT relkind FROM pg_class WHERE oid = 'public.capacity_outbox'::regclass) AS kind`);
    expect(counts.rows[0]).toEqual({ new: 1000, old: 1000, kind: 'p' });
    expect(Object.values(await owners(db)).every((o) => o === db.ownerRole)).toBe(true);
    // The owner still sees everything; the backup stays protected by forced RLS.
    expect((await db.ownerQuery('SELECT count(*)::int AS n FROM capacity_outbox')).rows[0].n).toBe(1000);
    expect((await db.query(`SELECT relforcerowsecurity FROM pg_class WHERE oid = 'public.capacity_outbox_unpartitioned'::regclass`)).rows[0].relforcerowsecurity).toBe(true);

    const worker = createKysely(createPool({ connectionString: db.workerUrl, max: 2, applicationName: 't', role: BACKGROUND_ROLE }));
    try {
      expect((await claimBatch(worker, { workerId: 'w', limit: 500, leaseMs: 60_000, maxPayloadBytes: 1_048_576 })).length).toBe(250);
      await db.query(`UPDATE capacity_outbox SET status = 'done'`);
      const report = await new PartitionRotator(worker, log).runOnce();
      const r = report.tables[0]!;
      expect(r.errors).toEqual([]);
      // History reached back ~8 months; retention (6) retires what is wholly older.
      expect(r.retired.length).toBeGreaterThan(0);
      expect(r.retired).toContain(partName(-8));
    } finally {
      await worker.destroy();
    }
  });
});

describe('partitions adopt by a superuser on an owner-owned table (repro 16)', () => {
  let db: OwnedDatabase;
  beforeAll(async () => {
    db = await createOwnedDatabase({
      beforeMigrate: plainOutbox(`INSERT INTO public.capacity_outbox (restaurant_id, event_type, status, created_at)
        SELECT gen_random_uuid(), 'legacy', 'done', now() - interval '9 months' FROM generate_series(1, 100)`),
    });
  });
  afterAll(async () => db?.drop());

  it('hands every new partition to the table owner, so the daemon can retire them later', async () => {
    const admin = new pg.Client(db.adminUrl);
    await admin.connect();
    try {
      const r = await adoptTable(admin, log, { table: 'capacity_outbox' });
      expect(r.copiedRows).toBe(100);
    } finally {
      await admin.end();
    }
    const o = await owners(db);
    expect(Object.keys(o).length).toBeGreaterThan(5);
    for (const [name, owner] of Object.entries(o)) expect([name, owner]).toEqual([name, db.ownerRole]);
    expect((await db.query(`SELECT pg_get_userbyid(relowner) AS o FROM pg_class WHERE oid = 'public.capacity_outbox'::regclass`)).rows[0].o).toBe(db.ownerRole);

    const worker = createKysely(createPool({ connectionString: db.workerUrl, max: 2, applicationName: 't', role: BACKGROUND_ROLE }));
    try {
      const report = await new PartitionRotator(worker, log).runOnce();
      expect(report.tables[0]!.errors).toEqual([]);
      expect(report.tables[0]!.retired).toContain(partName(-9));
    } finally {
      await worker.destroy();
    }
  });
});
