// Per-key ordering (ADR 0011): the same number of no-op events drained by one worker with
// the throughput settings, once unkeyed and once with every event keyed over `keys` keys
// (one event per key in flight, the next promoted by the completion). Reported as a ratio.
import pg from 'pg';
import { createBenchDb, round, startWorker, waitUntilDrained } from '../lib.ts';

export interface OrderingDrainResult {
  keys: number;
  events: number;
  unkeyedEventsPerSec: number;
  keyedEventsPerSec: number;
  /** keyed / unkeyed; the target is >= 0.6. */
  ratio: number;
}

const NOOP_ROUTES = JSON.stringify({ routes: [{ match: '*', sink: { type: 'noop' } }] });

/** `events` pending events over 50 tenants; keyed: ordering_key k<g % keys>, through the insert trigger. */
async function seed(admin: pg.Client, events: number, keys: number | null): Promise<void> {
  await admin.query(
    `INSERT INTO capacity_outbox (restaurant_id, event_type, payload, ordering_key)
     SELECT ('00000000-0000-4000-8000-' || lpad((g % 50)::text, 12, '0'))::uuid, 'bench.noop', jsonb_build_object('n', g),
            CASE WHEN $2::int IS NULL THEN NULL ELSE 'k' || (g % $2::int) END
     FROM generate_series(1, $1::int) g`,
    [events, keys],
  );
}

async function drain(rootUrl: string, events: number, keys: number | null, tuning: Record<string, string>): Promise<number> {
  const db = await createBenchDb(rootUrl, keys === null ? 'unkeyed' : 'keyed');
  try {
    await seed(db.admin, events, keys);
    await db.admin.query('VACUUM ANALYZE capacity_outbox');
    const proc = startWorker({ DATABASE_URL: db.workerUrl, OUTBOX_ROUTES: NOOP_ROUTES, OUTBOX_WORKER_ID: 'bench-ordering', ...tuning });
    const t0 = await proc.ready;
    const t1 = await waitUntilDrained(db.admin, 900_000);
    await proc.stop();
    return Math.round(events / ((t1 - t0) / 1000));
  } finally {
    await db.drop();
  }
}

export async function orderingDrain(rootUrl: string, events: number, keys: number, tuning: Record<string, string>): Promise<OrderingDrainResult> {
  const unkeyed = await drain(rootUrl, events, null, tuning);
  const keyed = await drain(rootUrl, events, keys, tuning);
  return { keys, events, unkeyedEventsPerSec: unkeyed, keyedEventsPerSec: keyed, ratio: round(keyed / unkeyed, 2) };
}
