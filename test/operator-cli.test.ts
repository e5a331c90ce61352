import { describe, expect } from 'vitest';
import { produce, statusCounts, tenantId, type TestDatabase } from './support/db.ts';
import { runCli } from './support/cli.ts';
import { it } from './support/fixtures.ts';

const [A, B] = [tenantId(), tenantId()];
/** The commands' environment: the daemon's login on this test's database. */
const envOf = (db: TestDatabase) => ({ DATABASE_URL: db.workerUrl, LOG_LEVEL: 'warn' });

async function seedDead(db: TestDatabase) {
  await produce(db.producerUrl, A, [{ type: 'booking.created' }, { type: 'booking.cancelled' }, { type: 'table.held' }]);
  await produce(db.producerUrl, B, [{ type: 'booking.created' }]);
  await db.query("UPDATE capacity_outbox SET status = 'dead', attempts = 10, last_error = 'exhausted 10/10 attempts: HTTP 503'");
}

describe('events abandon', () => {
  it('needs --reason (exit 64, one line), and --dry-run changes nothing', async ({ db }) => {
    await seedDead(db);
    const noReason = await runCli(['events', 'abandon', '--tenant', A], envOf(db));
    expect(noReason.code).toBe(64);
    expect(noReason.stderr.trimEnd().split('\n'), 'one line, no stack').toHaveLength(1);
    expect(noReason.stderr).toContain('--reason');
    const dry = await runCli(['events', 'abandon', '--tenant', A, '--type', 'booking.*', '--reason', 'OPS-1', '--dry-run', '--json'], envOf(db));
    expect(dry.code).toBe(0);
    expect(JSON.parse(dry.stdout).wouldAbandon).toBe(2);
    expect(await statusCounts(db)).toEqual({ dead: 4 });
  });

  it('marks matching dead events done with who and why in last_error, audited with the filter and count', async ({ db }) => {
    await seedDead(db);
    const r = await runCli(['events', 'abandon', '--tenant', A, '--type', 'booking.*', '--reason', 'OPS-42 receiver retired'], envOf(db));
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('abandoned 2 dead event(s)');
    const { rows } = await db.query("SELECT event_type, status, dispatched_at, last_error FROM capacity_outbox WHERE status = 'done' ORDER BY event_type");
    expect(rows.map((x) => x.event_type)).toEqual(['booking.cancelled', 'booking.created']);
    for (const x of rows) {
      expect(x.dispatched_at).toBeNull(); // never delivered
      expect(x.last_error).toMatch(/^abandoned by outbox_test_worker\S*: OPS-42 receiver retired; exhausted 10\/10 attempts: HTTP 503$/);
    }
    expect(await statusCounts(db)).toEqual({ done: 2, dead: 2 });
    const audit = JSON.parse((await runCli(['audit', '--action', 'events.abandon', '--json'], envOf(db))).stdout);
    expect(audit.entries).toHaveLength(1);
    expect(audit.entries[0]).toMatchObject({ action: 'events.abandon', rows: 2, result: 'abandoned 2' });
    expect(audit.entries[0].filter).toMatchObject({ tenant: A, reason: 'OPS-42 receiver retired' });
  });
});

describe('events replay', () => {
  it('--dry-run lists what it would touch and changes nothing', async ({ db }) => {
    await seedDead(db);
    const before = await db.query('SELECT id, status, attempts, next_attempt_at FROM capacity_outbox ORDER BY id');
    const r = await runCli(['events', 'replay', '--type', 'booking.*', '--tenant', A, '--dry-run', '--json'], envOf(db));
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const out = JSON.parse(r.stdout);
    expect(out.wouldReplay).toBe(2);
    expect(out.sample.map((s: { event_type: string }) => s.event_type).sort()).toEqual(['booking.cancelled', 'booking.created']);
    const after = await db.query('SELECT id, status, attempts, next_attempt_at FROM capacity_outbox ORDER BY id');
    expect(after.rows).toEqual(before.rows);
  });

  it('returns matching dead events to pending with a fresh attempt budget', async ({ db }) => {
    await seedDead(db);
    const r = await runCli(['events', 'replay', '--type', 'booking.*', '--tenant', A], envOf(db));
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('replayed 2 dead event(s) to pending');
    const { rows } = await db.query('SELECT restaurant_id, event_type, status, attempts FROM capacity_outbox ORDER BY restaurant_id, event_type');
    const pending = rows.filter((x) => x.status === 'pending');
    expect(pending.map((x) => [x.restaurant_id, x.event_type]).sort()).toEqual([[A, 'booking.cancelled'], [A, 'booking.created']]);
    expect(pending.every((x) => x.attempts === 0)).toBe(true);
    expect(await statusCounts(db)).toEqual({ pending: 2, dead: 2 });
  });

  it('filters by time range and id, and honours --limit', async ({ db }) => {
    await seedDead(db);
    const future = await runCli(['events', 'replay', '--since', '2999-01-01T00:00:00Z'], envOf(db));
    expect(future.stdout).toContain('replayed 0 dead event(s)');
    const limited = await runCli(['events', 'replay', '--until', '2999-01-01T00:00:00Z', '--limit', '3'], envOf(db));
    expect(limited.stdout).toContain('replayed 3 dead event(s)');
    const { rows } = await db.query("SELECT id FROM capacity_outbox WHERE status = 'dead'");
    const one = await runCli(['events', 'replay', '--id', rows[0].id], envOf(db));
    expect(one.stdout).toContain('replayed 1 dead event(s)');
    expect(await statusCounts(db)).toEqual({ pending: 4 });
  }, 240_000); // four CLI starts; slow only on a loaded machine

  it('rejects malformed filters with exit 64 before touching the database', async ({ db }) => {
    for (const args of [['--tenant', 'nope'], ['--since', 'yesterday'], ['--type', "x' OR 1=1 --"], ['--limit', '-1']]) {
      const r = await runCli(['events', 'replay', ...args], envOf(db));
      expect(r.code, args.join(' ')).toBe(64);
      expect(r.stderr.trimEnd().split('\n'), 'one line, no stack').toHaveLength(1);
    }
  }, 240_000); // four CLI starts; slow only on a loaded machine
});

describe('events stats', () => {
  it('counts by status and type and reports the oldest due event', async ({ db }) => {
    await seedDead(db);
    await produce(db.producerUrl, A, [{ type: 'booking.created' }, { type: 'booking.created' }]);
    await db.query("UPDATE capacity_outbox SET next_attempt_at = now() - interval '90 seconds' WHERE status = 'pending'");
    const r = await runCli(['events', 'stats', '--json'], envOf(db));
    expect(r.code).toBe(0);
    const stats = JSON.parse(r.stdout);
    const get = (status: string, type: string) => stats.rows.find((x: { status: string; event_type: string }) => x.status === status && x.event_type === type)?.count;
    expect(get('pending', 'booking.created')).toBe(2);
    expect(get('dead', 'booking.created')).toBe(2);
    expect(get('dead', 'table.held')).toBe(1);
    expect(stats.oldestDueAgeSeconds).toBeGreaterThanOrEqual(90);
    const text = await runCli(['events', 'stats', '--tenant', B], envOf(db));
    expect(text.stdout).toContain('totals: pending=0 processing=0 dead=1');
  });
});

describe('enqueue', () => {
  it('inserts through the producer contract and reports duplicates', async ({ db }) => {
    const t = tenantId();
    const r = await runCli(['enqueue', '--type', 'booking.created', '--tenant', t, '--payload', '{"bookingId":1}', '--dedupe-key', 'b1', '--count', '3', '--json'], {
      DATABASE_URL: db.producerUrl,
    });
    expect(r.code).toBe(0);
    const out = JSON.parse(r.stdout);
    expect(out.inserted).toHaveLength(1);
    expect(out.duplicates).toEqual([{ activeEventId: out.inserted[0] }, { activeEventId: out.inserted[0] }]);
    const { rows } = await db.query('SELECT payload FROM capacity_outbox WHERE restaurant_id = $1', [t]);
    expect(rows).toEqual([{ payload: { bookingId: 1 } }]);
  });
});
