import { afterAll, beforeAll, describe, expect } from 'vitest';
import { produce, statusCounts, tenantId, waitFor } from './support/db.ts';
import { startReceiver } from './support/http-receiver.ts';
import { startWorkerProcess, type WorkerProcess } from './support/cli.ts';
import { freePort } from './support/ports.ts';
import { it } from './support/fixtures.ts';

// The "done when": thousands of events over many tenants with duplicates,
// several worker processes dispatching to an HTTP receiver, one killed mid-run.

let receiver: Awaited<ReturnType<typeof startReceiver>>;
beforeAll(async () => {
  // A realistic receiver: a little latency, an occasional 503.
  receiver = await startReceiver(() => (Math.random() < 0.03 ? { status: 503 } : { status: 200, delayMs: Math.floor(Math.random() * 4) }));
});
afterAll(async () => {
  await receiver.close();
});

describe('black box: many tenants, duplicates, three workers, one SIGKILLed', () => {
  it('delivers every unique event with its tenant, drops duplicates, loses nothing', async ({ fileDb: db }) => {
    const tenants = Array.from({ length: 25 }, tenantId);
    const ports = [await freePort(), await freePort(), await freePort()];
    const env = (id: string, port: number) => ({
      METRICS_PORT: String(port),
      DATABASE_URL: db.workerUrl,
      OUTBOX_ROUTES: JSON.stringify({ routes: [{ match: '*', sink: { type: 'http', url: receiver.url, timeoutMs: 2000 } }] }),
      OUTBOX_WORKER_ID: id,
      OUTBOX_LEASE_MS: '4000',
      OUTBOX_RESCUE_INTERVAL_MS: '500',
      OUTBOX_BACKOFF_BASE_MS: '50',
      OUTBOX_BACKOFF_MAX_MS: '500',
      OUTBOX_BATCH_SIZE: '50',
      OUTBOX_CONCURRENCY: '16',
      LOG_LEVEL: 'warn',
    });
    const workers: WorkerProcess[] = ['w1', 'w2', 'w3'].map((id, i) => startWorkerProcess(env(id, ports[i]!)));
    try {
      await Promise.all(ports.map((p) => waitFor(() => fetch(`http://127.0.0.1:${p}/readyz`).then((r) => r.status === 200), { what: 'worker ready' })));

      // 25 tenants x 6 rounds x 25 events; every 8th event repeats a key of the same round.
      const expected = new Map<string, string>(); // event id -> tenant
      let attempted = 0;
      let killed = false;
      for (let round = 0; round < 6; round++) {
        await Promise.all(
          tenants.map(async (t) => {
            const batch = Array.from({ length: 25 }, (_, i) => {
              const k = i % 8 === 7 ? i - 1 : i;
              return { type: `booking.e${k % 4}`, payload: { round, i }, dedupeKey: `${t}-${round}-${k}` };
            });
            attempted += batch.length;
            const ids = await produce(db.producerUrl, t, batch);
            for (const id of ids) expected.set(id, t);
          }),
        );
        if (round === 2 && !killed) {
          workers[0]!.child.kill('SIGKILL');
          killed = true;
        }
      }
      const duplicatesOffered = attempted - expected.size;
      expect(expected.size).toBe(25 * 6 * 22);
      expect(duplicatesOffered).toBe(25 * 6 * 3);

      await waitFor(async () => (await statusCounts(db)).done === expected.size, { what: 'all events done', timeoutMs: 60_000, intervalMs: 200 });
      expect(await statusCounts(db)).toEqual({ done: expected.size });

      const delivered = new Map<string, number>();
      for (const r of receiver.received) {
        if (!r.json) continue;
        // Every delivery carries the right tenant, in the header and the body.
        const tenant = expected.get(r.json.id);
        expect(tenant, `unexpected event ${r.json.id}`).toBeDefined();
        expect(r.json.restaurantId).toBe(tenant);
        expect(r.headers['x-restaurant-id']).toBe(tenant);
        expect(r.headers['idempotency-key']).toBe(r.json.id);
        delivered.set(r.json.id, (delivered.get(r.json.id) ?? 0) + 1);
      }
      const missing = [...expected.keys()].filter((id) => !delivered.has(id));
      expect(missing).toEqual([]);
      const redelivered = [...delivered.values()].filter((n) => n > 1).length;
      // Redeliveries come from 503 retries and the killed worker; report them, bound them.
      expect(redelivered).toBeLessThan(expected.size * 0.2);
    } finally {
      for (const w of workers) w.child.kill('SIGTERM');
      await Promise.all(workers.map((w) => w.exited));
    }
    const codes = await Promise.all(workers.slice(1).map((w) => w.exited));
    expect(codes).toEqual([{ code: 0, signal: null }, { code: 0, signal: null }]);
  }, 120_000);
});
