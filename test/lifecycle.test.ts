import { afterAll, beforeAll, beforeEach, describe, expect } from 'vitest';
import { produce, statusCounts, tenantId, waitFor, type TestDatabase } from './support/db.ts';
import { startDaemon } from './support/daemon.ts';
import { startReceiver } from './support/http-receiver.ts';
import { startWorkerProcess } from './support/cli.ts';
import { metricTotal } from './support/metrics.ts';
import { it } from './support/fixtures.ts';

// Each test gets its own database (the db fixture); the receiver is shared and emptied.
let receiver: Awaited<ReturnType<typeof startReceiver>>;
beforeAll(async () => {
  receiver = await startReceiver();
});
afterAll(async () => {
  await receiver.close();
});

const routesTo = (url: string, timeoutMs = 5000) => ({ routes: [{ match: '*', sink: { type: 'http' as const, url, timeoutMs } }] });

beforeEach(() => {
  receiver.received.length = 0;
});

describe('graceful shutdown', () => {
  it('finishes in-flight work within the grace period', async ({ db }) => {
    receiver.setResponder(() => ({ status: 200, delayMs: 300 }));
    await produce(db.producerUrl, tenantId(), Array.from({ length: 5 }, () => ({ type: 'x' })));
    const daemon = await startDaemon(db, { routes: routesTo(receiver.url), env: { OUTBOX_SHUTDOWN_GRACE_MS: '5000' } });
    await waitFor(() => receiver.received.length === 5);
    await daemon.stop();
    expect(await statusCounts(db)).toEqual({ done: 5 });
  });

  it('releases claims that did not finish back to pending, unattempted', async ({ db }) => {
    receiver.setResponder(() => ({ status: 200, delayMs: 4000 }));
    await produce(db.producerUrl, tenantId(), Array.from({ length: 30 }, () => ({ type: 'x' })));
    const daemon = await startDaemon(db, {
      routes: routesTo(receiver.url),
      env: { OUTBOX_SHUTDOWN_GRACE_MS: '300', OUTBOX_CONCURRENCY: '4', OUTBOX_BATCH_SIZE: '10' },
    });
    await waitFor(() => receiver.received.length === 4);
    const t0 = Date.now();
    await daemon.stop();
    expect(Date.now() - t0).toBeLessThan(3000);
    expect(await statusCounts(db)).toEqual({ pending: 30 });
    const { rows } = await db.query('SELECT count(*)::int AS n FROM capacity_outbox WHERE attempts <> 0 OR locked_by IS NOT NULL OR locked_until IS NOT NULL OR next_attempt_at > now()');
    expect(rows[0].n).toBe(0);
    // It held two full batches (its window is concurrency + 2 x batch = 24, and it claims only
    // whole batches): 4 in flight (aborted), 16 queued.
    expect(await metricTotal(daemon.metrics.eventsReleased, { reason: 'shutdown' })).toBe(20);
  });

  it('on SIGTERM drains and exits 0; a second signal exits at once with 130', async ({ db }) => {
    receiver.setResponder(() => ({ status: 200 }));
    const env = { DATABASE_URL: db.workerUrl, OUTBOX_ROUTES: JSON.stringify(routesTo(receiver.url)), OUTBOX_POLL_INTERVAL_MS: '100' };
    const p1 = startWorkerProcess(env);
    await p1.waitForLog((l) => l.msg === 'outbox dispatcher running');
    await produce(db.producerUrl, tenantId(), [{ type: 'x' }]);
    await waitFor(async () => (await statusCounts(db)).done === 1);
    p1.child.kill('SIGTERM');
    expect(await p1.exited).toEqual({ code: 0, signal: null });
    expect(p1.logs.some((l) => l.msg === 'shutdown complete')).toBe(true);

    receiver.setResponder(() => ({ status: 200, delayMs: 20_000 }));
    const p2 = startWorkerProcess({ ...env, OUTBOX_SHUTDOWN_GRACE_MS: '30000' });
    await p2.waitForLog((l) => l.msg === 'outbox dispatcher running');
    await produce(db.producerUrl, tenantId(), [{ type: 'x' }]);
    await waitFor(() => receiver.received.length === 2);
    p2.child.kill('SIGTERM');
    await p2.waitForLog((l) => l.msg === 'draining in-flight events');
    p2.child.kill('SIGTERM');
    expect(await p2.exited).toEqual({ code: 130, signal: null });
  });
});

describe('crash recovery', () => {
  it('loses nothing when a worker is SIGKILLed mid-batch: leases expire and another worker delivers', async ({ db }) => {
    receiver.setResponder(() => ({ status: 200, delayMs: 1500 }));
    const ids = await produce(db.producerUrl, tenantId(), Array.from({ length: 40 }, (_, i) => ({ type: 'booking.created', payload: { i } })));
    const victim = startWorkerProcess({
      DATABASE_URL: db.workerUrl,
      OUTBOX_ROUTES: JSON.stringify(routesTo(receiver.url, 2000)),
      OUTBOX_LEASE_MS: '3000',
      OUTBOX_WORKER_ID: 'victim',
      OUTBOX_CONCURRENCY: '10',
      OUTBOX_BATCH_SIZE: '20',
    });
    await waitFor(() => receiver.received.length >= 5, { what: 'victim mid-batch' });
    victim.child.kill('SIGKILL');
    await victim.exited;
    const held = await db.query("SELECT count(*)::int AS n FROM capacity_outbox WHERE status = 'processing' AND locked_by = 'victim'");
    expect(held.rows[0].n).toBeGreaterThan(0);
    const sentByVictim = new Set(receiver.received.map((r) => r.json.id));

    receiver.setResponder(() => ({ status: 200 }));
    const rescuer = await startDaemon(db, { routes: routesTo(receiver.url, 2000), env: { OUTBOX_WORKER_ID: 'survivor', OUTBOX_LEASE_MS: '3000' } });
    try {
      await waitFor(async () => (await statusCounts(db)).done === 40, { what: 'all 40 done', timeoutMs: 20_000 });
    } finally {
      await rescuer.stop();
    }
    const delivered = new Set(receiver.received.map((r) => r.json.id));
    expect([...delivered].sort()).toEqual([...ids].sort());
    // Only events the victim had already sent can arrive twice.
    const counts = new Map<string, number>();
    for (const r of receiver.received) counts.set(r.json.id, (counts.get(r.json.id) ?? 0) + 1);
    for (const [id, n] of counts) if (n > 1) expect(sentByVictim.has(id)).toBe(true);
    expect(await metricTotal(rescuer.metrics.leaseRescued, { result: 'requeued' })).toBeGreaterThan(0);
  });
});
