// Per-key ordering (ADR 0011): the same number of no-op events drained by one worker with the
// settings bench/run.ts passes (its defaults), once unkeyed and once with every event keyed over `keys` keys
// (one event per key in flight, the next promoted by the completion). Reported as a ratio.
//
// Rounds (BENCH_ORDERING_ROUNDS, default 5 in bench/run.ts) alternate the two drains, the order flipped every round;
// the ratio reported is the median of the rounds' own ratios (a keyed drain of 100,000 events
// takes about 7 s, and single runs on this machine varied by a fifth).
import pg from 'pg';
import { cpuSeconds, createBenchDb, median, postgresCpuSeconds, round, startWorker, waitUntilDrained } from '../lib.ts';

export interface OrderingRun {
  eventsPerSec: number;
  nodeCpuPerEventUs: number;
  postgresCpuPerEventUs: number;
}

export interface OrderingRound {
  unkeyed: OrderingRun;
  keyed: OrderingRun;
  ratio: number;
}

export interface OrderingDrainResult {
  keys: number;
  events: number;
  rounds: OrderingRound[];
  /** Medians over the rounds. */
  unkeyedEventsPerSec: number;
  keyedEventsPerSec: number;
  /** keyed / unkeyed, the median of the rounds' ratios; the target is >= 0.6. */
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

async function drain(rootUrl: string, events: number, keys: number | null, tuning: Record<string, string>): Promise<OrderingRun> {
  const db = await createBenchDb(rootUrl, keys === null ? 'unkeyed' : 'keyed');
  try {
    await seed(db.admin, events, keys);
    await db.admin.query('VACUUM ANALYZE capacity_outbox');
    const proc = startWorker({ DATABASE_URL: db.workerUrl, OUTBOX_ROUTES: NOOP_ROUTES, OUTBOX_WORKER_ID: 'bench-ordering', ...tuning });
    const t0 = await proc.ready;
    const nodeCpu0 = cpuSeconds(proc.child.pid!);
    const pgCpu0 = postgresCpuSeconds();
    const t1 = await waitUntilDrained(db.admin, 900_000);
    const nodeCpu = cpuSeconds(proc.child.pid!) - nodeCpu0;
    const pgCpu = postgresCpuSeconds() - pgCpu0;
    await proc.stop();
    return {
      eventsPerSec: Math.round(events / ((t1 - t0) / 1000)),
      nodeCpuPerEventUs: round((nodeCpu * 1e6) / events, 1),
      postgresCpuPerEventUs: round((pgCpu * 1e6) / events, 1),
    };
  } finally {
    await db.drop();
  }
}

export async function orderingDrain(rootUrl: string, events: number, keys: number, tuning: Record<string, string>, rounds = 1): Promise<OrderingDrainResult> {
  const done: OrderingRound[] = [];
  for (let r = 0; r < rounds; r++) {
    // Flipped every round: whatever the machine does over a run hits both alike.
    const first = r % 2 === 0 ? null : keys;
    const a = await drain(rootUrl, events, first, tuning);
    const b = await drain(rootUrl, events, first === null ? keys : null, tuning);
    const [unkeyed, keyed] = first === null ? [a, b] : [b, a];
    done.push({ unkeyed, keyed, ratio: round(keyed.eventsPerSec / unkeyed.eventsPerSec, 2) });
  }
  return {
    keys,
    events,
    rounds: done,
    unkeyedEventsPerSec: median(done.map((d) => d.unkeyed.eventsPerSec)),
    keyedEventsPerSec: median(done.map((d) => d.keyed.eventsPerSec)),
    ratio: round(median(done.map((d) => d.ratio)), 2),
  };
}
