import pg from 'pg';
import { Registry } from 'prom-client';
import { describe, expect } from 'vitest';
import { claimBatch, completeBatch } from '../src/db/queries/outbox.ts';
import { lockHolders } from '../src/db/queries/partitions.ts';
import { createLogger } from '../src/kernel/log.ts';
import { PartitionMetrics } from '../src/metrics/partition-metrics.ts';
import { PartitionMaintenance } from '../src/partitions/maintenance.ts';
import { PartitionRotator } from '../src/partitions/rotator.ts';
import { runCli } from './support/cli.ts';
import { createTestDatabase, produce, tenantId, waitFor, type TestDatabase } from './support/db.ts';
import { metricTotal } from './support/metrics.ts';
import { it } from './support/fixtures.ts';

// Rotation's DDL against live traffic (repros 06 and 07): it never queues producers behind a
// lock it is waiting for, gives up after its lock timeout and says so, and cannot deadlock
// with claims while it moves rows out of the default partition. Each test gets a fresh
// database, so each starts from the layout the migrations leave.

const log = createLogger('silent');
function monthStart(k: number): string {
  const now = new Date();
  return new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() + k, 1)).toISOString().slice(0, 10);
}
const partName = (k: number) => `capacity_outbox_p${monthStart(k).slice(0, 7).replace('-', '_')}`;

/** A long reader (report query, idle-in-transaction session, pg_dump): ACCESS SHARE on every partition. */
async function longReader(db: TestDatabase): Promise<pg.Client> {
  const c = new pg.Client(db.adminUrl);
  await c.connect();
  await c.query('BEGIN');
  await c.query('SELECT count(*) FROM capacity_outbox');
  return c;
}

const waitingLocks = async (db: TestDatabase) =>
  (await db.query<{ n: number }>(`SELECT count(*)::int AS n FROM pg_locks WHERE NOT granted AND relation = 'public.capacity_outbox_default'::regclass`)).rows[0]!.n;

describe('rotation DDL behind a long transaction (repro 06)', () => {
  it('does not queue producers behind its pending lock, then defers the step and names the holder', async ({ db }) => {
    const reader = await longReader(db);
    try {
      // Month +3 is missing: creating it needs the default partition exclusively for a moment.
      const rotation = new PartitionRotator(db.workerDb(), log, () => new Date(), { lockTimeoutMs: 5000, lockAttempts: 1 }).runOnce();
      await waitFor(async () => (await waitingLocks(db)) > 0, { what: 'rotation waiting for its lock' });
      const ids = await produce(db.producerUrl, tenantId(), [{ type: 'during.rotation' }, { type: 'during.rotation' }]);
      expect(ids).toHaveLength(2);
      // The producer committed while the DDL was still waiting: it did not queue behind it.
      expect(await waitingLocks(db)).toBe(1);
      const report = await rotation;
      const t = report.tables[0]!;
      expect(t.errors).toEqual([]);
      expect(t.deferred.map((d) => d.step)).toEqual([`create partition for ${monthStart(3)}`]);
      // The holders are listed in no particular order; the long reader must be among them.
      const readerPid = (await reader.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]!.pid;
      expect(t.deferred[0]!.message).toMatch(/^could not take its lock within 5000 ms in 1 tries; held by pid \d+/);
      expect(t.deferred[0]!.message).toMatch(new RegExp(`pid ${readerPid} \\(AccessShareLock on capacity_outbox`));
      expect(t.created).toEqual([]);
      expect((await db.query(`SELECT to_regclass($1) AS t`, [`public.${partName(3)}`])).rows[0].t).toBeNull();
    } finally {
      await reader.query('ROLLBACK');
      await reader.end();
    }
    // Once the reader is gone, the next run does it.
    const again = await new PartitionRotator(db.workerDb(), log).runOnce();
    expect(again.tables[0]!.deferred).toEqual([]);
    expect(again.tables[0]!.created).toEqual([monthStart(3)]);
  });

  it('names only holders in its own database (relation ids repeat across databases cloned from one template)', async ({ db }) => {
    const other = await createTestDatabase(); // same template: the same relation ids
    const elsewhere = await longReader(other);
    const here = await longReader(db);
    try {
      const pidOf = async (c: pg.Client) => (await c.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]!.pid;
      const holders = new Set((await lockHolders(db.workerDb(), 'public.capacity_outbox')).map((h) => h.pid));
      expect(holders.has(await pidOf(here))).toBe(true);
      expect(holders.has(await pidOf(elsewhere))).toBe(false);
    } finally {
      for (const c of [elsewhere, here]) {
        await c.query('ROLLBACK');
        await c.end();
      }
      await other.drop();
    }
  });

  it('partitions rotate exits 75 with a DEFERRED line; the metric counts a deferred run and last success does not move', async ({ db }) => {
    const reader = await longReader(db);
    try {
      const r = await runCli(['partitions', 'rotate'], { DATABASE_URL: db.workerUrl, LOG_LEVEL: 'error', PARTITION_LOCK_TIMEOUT_MS: '200' });
      expect(r.code, r.stdout + r.stderr).toBe(75);
      expect(r.stdout).toMatch(/DEFERRED: create partition for \d{4}-\d{2}-01: could not take its lock within 200 ms in 3 tries; held by pid \d+/);
      expect(r.stderr).not.toMatch(/\n\s+at /);

      const metrics = new PartitionMetrics(new Registry());
      const m = new PartitionMaintenance(db.workerDb(), log, metrics, { cron: '17 * * * *', lockTimeoutMs: 200 });
      const report = await m.runOnce();
      expect(report.tables[0]!.deferred).toHaveLength(1);
      expect(await metricTotal(metrics.rotationRuns, { result: 'deferred' })).toBe(1);
      expect(await metricTotal(metrics.rotationRuns, { result: 'ok' })).toBe(0);
      expect(await metricTotal(metrics.lastSuccess, { table: 'public.capacity_outbox' })).toBe(0);
    } finally {
      await reader.query('ROLLBACK');
      await reader.end();
    }
    const ok = await runCli(['partitions', 'rotate'], { DATABASE_URL: db.workerUrl, LOG_LEVEL: 'error' });
    expect(ok.code, ok.stdout + ok.stderr).toBe(0);
  });
});

describe('retirement behind a long transaction', () => {
  it('holds a producer up by at most the lock timeout, then defers; a blocked partition costs no exclusive lock at all', async ({ db }) => {
    await db.query(`SELECT outbox_dispatcher.ensure_monthly_partition('public.capacity_outbox', $1::date)`, [monthStart(-10)]);
    await db.query(`SELECT outbox_dispatcher.ensure_monthly_partition('public.capacity_outbox', $1::date)`, [monthStart(-9)]);
    await db.query(`INSERT INTO capacity_outbox (restaurant_id, event_type, created_at) VALUES (gen_random_uuid(), 'old', $1::date + interval '1 day')`, [monthStart(-9)]);
    const reader = await longReader(db);
    try {
      const rotation = new PartitionRotator(db.workerDb(), log, () => new Date(), { lockTimeoutMs: 1500, lockAttempts: 1 }).runOnce();
      await waitFor(async () => (await db.query(`SELECT count(*)::int AS n FROM pg_locks WHERE NOT granted AND relation = 'public.capacity_outbox'::regclass`)).rows[0].n > 0, {
        what: 'retirement waiting for its lock',
      });
      // Queued behind the pending ACCESS EXCLUSIVE request, released when it times out: the
      // reader is still there when the producer commits.
      expect(await produce(db.producerUrl, tenantId(), [{ type: 'during.retirement' }])).toHaveLength(1);
      expect((await reader.query('SELECT 1 AS alive')).rows[0].alive).toBe(1);
      const t = (await rotation).tables[0]!;
      expect(t.errors).toEqual([]);
      // (Creating month +3 needs the default partition, which the reader holds too.)
      expect(t.deferred.map((d) => d.step)).toEqual([`create partition for ${monthStart(3)}`, `retire ${partName(-10)}`]);
      // The partition holding a pending event was reported blocked from a lock-free count.
      expect(t.blocked.map((b) => b.partition)).toEqual([partName(-9)]);
    } finally {
      await reader.query('ROLLBACK');
      await reader.end();
    }
    const again = (await new PartitionRotator(db.workerDb(), log).runOnce()).tables[0]!;
    expect(again.retired).toEqual([partName(-10)]);
  });
});

describe('moving rows out of the default partition while workers claim (repro 07)', () => {
  it('finishes without a deadlock, loses no row, and claims keep working', async ({ db }) => {
    // 30 000 rows stranded in the default partition for month +7, and live events to claim.
    await db.query(`INSERT INTO capacity_outbox_default (restaurant_id, event_type, status, created_at)
      SELECT gen_random_uuid(), 'stranded', 'done', $1::timestamptz + g * interval '1 second' FROM generate_series(1, 30000) g`, [monthStart(7)]);
    const tenant = tenantId();
    const live = await produce(db.producerUrl, tenant, Array.from({ length: 300 }, (_, i) => ({ type: 'live', payload: { i } })));

    const worker = db.workerDb();
    let rotating = true;
    const claimErrors: string[] = [];
    const completed = new Set<string>();
    const claimer = (async () => {
      while (rotating || completed.size < live.length) {
        try {
          const batch = await claimBatch(worker, { workerId: 'w', limit: 5, leaseMs: 60_000, maxPayloadBytes: 1_048_576 });
          const ids = await completeBatch(worker, 'w', batch.map((r) => ({ id: r.id, createdAtKey: r.created_at_key, attempt: r.attempts, outcome: { kind: 'done' as const } })));
          for (const id of ids) completed.add(id);
          if (batch.length === 0 && !rotating) break;
        } catch (err) {
          claimErrors.push(`${(err as { code?: string }).code}: ${(err as Error).message}`);
        }
      }
    })();
    let report;
    try {
      report = await new PartitionRotator(db.workerDb(), log, () => new Date(), { lockTimeoutMs: 10_000 }).runOnce();
    } finally {
      rotating = false;
      await claimer;
    }
    const t = report.tables[0]!;
    expect(t.errors).toEqual([]);
    expect(t.deferred).toEqual([]);
    expect(t.created).toContain(monthStart(7));
    expect(claimErrors).toEqual([]);
    expect(completed.size).toBe(live.length);
    const where = await db.query(`SELECT tableoid::regclass::text AS part, count(*)::int AS n FROM capacity_outbox WHERE event_type = 'stranded' GROUP BY 1`);
    expect(where.rows).toEqual([{ part: partName(7), n: 30000 }]);
  });
});
