// 4. Memory: RSS of one worker at steady state (idle) and while a large backlog drains.
import { createBenchDb, round, rssMb, seedPending, startWorker, waitUntilDrained } from '../lib.ts';

export interface MemoryResult {
  backlog: number;
  idleRssMb: number;
  maxRssMb: number;
  /** RSS at each tenth of the drain: flat means the backlog is never loaded into memory. */
  rssByDecileMb: number[];
  eventsPerSec: number;
}

export async function memoryUnderBacklog(rootUrl: string, backlog: number, tuning: Record<string, string>, log: (s: string) => void): Promise<MemoryResult> {
  const db = await createBenchDb(rootUrl, 'memory');
  try {
    const routes = JSON.stringify({ routes: [{ match: '*', sink: { type: 'noop' } }] });
    // Idle first: the steady state with nothing to do.
    const idle = startWorker({ DATABASE_URL: db.workerUrl, OUTBOX_ROUTES: routes, ...tuning });
    await idle.ready;
    await new Promise((r) => setTimeout(r, 2000));
    const idleRssMb = rssMb(idle.child.pid!);
    await idle.stop();

    for (let done = 0; done < backlog; done += 250_000) await seedPending(db.admin, Math.min(250_000, backlog - done));
    log(`  seeded ${backlog.toLocaleString()} events`);
    await db.admin.query('VACUUM ANALYZE capacity_outbox');
    const w = startWorker({ DATABASE_URL: db.workerUrl, OUTBOX_ROUTES: routes, ...tuning });
    const t0 = await w.ready;
    const samples: { at: number; rss: number; left: number }[] = [];
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        const r = await db.admin.query<{ n: string }>(`SELECT count(*) AS n FROM capacity_outbox WHERE status = 'pending'`);
        samples.push({ at: performance.now(), rss: rssMb(w.child.pid!), left: Number(r.rows[0]!.n) });
        await new Promise((res) => setTimeout(res, 500));
      }
    })();
    const t1 = await waitUntilDrained(db.admin, 1_800_000);
    sampling = false;
    await sampler;
    await w.stop();
    const deciles = Array.from({ length: 10 }, (_, d) => {
      const target = backlog * (1 - (d + 1) / 10);
      const s = samples.find((x) => x.left <= target) ?? samples.at(-1)!;
      return round(s.rss);
    });
    return {
      backlog,
      idleRssMb: round(idleRssMb),
      maxRssMb: round(Math.max(...samples.map((s) => s.rss))),
      rssByDecileMb: deciles,
      eventsPerSec: Math.round(backlog / ((t1 - t0) / 1000)),
    };
  } finally {
    await db.drop();
  }
}
