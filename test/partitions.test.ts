import pg from 'pg';
import { describe, expect } from 'vitest';
import { Registry } from 'prom-client';
import { createLogger } from '../src/kernel/log.ts';
import { PartitionMetrics } from '../src/metrics/partition-metrics.ts';
import { PartitionMaintenance } from '../src/partitions/maintenance.ts';
import { PartitionRotator } from '../src/partitions/rotator.ts';
import { RegistryError } from '../src/partitions/registry.ts';
import { partitionStatus } from '../src/partitions/status.ts';
import { produce, tenantId, type TestDatabase } from './support/db.ts';
import { runCli } from './support/cli.ts';
import { metricTotal } from './support/metrics.ts';
import { test } from './support/fixtures.ts';

const log = createLogger('silent');

/** Drops every monthly partition (keeps parent and default): an "empty" layout. */
async function dropMonthlyPartitions(db: TestDatabase) {
  const { rows } = await db.query<{ relname: string }>(
    `SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
     WHERE i.inhparent = 'public.capacity_outbox'::regclass AND c.relname <> 'capacity_outbox_default'`,
  );
  for (const r of rows) await db.query(`DROP TABLE public.${r.relname}`);
}

// Each test gets its own database (db), and `empty` is that database with the empty layout.
const it = test.extend<{ empty: TestDatabase }>({
  empty: async ({ db }, use) => {
    await dropMonthlyPartitions(db);
    await use(db);
  },
});

async function partitions(db: TestDatabase): Promise<{ name: string; bound: string }[]> {
  const { rows } = await db.query<{ name: string; bound: string }>(
    `SELECT c.relname AS name, pg_get_expr(c.relpartbound, c.oid) AS bound FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
     WHERE i.inhparent = 'public.capacity_outbox'::regclass ORDER BY 1`,
  );
  return rows;
}

/** Tables, partitions and their bounds, indexes: what DDL would change. */
async function catalogSnapshot(db: TestDatabase) {
  const { rows } = await db.query(
    `SELECT c.relname, c.relkind, pg_get_expr(c.relpartbound, c.oid) AS bound
     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' ORDER BY c.relname`,
  );
  return rows;
}

const rotator = (db: TestDatabase, now: string) => new PartitionRotator(db.workerDb(), log, () => new Date(now));

describe('premake', () => {
  it('creates this month through this month + premake from an empty table, across a year boundary (UTC)', async ({ empty: db }) => {
    const report = await rotator(db, '2026-11-30T23:30:00-05:00').runOnce(); // already December in UTC
    expect(report.ran).toBe(true);
    const t = report.tables.find((x) => x.table === 'public.capacity_outbox')!;
    expect(t.errors).toEqual([]);
    expect(t.created).toEqual(['2026-12-01', '2027-01-01', '2027-02-01', '2027-03-01']);
    const names = (await partitions(db)).map((p) => p.name);
    expect(names).toEqual(['capacity_outbox_default', 'capacity_outbox_p2026_12', 'capacity_outbox_p2027_01', 'capacity_outbox_p2027_02', 'capacity_outbox_p2027_03']);
    const jan = (await partitions(db)).find((p) => p.name === 'capacity_outbox_p2027_01')!;
    expect(jan.bound).toMatch(/FROM \('2027-01-01 00:00:00\+00'\) TO \('2027-02-01 00:00:00\+00'\)/);
    expect(t.lastPartitionEnd?.toISOString()).toBe('2027-04-01T00:00:00.000Z');
    // Idempotent: a second run has nothing to do.
    const again = await rotator(db, '2026-12-01T05:00:00Z').runOnce();
    expect(again.tables[0]!.statements).toEqual([]);
  });
});

describe('default partition', () => {
  it('catches a row for a month with no partition, and the next rotation moves it out (keeping its dedupe key)', async ({ empty: db }) => {
    await rotator(db, '2026-11-10T00:00:00Z').runOnce();
    const t = tenantId();
    await db.query(
      `INSERT INTO capacity_outbox (restaurant_id, event_type, dedupe_key, created_at) VALUES ($1, 'late', 'k1', '2028-05-10T12:00:00Z'), ($1, 'late', null, '2028-05-11T12:00:00Z')`,
      [t],
    );
    const where = await db.query(`SELECT tableoid::regclass::text AS part FROM capacity_outbox WHERE restaurant_id = $1`, [t]);
    expect(where.rows.map((r) => r.part)).toEqual(['capacity_outbox_default', 'capacity_outbox_default']);

    const report = await rotator(db, '2026-11-10T00:00:00Z').runOnce();
    const r = report.tables[0]!;
    expect(r.errors).toEqual([]);
    expect(r.defaultRows).toEqual([{ month: '2028-05-01', rows: 2 }]);
    expect(r.created).toContain('2028-05-01');
    expect(r.statements.join('\n')).toMatch(/DELETE FROM public\.capacity_outbox_default/);
    const after = await db.query(`SELECT tableoid::regclass::text AS part FROM capacity_outbox WHERE restaurant_id = $1`, [t]);
    expect(after.rows.map((x) => x.part)).toEqual(['capacity_outbox_p2028_05', 'capacity_outbox_p2028_05']);
    // The moved active event still holds its key: a duplicate is still dropped.
    expect(await produce(db.producerUrl, t, [{ type: 'late', dedupeKey: 'k1' }])).toEqual([]);
    const status = await partitionStatus(db.workerDb(), new Date('2026-11-10T00:00:00Z'));
    expect(status[0]!.defaultRows).toBe(0);
  });
});

describe('retention', () => {
  it('drops only wholly expired partitions and refuses ones holding pending, processing or dead events', async ({ empty: db }) => {
    const now = new Date();
    const month = (k: number) => new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() + k, 1)).toISOString().slice(0, 10);
    // Retention 6: partitions ending on or before (start of this month - 6 months) retire.
    for (const k of [-10, -9, -8, -7, -6, -5]) {
      await db.query(`SELECT outbox_dispatcher.ensure_monthly_partition('public.capacity_outbox', $1::date)`, [month(k)]);
    }
    const insertAt = (k: number, status: string) =>
      db.query(`INSERT INTO capacity_outbox (restaurant_id, event_type, status, created_at) VALUES (gen_random_uuid(), 'x', $2, $1::date + interval '3 days')`, [month(k), status]);
    await insertAt(-10, 'done');
    await insertAt(-9, 'pending');
    await insertAt(-9, 'done');
    await insertAt(-8, 'dead');
    await insertAt(-7, 'processing');
    await insertAt(-6, 'done'); // within the 6-month window: kept

    const report = await new PartitionRotator(db.workerDb(), log).runOnce();
    const t = report.tables[0]!;
    const name = (k: number) => `capacity_outbox_p${month(k).slice(0, 7).replace('-', '_')}`;
    expect(t.retired).toEqual([name(-10)]);
    expect(t.blocked.map((b) => b.partition)).toEqual([name(-9), name(-8), name(-7)]);
    expect(t.blocked[0]!.blocking).toEqual({ pending: 1 });
    expect(t.blocked[1]!.blocking).toEqual({ dead: 1 });
    expect(t.blocked[2]!.blocking).toEqual({ processing: 1 });
    const names = (await partitions(db)).map((p) => p.name);
    expect(names).not.toContain(name(-10));
    for (const k of [-9, -8, -7, -6, -5]) expect(names).toContain(name(k));
    const { rows } = await db.query(`SELECT status, count(*)::int AS n FROM capacity_outbox GROUP BY 1 ORDER BY 1`);
    expect(rows).toEqual([
      { status: 'dead', n: 1 },
      { status: 'done', n: 2 },
      { status: 'pending', n: 1 },
      { status: 'processing', n: 1 },
    ]);
  });

  it('never retires on a caller clock far ahead of the database clock', async ({ empty: db }) => {
    const report = await rotator(db, '2040-01-01T00:00:00Z').runOnce();
    expect(report.tables[0]!.retired).toEqual([]);
  });

  it('keeps detached tables in detach mode', async ({ empty: db }) => {
    const now = new Date();
    const old = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() - 10, 1)).toISOString().slice(0, 10);
    await db.query(`SELECT outbox_dispatcher.ensure_monthly_partition('public.capacity_outbox', $1::date)`, [old]);
    await db.query(`UPDATE outbox_dispatcher.managed_partitions SET retention_mode = 'detach' WHERE table_name = 'capacity_outbox'`);
    try {
      const report = await new PartitionRotator(db.workerDb(), log).runOnce();
      const name = `capacity_outbox_p${old.slice(0, 7).replace('-', '_')}`;
      expect(report.tables[0]!.retired).toEqual([name]);
      const { rows } = await db.query(`SELECT relispartition FROM pg_class WHERE relname = $1`, [name]);
      expect(rows).toEqual([{ relispartition: false }]);
    } finally {
      await db.query(`UPDATE outbox_dispatcher.managed_partitions SET retention_mode = 'drop' WHERE table_name = 'capacity_outbox'`);
    }
  });
});

describe('coordination, dry run and safety', () => {
  it('does the work once when two replicas rotate at the same moment', async ({ empty: db }) => {
    const [a, b] = await Promise.all([rotator(db, '2026-11-10T00:00:00Z').runOnce(), rotator(db, '2026-11-10T00:00:00Z').runOnce()]);
    const created = [...a.tables, ...b.tables].flatMap((t) => t.created);
    expect(created.sort()).toEqual(['2026-11-01', '2026-12-01', '2027-01-01', '2027-02-01']);
    expect([...a.tables, ...b.tables].flatMap((t) => t.errors)).toEqual([]);
  });

  it('skips while another replica holds the rotation lock', async ({ empty: db }) => {
    const holder = new pg.Client(db.workerUrl);
    await holder.connect();
    try {
      // Another replica's lease, taken through the same function the rotator uses.
      const held = await holder.query("SELECT outbox_dispatcher.maintenance_lease_take('partition_rotation', 'other-replica', 60000) AS ok");
      expect(held.rows[0].ok).toBe(true);
      const report = await rotator(db, '2026-11-10T00:00:00Z').runOnce();
      expect(report).toMatchObject({ ran: false, tables: [] });
      // Its lease expiring (a replica that died mid-run) frees rotation for the others.
      await db.query("UPDATE outbox_dispatcher.maintenance_leases SET expires_at = now() - interval '1 second' WHERE name = 'partition_rotation'");
    } finally {
      await holder.end();
    }
    expect((await rotator(db, '2026-11-10T00:00:00Z').runOnce()).ran).toBe(true);
    // A finished run gives the lease back.
    expect((await db.query("SELECT count(*)::int AS n FROM outbox_dispatcher.maintenance_leases")).rows[0].n).toBe(0);
  });

  it('--dry-run prints the DDL plan and changes nothing in the catalog', async ({ empty: db }) => {
    await db.query(`INSERT INTO capacity_outbox (restaurant_id, event_type, created_at) VALUES (gen_random_uuid(), 'x', '2029-02-02T00:00:00Z')`);
    const before = await catalogSnapshot(db);
    const r = await runCli(['partitions', 'rotate', '--dry-run'], { DATABASE_URL: db.workerUrl, LOG_LEVEL: 'warn' });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain('plan (dry run, nothing executed)');
    expect(r.stdout).toMatch(/CREATE TABLE public\.capacity_outbox_p\d{4}_\d{2} \(LIKE public\.capacity_outbox /);
    expect(r.stdout).toMatch(/ALTER TABLE public\.capacity_outbox ATTACH PARTITION public\.capacity_outbox_p\d{4}_\d{2} FOR VALUES FROM/);
    expect(r.stdout).toContain('default partition held 1 row(s) for 2029-02');
    expect(await catalogSnapshot(db)).toEqual(before);
  });

  it('partitions rotate executes, prints what it did, and partitions status reads back', async ({ empty: db }) => {
    const env = { DATABASE_URL: db.workerUrl, LOG_LEVEL: 'warn' };
    const r = await runCli(['partitions', 'rotate'], env);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain('executed');
    const s = await runCli(['partitions', 'status', '--json'], env);
    const status = JSON.parse(s.stdout);
    expect(status[0].table).toBe('public.capacity_outbox');
    expect(status[0].runwaySeconds).toBeGreaterThan(86400 * 85);
    expect(status[0].partitions.map((p: { retention: string }) => p.retention)).toContain('default');
    const text = await runCli(['partitions', 'status', '--table', 'capacity_outbox'], env);
    expect(text.stdout).toMatch(/runway: \d+\.\d days/);
  });

  it('refuses hostile table names, in the registry and on the command line', async ({ empty: db }) => {
    await expect(
      db.query(`INSERT INTO outbox_dispatcher.managed_partitions (table_name, partition_column) VALUES ('x"; DROP TABLE capacity_outbox; --', 'created_at')`),
    ).rejects.toThrow(/managed_partitions_identifiers/);
    await db.query('ALTER TABLE outbox_dispatcher.managed_partitions DROP CONSTRAINT managed_partitions_identifiers');
    try {
      await db.query(`INSERT INTO outbox_dispatcher.managed_partitions (table_name, partition_column) VALUES ('evil; DROP TABLE capacity_outbox', 'created_at')`);
      await expect(rotator(db, '2026-11-10T00:00:00Z').runOnce()).rejects.toThrow(RegistryError);
      expect((await db.query(`SELECT to_regclass('public.capacity_outbox') IS NOT NULL AS ok`)).rows[0].ok).toBe(true);
    } finally {
      await db.query(`DELETE FROM outbox_dispatcher.managed_partitions WHERE table_name LIKE 'evil%'`);
      await db.query(`ALTER TABLE outbox_dispatcher.managed_partitions ADD CONSTRAINT managed_partitions_identifiers CHECK (
        table_schema ~ '^[a-z_][a-z0-9_]{0,62}$' AND table_name ~ '^[a-z_][a-z0-9_]{0,47}$'
        AND partition_column ~ '^[a-z_][a-z0-9_]{0,62}$' AND (status_column IS NULL OR status_column ~ '^[a-z_][a-z0-9_]{0,62}$'))`);
    }
    const r = await runCli(['partitions', 'status', '--table', 'capacity_outbox; DROP TABLE x'], { DATABASE_URL: db.workerUrl });
    expect(r.code).toBe(64);
    expect(r.stderr).toContain('invalid table name');
  });

  it('publishes runway, last success, default rows and blocked retirements as metrics', async ({ empty: db }) => {
    const registry = new Registry();
    const metrics = new PartitionMetrics(registry);
    const m = new PartitionMaintenance(db.workerDb(), log, metrics, { cron: '17 * * * *' });
    await m.runOnce();
    const text = await registry.metrics();
    const runway = Number(/outbox_partition_runway_seconds\{table="public.capacity_outbox"\} (\d+)/.exec(text)?.[1]);
    expect(runway).toBeGreaterThan(86400 * 85);
    expect(await metricTotal(metrics.lastSuccess, { table: 'public.capacity_outbox' })).toBeGreaterThan(Date.now() / 1000 - 60);
    expect(await metricTotal(metrics.rotationRuns, { result: 'ok' })).toBe(1);
    expect(text).toContain('outbox_partition_default_rows{table="public.capacity_outbox"} 0');
    expect(text).toContain('outbox_partition_retirement_blocked{table="public.capacity_outbox"} 0');
  });
});
