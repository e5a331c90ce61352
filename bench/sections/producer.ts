// Producer insert throughput with dedupe active: the producer contract, as app_producer with
// the tenant context set, 100 events per transaction, `conns` producers in parallel.
import pg from 'pg';
import { createBenchDb, round } from '../lib.ts';

export interface ProducerResult {
  name: string;
  events: number;
  seconds: number;
  eventsPerSec: number;
  duplicatesDropped: number;
}

export async function producerThroughput(rootUrl: string, events: number, conns: number, keyed: boolean): Promise<ProducerResult> {
  const db = await createBenchDb(rootUrl, keyed ? 'prodkeyed' : 'prodplain');
  try {
    const perConn = Math.floor(events / conns);
    const clients = await Promise.all(
      Array.from({ length: conns }, async () => {
        const c = new pg.Client(db.producerUrl);
        await c.connect();
        return c;
      }),
    );
    let inserted = 0;
    const t0 = performance.now();
    await Promise.all(
      clients.map(async (c, w) => {
        const tenant = `00000000-0000-4000-8000-${String(w).padStart(12, '0')}`;
        for (let i = 0; i < perConn; i += 100) {
          const n = Math.min(100, perConn - i);
          await c.query('BEGIN');
          await c.query('SELECT public.set_restaurant_context($1)', [tenant]);
          // Every 20th event repeats the previous key: a duplicate the trigger drops.
          const r = await c.query(
            `INSERT INTO capacity_outbox (restaurant_id, event_type, payload, dedupe_key)
             SELECT $1::uuid, 'bench.produced', jsonb_build_object('i', g),
                    CASE WHEN $4 THEN 'k-' || $2 || '-' || (CASE WHEN g % 20 = 19 THEN g - 1 ELSE g END) END
             FROM generate_series($3::int, $3::int + $5::int - 1) g`,
            [tenant, w, i, keyed, n],
          );
          inserted += r.rowCount ?? 0;
          await c.query('COMMIT');
        }
      }),
    );
    const seconds = (performance.now() - t0) / 1000;
    await Promise.all(clients.map((c) => c.end()));
    const offered = perConn * conns;
    return {
      name: `producer, ${conns} connections, 100/tx, ${keyed ? 'every event keyed (dedupe active)' : 'no keys'}`,
      events: offered,
      seconds: round(seconds, 2),
      eventsPerSec: Math.round(offered / seconds),
      duplicatesDropped: offered - inserted,
    };
  } finally {
    await db.drop();
  }
}
