import pg from 'pg';
import { afterAll, beforeAll, describe, expect } from 'vitest';
import { startWorkerProcess, type WorkerProcess } from './support/cli.ts';
import { statusCounts, tenantId, waitFor, type TestDatabase } from './support/db.ts';
import { startReceiver } from './support/http-receiver.ts';
import { freePort } from './support/ports.ts';
import { it } from './support/fixtures.ts';

// Per-key order under the conditions of production: four worker processes, a receiver that
// fails 10% of calls, concurrent producers of the same keys, and a worker SIGKILLed while it
// has sends in flight. For every key, the sequence the receiver sees never goes backwards
// (a redelivery of the same event is allowed), and nothing is lost.

let receiver: Awaited<ReturnType<typeof startReceiver>>;
beforeAll(async () => {
  receiver = await startReceiver(() => (Math.random() < 0.1 ? { status: 503 } : { status: 200, delayMs: Math.floor(Math.random() * 15) }));
});
afterAll(async () => {
  await receiver.close();
});

/** One producer transaction: `n` events for each of `keys`, interleaved, in one tenant. */
async function produceKeyed(db: TestDatabase, tenant: string, keys: string[], round: number, n: number): Promise<number> {
  const c = new pg.Client({ connectionString: db.producerUrl });
  await c.connect();
  try {
    await c.query('BEGIN');
    await c.query('SELECT public.set_restaurant_context($1)', [tenant]);
    let inserted = 0;
    for (let i = 0; i < n; i++) {
      for (const key of keys) {
        const r = await c.query(`INSERT INTO capacity_outbox (restaurant_id, event_type, payload, ordering_key) VALUES ($1, 'booking.changed', $2, $3)`, [
          tenant,
          JSON.stringify({ round, i, key }),
          key,
        ]);
        inserted += r.rowCount ?? 0;
      }
    }
    await c.query('COMMIT');
    return inserted;
  } finally {
    await c.end();
  }
}

describe('per-key order: four workers, a flaky sink, a worker SIGKILLed mid-send', () => {
  it('every key’s sequence never goes backwards at the receiver, and every event arrives', async ({ fileDb: db }) => {
    const tenants = [tenantId(), tenantId()];
    const keys = Array.from({ length: 30 }, (_, i) => `booking:${i}`);
    const ports = await Promise.all([1, 2, 3, 4].map(() => freePort()));
    const env = (id: string, port: number) => ({
      METRICS_PORT: String(port),
      DATABASE_URL: db.workerUrl,
      OUTBOX_ROUTES: JSON.stringify({ routes: [{ match: '*', sink: { type: 'http', url: receiver.url, timeoutMs: 1500 } }] }),
      OUTBOX_WORKER_ID: id,
      OUTBOX_LEASE_MS: '3000',
      OUTBOX_RESCUE_INTERVAL_MS: '300',
      OUTBOX_BACKOFF_BASE_MS: '20',
      OUTBOX_BACKOFF_MAX_MS: '200',
      OUTBOX_BATCH_SIZE: '50',
      OUTBOX_CONCURRENCY: '16',
      LOG_LEVEL: 'warn',
    });
    const workers: WorkerProcess[] = ['w1', 'w2', 'w3', 'w4'].map((id, i) => startWorkerProcess(env(id, ports[i]!)));
    let expected = 0;
    try {
      await Promise.all(ports.map((p) => waitFor(() => fetch(`http://127.0.0.1:${p}/readyz`).then((r) => r.status === 200), { what: 'worker ready', timeoutMs: 120_000, intervalMs: 250 })));
      let killed = false;
      for (let round = 0; round < 5; round++) {
        // Producers of the same keys overlap: two transactions per tenant per round, each
        // writing every key (in the same key order: the key locks are held to commit, so
        // opposite orders would deadlock, as with any row locks), committed concurrently.
        const counts = await Promise.all(tenants.flatMap((t) => [produceKeyed(db, t, keys, round, 2), produceKeyed(db, t, keys, round, 1)]));
        expected += counts.reduce((a, b) => a + b, 0);
        if (round === 2 && !killed) {
          // Mid-send: the receiver's delays mean every worker has calls in flight now.
          await waitFor(() => receiver.received.length > 100, { what: 'traffic' });
          workers[0]!.child.kill('SIGKILL');
          killed = true;
        }
      }
      expect(expected).toBe(tenants.length * keys.length * 3 * 5);
      await waitFor(async () => (await statusCounts(db)).done === expected, { what: 'all events done', timeoutMs: 120_000, intervalMs: 250 });
      expect(await statusCounts(db)).toEqual({ done: expected });

      const lastSeq = new Map<string, { seq: bigint; id: string }>();
      const delivered = new Set<string>();
      let backwards = 0;
      let redeliveries = 0;
      for (const r of receiver.received) {
        if (!r.json) continue;
        const body = r.json as typeof r.json & { orderingKey?: string; sequence?: string };
        expect(body.orderingKey).toBeDefined();
        expect(r.headers['x-outbox-sequence']).toBe(body.sequence);
        const k = `${body.restaurantId}/${body.orderingKey}`;
        const seq = BigInt(body.sequence!);
        const prev = lastSeq.get(k);
        if (prev && seq < prev.seq) backwards++;
        if (prev && seq === prev.seq) {
          expect(body.id).toBe(prev.id); // an equal sequence is only ever the same event again
          redeliveries++;
        }
        if (!prev || seq >= prev.seq) lastSeq.set(k, { seq, id: body.id });
        delivered.add(body.id);
      }
      expect(backwards).toBe(0);
      expect(delivered.size).toBe(expected);
      expect(lastSeq.size).toBe(tenants.length * keys.length);
      // The run did exercise retries (10% failures) and redelivery.
      expect(redeliveries).toBeGreaterThan(0);
    } finally {
      for (const w of workers) w.child.kill('SIGTERM');
      await Promise.all(workers.map((w) => w.exited));
    }
  }, 400_000);
});
