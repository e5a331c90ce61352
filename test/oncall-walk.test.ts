import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli, startWorkerProcess, type WorkerProcess } from './support/cli.ts';
import { createTestDatabase, produce, tenantId, waitFor, type TestDatabase } from './support/db.ts';
import { startReceiver } from './support/http-receiver.ts';
import { freePort } from './support/ports.ts';

// Issue 13, "what it must show": the on-call walk as a terminal session would run it. A real
// daemon process delivers to a real HTTP receiver; every step is the real CLI, run as a
// subprocess with the daemon's login (the login the docs name for these commands):
//   find why event X failed (events show) -> pause its sink -> dry-run, then replay tenant T's
//   events of type Y from a time window -> resume -> see each action in `audit`.

let db: TestDatabase;
let receiver: Awaited<ReturnType<typeof startReceiver>>;
let daemon: WorkerProcess;
let metricsPort: number;
let env: Record<string, string>;
const T = tenantId();
const U = tenantId();

beforeAll(async () => {
  db = await createTestDatabase();
  // The receiver rejects booking.created for a while ("gone": a permanent error, dead at once).
  receiver = await startReceiver((r) => (r.json?.eventType === 'booking.created' ? { status: 410, body: 'endpoint gone' } : { status: 200 }));
  metricsPort = await freePort();
  const routes = JSON.stringify({ routes: [{ match: '*', sink: { type: 'http', name: 'webhooks', url: receiver.url, timeoutMs: 2000 } }] });
  env = { DATABASE_URL: db.workerUrl, OUTBOX_ROUTES: routes, LOG_LEVEL: 'warn' };
  daemon = startWorkerProcess({
    ...env,
    METRICS_PORT: String(metricsPort),
    METRICS_HOST: '127.0.0.1',
    OUTBOX_POLL_INTERVAL_MS: '200',
    OUTBOX_BACKOFF_BASE_MS: '50',
    OUTBOX_BACKOFF_MAX_MS: '200',
    PARTITION_ROTATION: 'false',
  });
  await waitFor(() => fetch(`http://127.0.0.1:${metricsPort}/readyz`).then((r) => r.status === 200), { what: 'the daemon to be ready', timeoutMs: 60_000 });
}, 120_000);
afterAll(async () => {
  daemon?.child.kill('SIGTERM');
  await daemon?.exited;
  await receiver?.close();
  await db?.drop();
});

async function sh(...args: string[]) {
  const r = await runCli(args, env);
  expect(r.stderr, `${args.join(' ')}: no error output`).toBe('');
  expect(r.code, `${args.join(' ')}\n${r.stdout}`).toBe(0);
  return r.stdout;
}

const pausedGauge = async () =>
  Number(/^outbox_sink_paused\{sink="webhooks"\} (\d)/m.exec(await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text())?.[1]);
const statusOf = async (ids: string[]) =>
  (await db.query<{ status: string }>('SELECT status FROM capacity_outbox WHERE id = ANY($1) ORDER BY id', [ids])).rows.map((r) => r.status);

describe('the on-call walk', () => {
  it('show -> pause -> dry-run -> replay by tenant, type and window -> resume -> audit', async () => {
    // An old failure of T, outside the window the walk replays.
    await db.query(
      `INSERT INTO capacity_outbox (restaurant_id, event_type, payload, status, attempts, last_error, created_at)
       VALUES ($1, 'booking.created', '{}', 'dead', 1, 'permanent: HTTP 410', now() - interval '2 days')`,
      [T],
    );
    const windowStart = new Date(Date.now() - 1000).toISOString();
    const failing = await produce(db.producerUrl, T, [{ type: 'booking.created', payload: { n: 1 } }, { type: 'booking.created', payload: { n: 2 } }, { type: 'booking.created', payload: { n: 3 } }]);
    const fine = await produce(db.producerUrl, T, [{ type: 'table.held' }]);
    const otherTenant = await produce(db.producerUrl, U, [{ type: 'booking.created' }]);
    await waitFor(async () => (await statusOf([...failing, ...otherTenant])).every((s) => s === 'dead') && (await statusOf(fine))[0] === 'done', {
      what: 'the failures to be dead-lettered',
    });
    const windowEnd = new Date(Date.now() + 1000).toISOString();

    // 1. Why did event X fail?
    const shown = await sh('events', 'show', failing[0]!);
    expect(shown).toMatch(/status:\s+dead/);
    expect(shown).toMatch(/last error:\s+.*410/);
    expect(shown).toMatch(/partition:\s+capacity_outbox_p\d{4}_\d\d/);

    const before = JSON.parse(await sh('sinks', 'status', '--json')) as { sinks: { sink: string; paused: boolean; recent: { dead: number; last_error: string } }[] };
    expect(before.sinks).toHaveLength(1);
    expect(before.sinks[0]).toMatchObject({ sink: 'webhooks', paused: false, recent: { dead: 4 } });
    expect(before.sinks[0]!.recent.last_error).toContain('410');

    // 2. Pause its sink while the receiver is being fixed; every replica sees it.
    expect(await sh('sinks', 'pause', 'webhooks', '--reason', 'receiver redeploying /hook (INC-7)')).toContain('paused webhooks');
    await waitFor(async () => (await pausedGauge()) === 1, { what: 'the daemon to report the pause' });
    receiver.setResponder(() => ({ status: 200 }));
    const deliveredBefore = receiver.received.length;

    // 3. Dry run: what a replay of T's booking.* in the window would touch. Nothing changes.
    const filter = ['--tenant', T, '--type', 'booking.*', '--since', windowStart, '--until', windowEnd];
    const dry = await sh('events', 'replay', ...filter, '--dry-run');
    expect(dry).toContain('would return 3 dead event(s) to pending');
    expect(await statusOf(failing)).toEqual(['dead', 'dead', 'dead']);

    // 4. Replay: the three go back to pending; the sink is paused, so they are parked, not sent.
    expect(await sh('events', 'replay', ...filter)).toContain('replayed 3 dead event(s) to pending');
    await waitFor(async () => (await db.query('SELECT count(*)::int AS n FROM outbox_dispatcher.sink_parked')).rows[0].n === 3, { what: 'the replayed events to be parked' });
    expect(await sh('events', 'show', failing[1]!)).toMatch(/next attempt:\s+parked: sink webhooks is paused/);
    expect(receiver.received.length).toBe(deliveredBefore);
    const status = await sh('sinks', 'status');
    expect(status).toMatch(/webhooks\s+http\s+PAUSED/);
    expect(status).toContain('receiver redeploying /hook (INC-7)');

    // 5. Resume: the parked events go out at once, with their attempt budget intact.
    expect(await sh('sinks', 'resume', 'webhooks')).toContain('resumed webhooks: 3 parked event(s) are due again');
    await waitFor(async () => (await statusOf(failing)).every((s) => s === 'done'), { what: 'the replayed events to be delivered' });
    expect(receiver.received.slice(deliveredBefore).filter((r) => failing.includes(r.json.id)).map((r) => r.json.attempt)).toEqual([1, 1, 1]);
    expect(await statusOf(otherTenant)).toEqual(['dead']);
    expect((await db.query("SELECT count(*)::int AS n FROM capacity_outbox WHERE status = 'dead' AND restaurant_id = $1", [T])).rows[0].n).toBe(1);
    await waitFor(async () => (await pausedGauge()) === 0, { what: 'the daemon to report the resume' });

    // 6. Each action is in the audit trail, with who, what and how many; the dry run is not.
    const audit = JSON.parse(await sh('audit', '--since', windowStart, '--json')) as {
      entries: { action: string; login_role: string; os_user: string | null; rows: number; filter: Record<string, unknown>; result: string | null }[];
    };
    expect(audit.entries.map((e) => [e.action, e.rows])).toEqual([
      ['sink.resume', 3],
      ['events.replay', 3],
      ['sink.pause', 1],
    ]);
    const login = decodeURIComponent(new URL(db.workerUrl).username);
    for (const e of audit.entries) {
      expect(e.login_role).toBe(login);
      expect(e.os_user).toBeTruthy();
      expect(e.result).not.toBeNull();
    }
    expect(audit.entries[1]!.filter).toMatchObject({ tenant: T, types: ['booking.*'], since: windowStart, until: windowEnd });
    const text = await sh('audit', '--since', windowStart);
    expect(text).toMatch(/sink\.resume/);
    expect(text).toMatch(/events\.replay/);
  }, 300_000);
});
