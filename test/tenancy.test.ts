import pg from 'pg';
import { sql } from 'kysely';
import { describe, expect } from 'vitest';
import { TenantScope } from '../src/tenancy/scope.ts';
import { produce, tenantId, waitFor, type TestDatabase } from './support/db.ts';
import { recordingSink, startDaemon } from './support/daemon.ts';
import { test } from './support/fixtures.ts';

const [A, B] = [tenantId(), tenantId()];

// The file's database, with a platform table protected the way the plan prescribes.
const it = test.extend<{ notesDb: TestDatabase }>({
  notesDb: [
    async ({ fileDb }, use) => {
      await fileDb.query(`
        CREATE TABLE tenant_notes (id serial PRIMARY KEY, restaurant_id uuid NOT NULL, note text NOT NULL);
        ALTER TABLE tenant_notes ENABLE ROW LEVEL SECURITY;
        ALTER TABLE tenant_notes FORCE ROW LEVEL SECURITY;
        CREATE POLICY tenant_isolation ON tenant_notes FOR ALL TO app_background, app_producer
          USING (restaurant_id = public.require_restaurant_context())
          WITH CHECK (restaurant_id = public.require_restaurant_context());
        GRANT SELECT, INSERT, UPDATE, DELETE ON tenant_notes TO app_background, app_producer;
        GRANT USAGE ON SEQUENCE tenant_notes_id_seq TO app_background, app_producer;
      `);
      await fileDb.query(`INSERT INTO tenant_notes (restaurant_id, note) VALUES ($1, 'a1'), ($1, 'a2'), ($2, 'b1')`, [A, B]);
      await use(fileDb);
    },
    { scope: 'file' },
  ],
});

describe('tenant scope for work done on an event’s behalf', () => {
  it('reads and writes only the scoped tenant’s rows', async ({ notesDb: db }) => {
    const scope = new TenantScope(db.workerDb());
    const notes = await scope.run(A, (trx) => sql<{ note: string }>`SELECT note FROM tenant_notes ORDER BY note`.execute(trx));
    expect(notes.rows.map((r) => r.note)).toEqual(['a1', 'a2']);
    const updated = await scope.run(A, (trx) => sql`UPDATE tenant_notes SET note = note || '!' WHERE note = 'b1'`.execute(trx));
    expect(Number(updated.numAffectedRows)).toBe(0);
    await expect(scope.run(A, (trx) => sql`INSERT INTO tenant_notes (restaurant_id, note) VALUES (${B}::uuid, 'forged')`.execute(trx))).rejects.toThrow(
      /row-level security/,
    );
    const all = await db.query('SELECT note FROM tenant_notes ORDER BY note');
    expect(all.rows.map((r) => r.note)).toEqual(['a1', 'a2', 'b1']);
  });

  it('narrows even the dispatcher’s own view of capacity_outbox to the tenant', async ({ notesDb: db }) => {
    await produce(db.producerUrl, A, [{ type: 'x' }]);
    await produce(db.producerUrl, B, [{ type: 'x' }]);
    const scope = new TenantScope(db.workerDb());
    const seen = await scope.run(A, (trx) => sql<{ restaurant_id: string }>`SELECT DISTINCT restaurant_id FROM capacity_outbox`.execute(trx));
    expect(seen.rows.map((r) => r.restaurant_id)).toEqual([A]);
  });

  it('is transaction-local: the next transaction on the pooled connection has no tenant', async ({ notesDb: db }) => {
    const worker = db.workerDb();
    await new TenantScope(worker).run(A, async () => undefined);
    const r = await sql<{ t: string | null }>`SELECT public.current_restaurant_id() AS t`.execute(worker);
    expect(r.rows[0]!.t).toBeNull();
  });

  it('carries the tenant to sinks and runs their database work in that tenant', async ({ notesDb: db }) => {
    await db.query("UPDATE capacity_outbox SET status = 'done'");
    const seen: { tenant: string; notes: string[] }[] = [];
    const sink = recordingSink('test', async () => undefined);
    sink.send = async function (event, ctx) {
      const notes = await ctx.withTenant((trx) => sql<{ note: string }>`SELECT note FROM tenant_notes ORDER BY note`.execute(trx));
      seen.push({ tenant: event.restaurantId, notes: notes.rows.map((r) => r.note) });
    };
    const [ea] = await produce(db.producerUrl, A, [{ type: 'y' }]);
    const [eb] = await produce(db.producerUrl, B, [{ type: 'y' }]);
    const daemon = await startDaemon(db, { sinks: { test: sink } });
    try {
      await waitFor(() => seen.length === 2);
    } finally {
      await daemon.stop();
    }
    expect(ea && eb).toBeTruthy();
    expect(seen.sort((x, y) => x.notes.length - y.notes.length)).toEqual([
      { tenant: B, notes: ['b1'] },
      { tenant: A, notes: ['a1', 'a2'] },
    ]);
  });
});

/** A session of the daemon's login as app_background, closed afterwards. */
async function asWorker<T>(db: TestDatabase, fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const c = new pg.Client({ connectionString: db.workerUrl, options: '-c role=app_background' });
  await c.connect();
  try {
    return await fn(c);
  } finally {
    await c.end();
  }
}

describe('tenancy helpers', () => {
  it('require_restaurant_context() raises without a tenant (42501)', async ({ notesDb: db }) => {
    await asWorker(db, async (c) => {
      const err = await c.query('SELECT * FROM tenant_notes').catch((e: unknown) => e);
      expect((err as pg.DatabaseError).code).toBe('42501');
      expect((err as Error).message).toMatch(/tenant context missing/);
    });
  });

  it('exempts whitelisted roles: they get NULL (no rows) instead of an error', async ({ notesDb: db }) => {
    await db.query("INSERT INTO public.tenant_context_exempt_roles (role_name, reason) VALUES ('app_background', 'test')");
    try {
      await asWorker(db, async (c) => {
        expect((await c.query('SELECT public.require_restaurant_context() AS t')).rows[0].t).toBeNull();
        expect((await c.query('SELECT * FROM tenant_notes')).rowCount).toBe(0);
      });
    } finally {
      await db.query("DELETE FROM public.tenant_context_exempt_roles WHERE role_name = 'app_background'");
    }
  });

  it('set_restaurant_context() rejects NULL and malformed tenants', async ({ notesDb: db }) => {
    await asWorker(db, async (c) => {
      await expect(c.query('SELECT public.set_restaurant_context(NULL)')).rejects.toThrow(/must not be null/);
      await expect(c.query("SELECT public.set_restaurant_context('not-a-uuid')")).rejects.toThrow(/invalid input syntax for type uuid/);
    });
  });

  it('producers cannot write another tenant’s outbox rows or read them', async ({ notesDb: db }) => {
    const c = new pg.Client(db.producerUrl);
    await c.connect();
    try {
      await c.query('BEGIN');
      await c.query('SELECT public.set_restaurant_context($1)', [A]);
      await expect(
        c.query("INSERT INTO capacity_outbox (restaurant_id, event_type) VALUES ($1, 'x')", [B]),
      ).rejects.toThrow(/row-level security/);
      await c.query('ROLLBACK');
      await c.query('BEGIN');
      await c.query('SELECT public.set_restaurant_context($1)', [A]);
      const { rows } = await c.query('SELECT DISTINCT restaurant_id FROM capacity_outbox');
      expect(rows.map((r) => r.restaurant_id)).toEqual([A]);
      await c.query('ROLLBACK');
      // Without context the producer policy raises rather than guessing.
      await expect(c.query("INSERT INTO capacity_outbox (restaurant_id, event_type) VALUES ($1, 'x')", [A])).rejects.toThrow(/tenant context missing/);
    } finally {
      await c.end();
    }
  });

  it('the login role cannot be used to escape app_background’s grants', async ({ notesDb: db }) => {
    await asWorker(db, async (c) => {
      await expect(c.query("INSERT INTO capacity_outbox (restaurant_id, event_type) VALUES ($1, 'x')", [A])).rejects.toThrow(/permission denied/);
      await expect(c.query("UPDATE capacity_outbox SET payload = '{}'")).rejects.toThrow(/permission denied/);
      await expect(c.query('DELETE FROM capacity_outbox')).rejects.toThrow(/permission denied/);
      await expect(c.query('SELECT * FROM outbox_dispatcher.capacity_outbox_active_keys')).rejects.toThrow(/permission denied/);
    });
  });
});

// Migration 0020: the helpers every policy and every insert calls are inlined by the planner
// (no SET clause), and their SQL-standard bodies were bound when they were created, so a
// caller's search_path cannot put its own current_setting() in front of the real one.
describe('helpers on the hot path', () => {
  it('current_restaurant_id() and uuid_v7() are inlined, not called', async ({ notesDb: db }) => {
    await asWorker(db, async (c) => {
      const plan = async (q: string) => (await c.query(`EXPLAIN (VERBOSE, COSTS OFF) ${q}`)).rows.map((r) => r['QUERY PLAN']).join('\n');
      const tenant = await plan('SELECT public.current_restaurant_id()');
      expect(tenant).toMatch(/current_setting\('app\.restaurant_id'::text, true\)/);
      expect(tenant).not.toMatch(/current_restaurant_id/);
      const id = await plan('SELECT outbox_dispatcher.uuid_v7()');
      expect(id).toMatch(/gen_random_uuid\(\)/);
      expect(id).not.toMatch(/uuid_v7/);
      // The RLS policy's InitPlan reads the setting directly.
      expect(await plan('SELECT id FROM capacity_outbox')).not.toMatch(/current_restaurant_id/);
      const { rows } = await c.query('SELECT outbox_dispatcher.uuid_v7()::text AS id');
      expect(rows[0].id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    });
  });

  it('a hostile search_path cannot change which tenant current_restaurant_id() returns', async ({ notesDb: db }) => {
    await db.query(`
      CREATE SCHEMA IF NOT EXISTS hostile;
      CREATE OR REPLACE FUNCTION hostile.current_setting(text, boolean) RETURNS text LANGUAGE sql AS $$ SELECT '${B}'::text $$;
      GRANT USAGE ON SCHEMA hostile TO PUBLIC;
      GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA hostile TO PUBLIC;`);
    await produce(db.producerUrl, A, [{ type: 'hostile.a' }]);
    await produce(db.producerUrl, B, [{ type: 'hostile.b' }]);
    try {
      await asWorker(db, async (c) => {
        await c.query('SET search_path = hostile, pg_catalog, public');
        // The hostile function is what an unqualified call now finds...
        expect((await c.query("SELECT current_setting('app.restaurant_id', true) AS v")).rows[0].v).toBe(B);
        await c.query('BEGIN');
        await c.query('SELECT public.set_restaurant_context($1)', [A]);
        // ...but not what the helper, the policy or the inlined expression use.
        expect((await c.query('SELECT public.current_restaurant_id() AS t')).rows[0].t).toBe(A);
        const seen = await c.query("SELECT DISTINCT restaurant_id FROM public.capacity_outbox WHERE event_type LIKE 'hostile.%'");
        expect(seen.rows.map((r) => r.restaurant_id)).toEqual([A]);
        await c.query('ROLLBACK');
      });
    } finally {
      await db.query('DROP SCHEMA hostile CASCADE');
    }
  });
});
