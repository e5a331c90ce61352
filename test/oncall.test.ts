import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Daemon } from '../src/lifecycle/daemon.ts';
import type { RoutesFileInput } from '../src/config/routes.ts';
import { RetryableDispatchError } from '../src/domain/dispatch-errors.ts';
import { runCli } from './support/cli.ts';
import { recordingSink, startDaemon } from './support/daemon.ts';
import { createTestDatabase, produce, tenantId, waitFor, type TestDatabase } from './support/db.ts';

// On-call controls (issue 13, ADR 0014): events show / list, sink pause and resume as every
// replica sees them, and the audit trail, driven through the real CLI as the daemon's login.

const ROUTES: RoutesFileInput = {
  routes: [
    { match: 'booking.*', sink: { type: 'noop', name: 'bookings' } },
    { match: '*', sink: { type: 'noop', name: 'other' } },
  ],
};

let db: TestDatabase;
let env: Record<string, string>;
const T = tenantId();

beforeAll(async () => {
  db = await createTestDatabase();
  env = { DATABASE_URL: db.workerUrl, OUTBOX_ROUTES: JSON.stringify(ROUTES), LOG_LEVEL: 'warn' };
});
afterAll(async () => {
  await db.drop();
});

async function cli(args: string[]) {
  const r = await runCli(args, env);
  if (r.code !== 0) throw new Error(`${args.join(' ')} exited ${r.code}: ${r.stderr}`);
  return r;
}

describe('sink pause', () => {
  let daemon: Daemon;
  const bookings = recordingSink('bookings');
  const other = recordingSink('other');

  beforeAll(async () => {
    daemon = await startDaemon(db, { routes: ROUTES, sinks: { bookings, other } });
  });
  afterAll(async () => {
    await daemon.stop();
  });

  it('parks a paused sink\'s events unattempted (keeping key order), sends other sinks\', and resume delivers them in order', async () => {
    const paused = await cli(['sinks', 'pause', 'bookings', '--reason', 'receiver migrating (INC-42)']);
    expect(paused.stdout).toContain('paused bookings');
    await waitFor(() => daemon.sinkPauses.isPaused('bookings'), { what: 'the replica to see the pause' });

    const keyed = await produce(db.producerUrl, T, [1, 2, 3].map((n) => ({ type: 'booking.changed', orderingKey: 'b-1', payload: { n } })));
    const [plain] = await produce(db.producerUrl, T, [{ type: 'booking.created' }]);
    await produce(db.producerUrl, T, [{ type: 'table.held' }]);

    await waitFor(() => other.calls.length === 1, { what: 'the other sink to get its event' });
    const parked = await waitFor(async () => {
      const r = await db.query('SELECT count(*)::int AS n FROM outbox_dispatcher.sink_parked WHERE sink = $1', ['bookings']);
      return r.rows[0].n === 2 ? r : undefined;
    }, { what: 'the head of the key and the unkeyed event to be parked' });
    expect(parked.rows[0].n).toBe(2);
    expect(bookings.calls).toHaveLength(0);
    const rows = await db.query('SELECT id, status, attempts, next_attempt_at = \'infinity\' AS waiting FROM capacity_outbox WHERE event_type LIKE \'booking.%\'');
    expect(rows.rows.every((r) => r.status === 'pending' && r.attempts === 0)).toBe(true);
    // The key's later events still wait; only its head was claimed and parked.
    expect(rows.rows.filter((r) => r.waiting).map((r) => r.id).sort()).toEqual([keyed[1], keyed[2]].sort());

    // Parked events are not claimed again: the released counter stays put over several polls.
    const released = async () => (await daemon.metrics.eventsReleased.get()).values.find((v) => v.labels.reason === 'sink_paused')?.value ?? 0;
    const before = await released();
    await new Promise((r) => setTimeout(r, 1000));
    expect(await released()).toBe(before);

    const shown = await cli(['events', 'show', plain!]);
    expect(shown.stdout).toMatch(/next attempt:\s+parked: sink bookings is paused/);
    const status = JSON.parse((await cli(['sinks', 'status', '--json'])).stdout);
    const b = status.sinks.find((s: { sink: string }) => s.sink === 'bookings');
    expect(b).toMatchObject({ paused: true, type: 'noop', pause: { reason: 'receiver migrating (INC-42)', parked: 2 } });
    expect(b.pause.login_role).toBe(new URL(db.workerUrl).username);
    expect(status.sinks.find((s: { sink: string }) => s.sink === 'other').paused).toBe(false);
    const metrics = await daemon.metrics.registry.getSingleMetricAsString('outbox_sink_paused');
    expect(metrics).toContain('outbox_sink_paused{sink="bookings"} 1');
    expect(metrics).toContain('outbox_sink_paused{sink="other"} 0');

    const resumed = await cli(['sinks', 'resume', 'bookings']);
    expect(resumed.stdout).toContain('2 parked event(s) are due again');
    await waitFor(() => bookings.calls.length === 4, { what: 'the parked events to be delivered' });
    const keyOrder = bookings.calls.filter((c) => c.event.orderingKey === 'b-1' || keyed.includes(c.event.id)).map((c) => c.event.id);
    expect(keyOrder).toEqual(keyed);
    const attempts = await db.query("SELECT max(attempts)::int AS a FROM capacity_outbox WHERE event_type LIKE 'booking.%' AND status = 'done'");
    expect(attempts.rows[0].a).toBe(1);

    const again = await runCli(['sinks', 'resume', 'bookings'], env);
    expect(again.code).toBe(1);
    const unknown = await runCli(['sinks', 'pause', 'nope', '--reason', 'x'], env);
    expect(unknown.code).toBe(64);
    expect(unknown.stderr).toContain('configured: bookings, other');

    const audit = JSON.parse((await cli(['audit', '--action', 'sink.*', '--json'])).stdout);
    expect(audit.entries.map((e: { action: string; rows: number; result: string }) => [e.action, e.rows, e.result])).toEqual([
      ['sink.resume', 0, 'not_paused'],
      ['sink.resume', 2, 'resumed; 2 parked event(s) due'],
      ['sink.pause', 1, 'paused'],
    ]);
    expect(audit.entries[2].filter).toEqual({ sink: 'bookings', reason: 'receiver migrating (INC-42)' });
    expect(audit.entries[2].os_user).toBeTruthy();
  }, 120_000);

  it('a parked event whose pause row is removed by other means is made due again by the replicas', async () => {
    await cli(['sinks', 'pause', 'bookings', '--reason', 'test']);
    await waitFor(() => daemon.sinkPauses.isPaused('bookings'));
    const [id] = await produce(db.producerUrl, T, [{ type: 'booking.orphaned' }]);
    await waitFor(async () => (await db.query('SELECT 1 FROM outbox_dispatcher.sink_parked WHERE event_id = $1', [id])).rowCount === 1);
    await db.query('DELETE FROM outbox_dispatcher.sink_pauses');
    await waitFor(() => bookings.calls.some((c) => c.event.id === id), { what: 'the orphaned parked event to be delivered' });
  }, 60_000);
});

describe('events show and list', () => {
  it('show: every field, the partition, payload only with --payload, and the key position', async () => {
    await db.query('TRUNCATE capacity_outbox');
    const keyed = await produce(db.producerUrl, T, [1, 2, 3].map((n) => ({ type: 'order.placed', orderingKey: 'o-7', dedupeKey: `d-${n}`, payload: { n } })));
    await db.query("UPDATE capacity_outbox SET status = 'dead', last_error = 'HTTP 503: down' WHERE id = $1", [keyed[0]]);
    const head = JSON.parse((await cli(['events', 'show', keyed[0]!, '--json'])).stdout);
    expect(head).toMatchObject({ id: keyed[0], status: 'dead', restaurant_id: T, event_type: 'order.placed', dedupe_key: 'd-1', last_error: 'HTTP 503: down', ordering_key: 'o-7' });
    expect(head.partition).toMatch(/^capacity_outbox_p\d{4}_\d\d$/);
    expect(head.payload).toBeUndefined();
    expect(head.key).toMatchObject({ ahead: 0, behind: 2, blocked_by: keyed[0] });
    const third = await cli(['events', 'show', keyed[2]!, '--payload']);
    expect(third.stdout).toMatch(/key position:\s+1 unsettled event\(s\) of the key ahead, 0 behind; key blocked since .* by dead head/);
    expect(third.stdout).toMatch(/next attempt:\s+waiting for its ordering key's earlier events/);
    expect(third.stdout).toContain('"n": 3');
    const missing = await runCli(['events', 'show', '00000000-0000-4000-8000-000000000000'], env);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain('no event');
  }, 60_000);

  it('list: filters, bounded pages and a keyset cursor', async () => {
    await db.query('TRUNCATE capacity_outbox');
    const other = tenantId();
    await produce(db.producerUrl, T, Array.from({ length: 7 }, () => ({ type: 'booking.created' })));
    await produce(db.producerUrl, other, [{ type: 'booking.created' }, { type: 'table.held' }]);
    await db.query("UPDATE capacity_outbox SET status = 'dead', last_error = 'HTTP 410 Gone' WHERE restaurant_id = $1", [T]);
    const seen: string[] = [];
    let after: string | null = null;
    for (let page = 0; page < 5; page++) {
      const args: string[] = ['events', 'list', '--status', 'dead', '--tenant', T, '--type', 'booking.*', '--error-contains', '410 gone', '--limit', '3', '--json'];
      if (after) args.push('--after', after);
      const out: { events: { id: string }[]; next: string | null } = JSON.parse((await cli(args)).stdout);
      seen.push(...out.events.map((e) => e.id));
      after = out.next;
      if (!after) break;
    }
    expect(seen).toHaveLength(7);
    expect(new Set(seen).size).toBe(7);
    const none = JSON.parse((await cli(['events', 'list', '--tenant', other, '--type', 'booking.*', '--error-contains', 'gone', '--json'])).stdout);
    expect(none.events).toEqual([]);
    const bad = await runCli(['events', 'list', '--status', 'done'], env);
    expect(bad.code).toBe(64);
    expect(bad.stderr).toContain('--status done needs --since');
  }, 120_000);
});

describe('audit trail of event repairs', () => {
  it('replay records who, the filter and the rows; a dry run records nothing', async () => {
    await db.query('TRUNCATE capacity_outbox');
    await produce(db.producerUrl, T, [{ type: 'booking.created' }, { type: 'booking.created' }]);
    await db.query("UPDATE capacity_outbox SET status = 'dead', last_error = 'x'");
    const before = (await db.query('SELECT count(*)::int AS n FROM outbox_dispatcher.operator_audit')).rows[0].n;
    await cli(['events', 'replay', '--tenant', T, '--dry-run']);
    expect((await db.query('SELECT count(*)::int AS n FROM outbox_dispatcher.operator_audit')).rows[0].n).toBe(before);
    await cli(['events', 'replay', '--tenant', T, '--type', 'booking.*']);
    const out = JSON.parse((await cli(['audit', '--action', 'events.replay', '--limit', '1', '--json'])).stdout);
    expect(out.entries[0]).toMatchObject({ action: 'events.replay', command: 'events replay', rows: 2, filter: { tenant: T, types: ['booking.*'] } });
    expect(out.entries[0].login_role).toBe(new URL(db.workerUrl).username);
    expect(out.entries[0].finished_at).not.toBeNull();
  }, 60_000);

  it('the daemon\'s login cannot write or rewrite the trail except through the functions', async () => {
    const worker = db.workerDb();
    await expect(
      worker.insertInto('outbox_dispatcher.operator_audit').values({ login_role: 'someone', work_role: 'x', os_user: null, action: 'events.replay', command: 'x', filter: '{}', finished_at: null, result: null }).execute(),
    ).rejects.toThrow(/permission denied/);
    await expect(worker.deleteFrom('outbox_dispatcher.operator_audit').execute()).rejects.toThrow(/permission denied/);
  });
});

describe('partition gauges are never stale', () => {
  it('outbox_partition_default_rows and the last-success gauge follow the database on their own schedule: a CLI rotation shows within it', async () => {
    // Rotation off in this replica: only the sampler can move the gauge.
    const daemon = await startDaemon(db, { routes: ROUTES, env: { PARTITION_ROTATION: 'false', PARTITION_SAMPLE_MS: '200' } });
    try {
      const gauge = async () => {
        const text = await daemon.metrics.registry.getSingleMetricAsString('outbox_partition_default_rows');
        return Number(/outbox_partition_default_rows\{table="public.capacity_outbox"\} (\d+)/.exec(text)?.[1] ?? NaN);
      };
      await waitFor(async () => (await gauge()) === 0, { what: 'the gauge to read 0' });
      // Two rows whose month has no partition yet land in the default partition.
      await db.query(
        `INSERT INTO capacity_outbox (restaurant_id, event_type, payload, status, created_at)
         VALUES ($1, 'late.write', '{}', 'done', now() + interval '5 months'), ($1, 'late.write', '{}', 'done', now() + interval '5 months')`,
        [T],
      );
      await waitFor(async () => (await gauge()) === 2, { what: 'the gauge to read the 2 rows', timeoutMs: 10_000 });
      // This replica never rotated: no last-success series yet, so OutboxPartitionRotationStale
      // would stay silent (no series) or, with an old one, fire while a cron job rotates fine.
      const lastSuccess = async () => {
        const text = await daemon.metrics.registry.getSingleMetricAsString('outbox_partition_rotation_last_success_timestamp_seconds');
        return Number(/outbox_partition_rotation_last_success_timestamp_seconds\{table="public.capacity_outbox"\} (\d+(\.\d+)?)/.exec(text)?.[1] ?? 0);
      };
      expect(await lastSuccess()).toBe(0);
      const before = Date.now() / 1000;
      await cli(['partitions', 'rotate']);
      await waitFor(async () => (await gauge()) === 0, { what: 'the gauge to see the CLI rotation', timeoutMs: 10_000 });
      await waitFor(async () => (await lastSuccess()) >= before - 1, { what: 'the last-success gauge to see the CLI rotation', timeoutMs: 10_000 });
      const audit = JSON.parse((await cli(['audit', '--action', 'partitions.rotate', '--limit', '1', '--json'])).stdout);
      expect(audit.entries[0]).toMatchObject({ action: 'partitions.rotate', command: 'partitions rotate' });
      expect(audit.entries[0].rows).toBeGreaterThan(0);
    } finally {
      await daemon.stop();
    }
  }, 120_000);
});

describe('sinks status shows each replica\'s circuit and sends in flight', () => {
  it('a circuit that opens in one replica and a send in flight show through the CLI; a stopped replica drops out', async () => {
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const failing = recordingSink('bookings', () => {
      throw new RetryableDispatchError('503 from the bookings receiver');
    });
    const slow = recordingSink('other', () => gate);
    // The circuit stays open for the whole test once two sends have failed.
    const circuitEnv = { OUTBOX_CIRCUIT_FAILURE_THRESHOLD: '2', OUTBOX_CIRCUIT_OPEN_MS: '600000', OUTBOX_STATUS_REPORT_MS: '200' };
    const a = await startDaemon(db, { routes: ROUTES, sinks: { bookings: failing, other: slow }, env: { ...circuitEnv, OUTBOX_WORKER_ID: 'replica-a' } });
    let b: Daemon | undefined;
    try {
      await produce(db.producerUrl, T, [1, 2, 3].map((n) => ({ type: 'booking.circuit', payload: { n } })));
      const [held] = await produce(db.producerUrl, T, [{ type: 'table.circuit' }]);
      await waitFor(() => a.circuits.state('bookings') === 'open', { what: 'replica-a\'s bookings circuit to open' });
      await waitFor(() => a.dispatcher.sendingTo('other') === 1, { what: 'the held send to start' });
      // A second replica that has sent nothing to bookings: its circuit is closed.
      b = await startDaemon(db, { routes: ROUTES, sinks: { bookings: recordingSink('bookings'), other: recordingSink('other') }, env: { ...circuitEnv, OUTBOX_WORKER_ID: 'replica-b' } });

      type Status = { sinks: { sink: string; circuit: string; in_flight: number | null; replicas: { worker_id: string; circuit: string; in_flight: number }[] }[]; liveReplicas: number };
      const status = async (): Promise<Status> => JSON.parse((await cli(['sinks', 'status', '--json'])).stdout);
      const both = await waitFor(async () => {
        const s = await status();
        const other = s.sinks.find((x) => x.sink === 'other');
        return s.liveReplicas === 2 && other?.in_flight === 1 ? s : undefined;
      }, { what: 'both replicas\' reports, with the held send', timeoutMs: 10_000 });
      const bookings = both.sinks.find((x) => x.sink === 'bookings')!;
      expect(bookings.circuit).toBe('open on replica-a; closed on replica-b');
      expect(bookings.replicas.map((r) => [r.worker_id, r.circuit])).toEqual([['replica-a', 'open'], ['replica-b', 'closed']]);
      expect(bookings.in_flight).toBe(0);
      const other = both.sinks.find((x) => x.sink === 'other')!;
      expect(other.circuit).toBe('closed (2 replicas)');
      expect(other.replicas).toEqual([expect.objectContaining({ worker_id: 'replica-a', circuit: 'closed', in_flight: 1 }), expect.objectContaining({ worker_id: 'replica-b', circuit: 'closed', in_flight: 0 })]);

      const text = (await cli(['sinks', 'status'])).stdout;
      expect(text).toMatch(/^bookings\s.*open on replica-a; closed on replica-b\s+0\s/m);
      expect(text).toMatch(/^other\s.*closed \(2 replicas\)\s+1\s/m);
      expect(text).toContain('as reported by 2 live replicas');

      // A replica that stops removes its rows at once.
      await b.stop();
      b = undefined;
      const after = await status();
      expect(after.liveReplicas).toBe(1);
      expect(after.sinks.find((x) => x.sink === 'bookings')!.circuit).toBe('open on replica-a');

      release();
      await waitFor(() => slow.calls.some((c) => c.event.id === held), { what: 'the held send to finish' });
    } finally {
      release();
      await b?.stop();
      await a.stop();
    }
    // Nothing of a stopped replica stays behind.
    expect((await db.query('SELECT count(*)::int AS n FROM outbox_dispatcher.replica_sink_status')).rows[0].n).toBe(0);
  }, 120_000);
});
