import { sql } from 'kysely';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createKysely, createPool } from '../src/db/pool.ts';
import { probePooler } from '../src/db/pooler.ts';
import { preflight } from '../src/db/preflight.ts';
import type { Daemon } from '../src/lifecycle/daemon.ts';
import { StartupError } from '../src/kernel/exit-codes.ts';
import { createLogger } from '../src/kernel/log.ts';
import { PartitionRotator } from '../src/partitions/rotator.ts';
import { TenantScope } from '../src/tenancy/scope.ts';
import { runCli } from './support/cli.ts';
import { recordingSink, startDaemon } from './support/daemon.ts';
import { createTestDatabase, produce, statusCounts, tenantId, waitFor, type TestDatabase } from './support/db.ts';
import { metricTotal } from './support/metrics.ts';
import { pgbouncerMissing, startPgBouncer, type PgBouncer } from './support/pgbouncer.ts';
import { TEST_ROLES } from './support/roles.ts';

// Everything the daemon, its CLI and a producer do, through a stock PgBouncer 1.18 in
// transaction mode: no startup options, no session state, no named prepared statements.
const missing = pgbouncerMissing();
if (missing) console.warn(`skipping the PgBouncer tests: ${missing}`);

let db: TestDatabase;
let bouncer: PgBouncer;
const log = createLogger('silent');

beforeAll(async () => {
  if (missing) return;
  db = await createTestDatabase();
  const admin = new URL(db.adminUrl);
  bouncer = await startPgBouncer({
    serverUrl: db.adminUrl,
    users: [
      { name: TEST_ROLES.worker, password: TEST_ROLES.password },
      { name: TEST_ROLES.producer, password: TEST_ROLES.password },
      { name: decodeURIComponent(admin.username), password: decodeURIComponent(admin.password) || 'unused' },
    ],
    // Fewer server connections than the daemon's pool: sessions are really shared.
    poolSize: 2,
  });
});
afterAll(async () => {
  await bouncer?.stop();
  await db?.drop();
});

async function withClient<T>(url: string, fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    return await fn(c);
  } finally {
    await c.end();
  }
}

describe.skipIf(missing)('through PgBouncer in transaction mode', () => {
  it('is what the harness claims: startup options refused, sessions shared between clients', async () => {
    const url = bouncer.via(db.workerUrl);
    const withOption = new pg.Client({ connectionString: url, options: '-c role=app_background' });
    await expect(withOption.connect()).rejects.toThrow(/unsupported startup parameter: options/);
    await withOption.end().catch(() => undefined);
    await withClient(url, async (c) => expect(await probePooler(c, url)).toEqual({ transactionPooled: true, behindPooler: true }));
    await withClient(db.workerUrl, async (c) => expect(await probePooler(c, db.workerUrl)).toEqual({ transactionPooled: false, behindPooler: false }));
  });

  it('preflight passes for the worker login without a role switch, and explains why a privileged login cannot switch', async () => {
    await expect(preflight(bouncer.via(db.workerUrl), { allowPrivilegedRole: false, log })).resolves.toEqual({ roleSwitch: false });
    const err = await preflight(bouncer.via(db.adminUrl), { allowPrivilegedRole: true, log }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(StartupError);
    expect((err as StartupError).exitCode).toBe(77);
    expect((err as Error).message).toMatch(/pooler in front of the database refuses it.*non-privileged login role/);
    // The refusal of privileged logins stands, pooler or not.
    const refused = await preflight(bouncer.via(db.adminUrl), { allowPrivilegedRole: false, log }).catch((e: unknown) => e);
    expect((refused as StartupError).exitCode).toBe(77);
    expect((refused as Error).message).toMatch(/refusing to run as a superuser/);
  });

  it('keeps tenant context transaction-local on shared server sessions', async () => {
    const [A, B] = [tenantId(), tenantId()];
    await produce(bouncer.via(db.producerUrl), A, [{ type: 'iso' }, { type: 'iso' }]);
    await produce(bouncer.via(db.producerUrl), B, [{ type: 'iso' }]);
    const worker = db.workerDb(bouncer.via(db.workerUrl));
    const scope = new TenantScope(worker);
    const runs = Array.from({ length: 40 }, (_, i) => {
      const tenant = i % 2 ? A : B;
      return scope.run(tenant, async (trx) => {
        const r = await sql<{ restaurant_id: string }>`SELECT DISTINCT restaurant_id FROM capacity_outbox WHERE event_type = 'iso'`.execute(trx);
        return { tenant, seen: r.rows.map((x) => x.restaurant_id) };
      });
    });
    // Interleaved with untenanted statements, which must never see a tenant left behind.
    const plain = Array.from({ length: 40 }, () => sql<{ t: string | null }>`SELECT public.current_restaurant_id() AS t`.execute(worker));
    for (const r of await Promise.all(runs)) expect(r.seen).toEqual([r.tenant]);
    for (const r of await Promise.all(plain)) expect(r.rows[0]!.t).toBeNull();
    // A forged row for another tenant is refused inside a scope.
    await expect(
      scope.run(A, (trx) => sql`UPDATE capacity_outbox SET restaurant_id = ${B}::uuid WHERE event_type = 'iso'`.execute(trx)),
    ).rejects.toThrow(/permission denied|row-level security/);
  });

  it('migrate and adopt refuse a transaction pooler with exit 78 naming the URL', async () => {
    const through = await runCli(['migrate'], { DATABASE_URL: bouncer.via(db.adminUrl) });
    expect(through.code).toBe(78);
    expect(through.stderr).toMatch(/invalid configuration: DATABASE_URL: migrate and partitions adopt need a direct or session-mode connection/);
    expect(through.stderr).not.toMatch(/\n\s+at /);
    const viaFlag = await runCli(['migrate', '--database-url', bouncer.via(db.adminUrl)], {});
    expect(viaFlag.code).toBe(78);
    expect(viaFlag.stderr).toMatch(/--database-url: migrate and partitions adopt need a direct or session-mode connection/);
    const adopt = await runCli(['partitions', 'adopt', '--table', 'public.capacity_outbox'], { MIGRATION_DATABASE_URL: bouncer.via(db.adminUrl) });
    expect(adopt.code).toBe(78);
    expect(adopt.stderr).toMatch(/MIGRATION_DATABASE_URL: migrate and partitions adopt need a direct or session-mode connection/);
  }, 180_000);

  it('migrate --status, a direct migrate and the operator CLI work through it as before', async () => {
    const status = await runCli(['migrate', '--status', '--json'], { DATABASE_URL: bouncer.via(db.adminUrl) });
    expect(status.code).toBe(0);
    const direct = await runCli(['migrate'], { DATABASE_URL: db.adminUrl });
    expect(direct.code).toBe(0);
    const stats = await runCli(['events', 'stats', '--json'], { DATABASE_URL: bouncer.via(db.workerUrl) });
    expect(stats.stderr).toBe('');
    expect(stats.code).toBe(0);
  }, 180_000);

  it('partition rotation: one replica at a time through the lease row, released at the end (no session lock left behind)', async () => {
    const pools = [0, 1].map(() => createKysely(createPool({ connectionString: bouncer.via(db.workerUrl), max: 2, applicationName: 'rotator-test' })));
    try {
      const [a, b] = pools.map((p) => new PartitionRotator(p!, log, () => new Date('2026-11-10T00:00:00Z')));
      const reports = await Promise.all([a!.runOnce(), b!.runOnce()]);
      // Racing: at most one works; whichever does leaves the lease free for the next run.
      expect(reports.filter((r) => r.ran).length).toBeLessThanOrEqual(1);
      const leases = await db.query('SELECT count(*)::int AS n FROM outbox_dispatcher.maintenance_leases');
      expect(leases.rows[0].n).toBe(0);
      // Through a transaction pooler a session advisory lock would stay held on whichever
      // server session took it; the lease is free, so each rotator runs in turn.
      expect((await a!.runOnce()).ran).toBe(true);
      expect((await b!.runOnce()).ran).toBe(true);
      const advisory = await db.query("SELECT count(*)::int AS n FROM pg_locks WHERE locktype = 'advisory'");
      expect(advisory.rows[0].n).toBe(0);
    } finally {
      await Promise.all(pools.map((p) => p.destroy()));
    }
  }, 120_000);

  describe.each([
    { mode: 'without OUTBOX_LISTEN_URL (polling only)', listen: false },
    { mode: 'with OUTBOX_LISTEN_URL (direct)', listen: true },
  ])('the daemon $mode', ({ listen }) => {
    async function start(sink: ReturnType<typeof recordingSink>, env: Record<string, string> = {}, opts: { notifyOnly?: boolean } = {}): Promise<Daemon> {
      const daemon = await startDaemon(db, {
        connectionString: bouncer.via(db.workerUrl),
        ...(listen ? { listenUrl: db.workerUrl } : {}),
        sinks: { test: sink },
        // notifyOnly: with a listen URL, only a notification can wake it within the test's time.
        env: { OUTBOX_POLL_INTERVAL_MS: listen && opts.notifyOnly ? '600000' : '100', ...env },
      });
      if (listen) {
        await waitFor(async () => (await metricTotal(daemon.metrics.listenerConnected)) === 1, { what: 'LISTEN connected' });
      } else {
        await waitFor(async () => (await metricTotal(daemon.metrics.listenerPollingOnly)) === 1, { what: 'self-test verdict' });
      }
      return daemon;
    }

    it('delivers every event, and reports how it is woken', async () => {
      const sink = recordingSink('test');
      const daemon = await start(sink, {}, { notifyOnly: true });
      try {
        const tenant = tenantId();
        const ids = await produce(bouncer.via(db.producerUrl), tenant, Array.from({ length: 30 }, () => ({ type: 'delivery' })));
        await waitFor(() => ids.every((id) => sink.calls.some((c) => c.event.id === id)), { what: 'all delivered' });
        const mine = sink.calls.filter((c) => ids.includes(c.event.id));
        expect(new Set(mine.map((c) => c.event.restaurantId))).toEqual(new Set([tenant]));
        await waitFor(async () => !(await statusCounts(db)).processing, { what: 'completions written' });
        const done = await db.query(`SELECT count(*)::int AS n FROM capacity_outbox WHERE id = ANY($1) AND status = 'done'`, [ids]);
        expect(done.rows[0].n).toBe(30);
        expect(await metricTotal(daemon.metrics.listenerPollingOnly)).toBe(listen ? 0 : 1);
        expect(await metricTotal(daemon.metrics.listenerConnected)).toBe(listen ? 1 : 0);
        expect((await daemon.readiness()).checks.listener).toEqual({ ok: true, detail: listen ? 'connected' : 'polling only' });
      } finally {
        await daemon.stop();
      }
    });

    it('runs sinks’ database work in the event’s tenant', async () => {
      const [A, B] = [tenantId(), tenantId()];
      const seen = new Map<string, string[]>();
      const sink = recordingSink('test');
      sink.send = async (event, ctx) => {
        const r = await ctx.withTenant((trx) =>
          sql<{ restaurant_id: string }>`SELECT DISTINCT restaurant_id FROM capacity_outbox WHERE event_type = 'scoped'`.execute(trx),
        );
        seen.set(event.id, r.rows.map((x) => x.restaurant_id));
      };
      const daemon = await start(sink);
      try {
        const [ea] = await produce(bouncer.via(db.producerUrl), A, [{ type: 'scoped' }]);
        const [eb] = await produce(bouncer.via(db.producerUrl), B, [{ type: 'scoped' }]);
        await waitFor(() => seen.has(ea!) && seen.has(eb!), { what: 'both scoped sends' });
        expect(seen.get(ea!)).toEqual([A]);
        expect(seen.get(eb!)).toEqual([B]);
      } finally {
        await daemon.stop();
      }
    });

    it('loses nothing when its server connections are terminated mid-run', async () => {
      const sink = recordingSink('test', () => new Promise((r) => setTimeout(r, 5)));
      const daemon = await start(sink, { OUTBOX_BATCH_SIZE: '20', OUTBOX_CONCURRENCY: '4' });
      try {
        const tenant = tenantId();
        const ids = await produce(bouncer.via(db.producerUrl), tenant, Array.from({ length: 200 }, () => ({ type: 'kill' })));
        await waitFor(() => sink.calls.filter((c) => ids.includes(c.event.id)).length >= 20, { what: 'some delivered' });
        // Twice: each time as soon as PgBouncer has server connections for the worker again.
        for (let k = 0; k < 2; k++) {
          await waitFor(
            async () =>
              (
                await db.query(
                  `SELECT count(pg_terminate_backend(pid))::int AS n FROM pg_stat_activity WHERE usename = $1 AND datname = $2`,
                  [TEST_ROLES.worker, db.name],
                )
              ).rows[0].n > 0,
            { what: 'server connections of the worker to terminate' },
          );
        }
        await waitFor(() => ids.every((id) => sink.calls.some((c) => c.event.id === id)), { what: 'all delivered after the kills', timeoutMs: 90_000 });
        await waitFor(
          async () => (await db.query(`SELECT count(*)::int AS n FROM capacity_outbox WHERE id = ANY($1) AND status = 'done'`, [ids])).rows[0].n === 200,
          { what: 'all done', timeoutMs: 90_000 },
        );
      } finally {
        await daemon.stop();
      }
    });
  });
});

describe('the login role model (no pooler needed)', () => {
  /** A login created as `grants` says (its name substituted), handed to `check` with its URL, then dropped. */
  async function withLogin(prefix: string, grants: (role: string) => string, check: (mine: TestDatabase, role: string, url: string) => Promise<void>) {
    const mine = missing ? await createTestDatabase() : db;
    const role = `${prefix}_${process.pid}_${Date.now().toString(36)}`;
    await mine.query(grants(role));
    try {
      const u = new URL(mine.workerUrl);
      u.username = role;
      await check(mine, role, u.toString());
    } finally {
      await mine.query(`DROP ROLE ${role}`);
      if (missing) await mine.drop();
    }
  }

  /** Preflight refuses the login with exit 77; returns its message. */
  async function refused(url: string): Promise<string> {
    const err = await preflight(url, { allowPrivilegedRole: false, log }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(StartupError);
    expect((err as StartupError).exitCode).toBe(77);
    return (err as Error).message;
  }

  const accepted = (url: string) => expect(preflight(url, { allowPrivilegedRole: false, log })).resolves.toEqual({ roleSwitch: false });

  it('refuses a login that is also a producer: the producer policy would fail every claim (exit 77, naming the fix)', async () => {
    await withLogin('outbox_both', (role) => `CREATE ROLE ${role} LOGIN PASSWORD '${TEST_ROLES.password}' IN ROLE app_background, app_producer`, async (mine, role, url) => {
      expect(await refused(url)).toContain(`REVOKE app_producer FROM "${role}"`);
      await mine.query(`REVOKE app_producer FROM ${role}`);
      await accepted(url);
    });
  });

  it('refuses a member of app_background without INHERIT, naming the fix (exit 77)', async () => {
    await withLogin('outbox_noinherit', (role) => `CREATE ROLE ${role} LOGIN NOINHERIT PASSWORD '${TEST_ROLES.password}' IN ROLE app_background`, async (mine, role, url) => {
      const message = await refused(url);
      const v16 = Number((await mine.query('SHOW server_version_num')).rows[0].server_version_num) >= 160000;
      const fix = v16 ? `GRANT app_background TO "${role}" WITH INHERIT TRUE` : `ALTER ROLE "${role}" INHERIT`;
      expect(message).toContain(fix);
      expect(message).toMatch(/member of app_background without INHERIT/);
      await mine.query(fix);
      await accepted(url);
    });
  });
});
