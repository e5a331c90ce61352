import pg from 'pg';
import { describe, expect } from 'vitest';
import { loadMigrations, migrate, migrationStatus, MigrationError } from '../src/db/migrator.ts';
import { preflight } from '../src/db/preflight.ts';
import { EXIT, StartupError } from '../src/kernel/exit-codes.ts';
import { createLogger } from '../src/kernel/log.ts';
import { createEmptyDatabase } from './support/db.ts';
import { it } from './support/fixtures.ts';

describe('migrations', () => {
  it('apply once when two replicas migrate at the same moment, and are idempotent afterwards', async ({ fileDb: db }) => {
    const target = await createEmptyDatabase();
    const clients = [new pg.Client(target.url), new pg.Client(target.url)];
    try {
      await Promise.all(clients.map((c) => c.connect()));
      const results = await Promise.all(clients.map((c) => migrate(c)));
      const names = loadMigrations().map((m) => m.name);
      expect(results.flat().sort()).toEqual(names.sort());
      expect(await migrate(clients[0]!)).toEqual([]);
      const { rows } = await clients[0]!.query('SELECT version FROM outbox_dispatcher.schema_migrations');
      expect(rows).toHaveLength(names.length);
    } finally {
      await Promise.all(clients.map((c) => c.end()));
      await target.drop();
    }
  });

  it('refuse to continue when an applied migration was edited', async ({ fileDb: db }) => {
    const c = new pg.Client(db.adminUrl);
    await c.connect();
    try {
      const edited = loadMigrations().map((m, i) => (i === 0 ? { ...m, checksum: 'f'.repeat(64) } : m));
      await expect(migrationStatus(c, edited)).rejects.toThrow(MigrationError);
      await expect(migrate(c, { migrations: edited })).rejects.toThrow(/was changed after it was applied/);
    } finally {
      await c.end();
    }
  });

  it('run refuses to start against a database whose migrations are behind (exit 79)', async ({ fileDb: db }) => {
    await db.query(`DELETE FROM outbox_dispatcher.schema_migrations WHERE version = (SELECT max(version) FROM outbox_dispatcher.schema_migrations)`);
    try {
      const err = await preflight(db.workerUrl, { allowPrivilegedRole: false, log: createLogger('silent') }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(StartupError);
      expect((err as StartupError).exitCode).toBe(EXIT.SCHEMA_BEHIND);
      expect((err as Error).message).toMatch(/migration\(s\) pending.*outbox-dispatcher migrate/);
    } finally {
      const last = loadMigrations().at(-1)!;
      await db.query('INSERT INTO outbox_dispatcher.schema_migrations (version, name, checksum) VALUES ($1, $2, $3)', [last.version, last.name, last.checksum]);
    }
    // The worker login inherits app_background: no role switch (ADR 0010).
    await expect(preflight(db.workerUrl, { allowPrivilegedRole: false, log: createLogger('silent') })).resolves.toEqual({ roleSwitch: false });
  });

  it('refuses a superuser login unless explicitly overridden (exit 77)', async ({ fileDb: db }) => {
    const err = await preflight(db.adminUrl, { allowPrivilegedRole: false, log: createLogger('silent') }).catch((e: unknown) => e);
    expect((err as StartupError).exitCode).toBe(EXIT.PRIVILEGED_ROLE);
    expect((err as Error).message).toMatch(/refusing to run as a superuser/);
    // Overridden, a superuser must switch to app_background, or RLS would not apply.
    await expect(preflight(db.adminUrl, { allowPrivilegedRole: true, log: createLogger('silent') })).resolves.toEqual({ roleSwitch: true });
  });
});

describe('schema', () => {
  it('app_background is NOLOGIN, not superuser, not BYPASSRLS', async ({ fileDb: db }) => {
    const { rows } = await db.query("SELECT rolcanlogin, rolsuper, rolbypassrls, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = 'app_background'");
    expect(rows[0]).toEqual({ rolcanlogin: false, rolsuper: false, rolbypassrls: false, rolcreaterole: false, rolcreatedb: false });
  });

  it('capacity_outbox is partitioned by month on created_at with RLS enabled and forced', async ({ fileDb: db }) => {
    const { rows } = await db.query(
      `SELECT c.relkind, c.relrowsecurity, c.relforcerowsecurity, pg_get_partkeydef(c.oid) AS partkey
       FROM pg_class c WHERE c.oid = 'public.capacity_outbox'::regclass`,
    );
    expect(rows[0]).toEqual({ relkind: 'p', relrowsecurity: true, relforcerowsecurity: true, partkey: 'RANGE (created_at)' });
  });

  it('has partitions for the current month and the next two (UTC), plus a default partition', async ({ fileDb: db }) => {
    const { rows } = await db.query<{ relname: string; bound: string }>(
      `SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) AS bound
       FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
       WHERE i.inhparent = 'public.capacity_outbox'::regclass ORDER BY c.relname`,
    );
    const now = new Date();
    const months = [0, 1, 2].map((k) => new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() + k, 1)));
    const names = months.map((m) => `capacity_outbox_p${m.getUTCFullYear()}_${String(m.getUTCMonth() + 1).padStart(2, '0')}`);
    for (const n of names) expect(rows.map((r) => r.relname)).toContain(n);
    expect(rows.find((r) => r.relname === 'capacity_outbox_default')?.bound).toBe('DEFAULT');
    const first = rows.find((r) => r.relname === names[0])!;
    expect(first.bound).toContain(`'${months[0]!.toISOString().slice(0, 10)} 00:00:00+00'`);
  });

  it('rejects a hostile parent name in the partition helper', async ({ fileDb: db }) => {
    await expect(db.query(`SELECT outbox_dispatcher.monthly_partition_name('x; DROP TABLE y', '2026-01-01')`)).rejects.toThrow(/invalid partitioned table name/);
  });

  it('every column but the producer contract has a default', async ({ fileDb: db }) => {
    const { rows } = await db.query<{ column_name: string; is_nullable: string; column_default: string | null }>(
      `SELECT column_name, is_nullable, column_default FROM information_schema.columns
       WHERE table_schema = 'public' AND table_name = 'capacity_outbox'`,
    );
    const contract = ['restaurant_id', 'event_type', 'payload', 'dedupe_key', 'idempotency_key', 'headers', 'ordering_key'];
    for (const col of rows.filter((r) => !contract.includes(r.column_name))) {
      expect(col.is_nullable === 'YES' || col.column_default !== null, `${col.column_name} needs a default`).toBe(true);
    }
    expect(rows.map((r) => r.column_name).sort()).toEqual(
      ['attempts', 'created_at', 'dedupe_key', 'dispatched_at', 'event_type', 'headers', 'id', 'idempotency_key', 'last_error', 'locked_by', 'locked_until', 'next_attempt_at', 'ordering_key', 'ordering_seq', 'payload', 'restaurant_id', 'status'].sort(),
    );
  });
});
