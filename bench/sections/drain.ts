// 2-3, 5. Drain throughput: the bare SQL loop (the practical limit), the dispatcher
// (1 and 2 worker processes; noop and HTTP sinks), graphile-worker and pg-boss at their best
// settings, all draining the same number of no-op jobs; CPU split, WAL and commits per event.
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import pg from 'pg';
import {
  type BenchDb,
  cpuSeconds,
  createBenchDb,
  postgresCpuSeconds,
  round,
  rssMb,
  seedColdBurst,
  seedPending,
  startWorker,
  waitUntilDrained,
  walAndCommits,
  walBytesBetween,
} from '../lib.ts';

export interface DrainResult {
  name: string;
  events: number;
  seconds: number;
  eventsPerSec: number;
  nodeCpuPerEventUs?: number;
  postgresCpuPerEventUs?: number;
  walBytesPerEvent?: number;
  commitsPerEvent?: number;
  maxRssMb?: number;
}

const NOOP_ROUTES = JSON.stringify({ routes: [{ match: '*', sink: { type: 'noop' } }] });

/**
 * Runs `conns` loops of `step` on `db` as the worker login until each returns false and
 * measures them: time, PostgreSQL CPU, WAL and commits per event. `setup` runs on each
 * connection first.
 */
export async function measureLoops(
  db: BenchDb,
  events: number,
  conns: number,
  step: (c: pg.Client, i: number) => Promise<boolean>,
  setup?: (c: pg.Client) => Promise<unknown>,
): Promise<Omit<DrainResult, 'name'>> {
  const clients = await workerClients(db.workerUrl, conns);
  if (setup) for (const c of clients) await setup(c);
  const before = await walAndCommits(db.admin);
  const pgCpu0 = postgresCpuSeconds();
  const t0 = performance.now();
  await Promise.all(clients.map(async (c, i) => {
    while (await step(c, i));
  }));
  const seconds = (performance.now() - t0) / 1000;
  const pgCpu = postgresCpuSeconds() - pgCpu0;
  await Promise.all(clients.map((c) => c.end()));
  await new Promise((r) => setTimeout(r, 1100)); // let statistics flush
  const after = await walAndCommits(db.admin);
  return {
    events,
    seconds: round(seconds, 2),
    eventsPerSec: Math.round(events / seconds),
    postgresCpuPerEventUs: round((pgCpu / events) * 1e6),
    walBytesPerEvent: Math.round((await walBytesBetween(db.admin, before.lsn, after.lsn)) / events),
    commitsPerEvent: round((after.commits - before.commits) / events, 3),
  };
}

/** The limit: claim a batch with SKIP LOCKED and mark it done, one statement, `conns` loops. */
export async function bareLoop(rootUrl: string, events: number, conns: number, batch: number): Promise<DrainResult> {
  const db = await createBenchDb(rootUrl, 'bare');
  try {
    await seedPending(db.admin, events);
    await db.admin.query('VACUUM ANALYZE capacity_outbox');
    const sql = `WITH c AS (SELECT id, created_at FROM capacity_outbox WHERE status = 'pending' AND next_attempt_at <= now()
                            ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED)
                 UPDATE capacity_outbox o SET status = 'done', dispatched_at = now() FROM c
                 WHERE o.id = c.id AND o.created_at = c.created_at`;
    const m = await measureLoops(db, events, conns, async (c) => (await c.query(sql, [batch])).rowCount !== 0);
    return { name: `bare SQL loop (${conns} conns, batch ${batch})`, ...m };
  } finally {
    await db.drop();
  }
}

const DUE_HEAD = `SELECT id, created_at FROM capacity_outbox WHERE status = 'pending' AND next_attempt_at <= now()
                  ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED`;
/** The claim of the two-statement loop: the row moves to `processing`. */
export const BARE_CLAIM_TO_PROCESSING = `WITH c AS (${DUE_HEAD})
  UPDATE capacity_outbox o SET status = 'processing', attempts = o.attempts + 1, locked_by = $2,
         locked_until = now() + interval '30 s', next_attempt_at = now() + interval '30 s'
  FROM c WHERE o.id = c.id AND o.created_at = c.created_at RETURNING o.id, o.created_at::text AS k`;
// The same claim freeing its batch's dedupe keys in one call, as the daemon's claim does (the
// session's claim_frees_keys flag makes the row trigger stand aside; the function, VOLATILE,
// sees the UPDATE).
const BARE_CLAIM_FREEING_KEYS = `WITH claimed AS (${BARE_CLAIM_TO_PROCESSING}),
  freed AS (SELECT outbox_dispatcher.capacity_outbox_release_claimed_keys(array_agg(claimed.id)) AS n FROM claimed)
  SELECT claimed.id, claimed.k FROM freed CROSS JOIN claimed`;
/** The second statement of the two-statement loop: the batch is `done`. */
export const BARE_DONE = `UPDATE capacity_outbox o SET status = 'done', dispatched_at = now(), locked_by = NULL, locked_until = NULL
  FROM unnest($1::uuid[], $2::timestamptz[]) AS v(id, k) WHERE o.id = v.id AND o.created_at = v.k AND o.locked_by = $3`;

/** One claim and its completion; false when nothing was claimed. */
export async function claimThenDone(c: pg.Client, claim: string, batch: number, worker: string): Promise<boolean> {
  const r = await c.query<{ id: string; k: string }>(claim, [batch, worker]);
  if (r.rowCount === 0) return false;
  await c.query(BARE_DONE, [r.rows.map((x) => x.id), r.rows.map((x) => x.k), worker]);
  return true;
}

/**
 * The issue-9 reference loop: claim a batch to `processing` (SKIP LOCKED), then mark it
 * `done`: the two writes per event any at-least-once relay needs, with nothing in between.
 * The seed is the cold burst, analyzed first so the loop gets its best plan. Every event of
 * the burst has a dedupe key: with `keys: 'per row'` (the issue's plain loop) the schema's row
 * trigger frees each claimed event's key; with `keys: 'per claim'` one call frees the batch's,
 * as the daemon does, which makes this loop the floor of a relay that keeps the dedupe rule.
 */
export async function bareTwoStatementLoop(rootUrl: string, events: number, conns: number, batch: number, keys: 'per row' | 'per claim' = 'per row'): Promise<DrainResult> {
  const db = await createBenchDb(rootUrl, 'bare2');
  try {
    await seedColdBurst(db.admin, events);
    await db.admin.query('VACUUM ANALYZE capacity_outbox');
    const perClaim = keys === 'per claim';
    const claim = perClaim ? BARE_CLAIM_FREEING_KEYS : BARE_CLAIM_TO_PROCESSING;
    const m = await measureLoops(db, events, conns, (c, i) => claimThenDone(c, claim, batch, `bare-${i}`),
      perClaim ? (c) => c.query('SET outbox_dispatcher.claim_frees_keys = on') : undefined);
    const name = `bare two-statement loop${perClaim ? ', keys freed per claim' : ''} (${conns} conns, batch ${batch}; cold burst, analyzed)`;
    return { name, ...m };
  } finally {
    await db.drop();
  }
}

async function startReceiver(): Promise<{ url: string; close: () => Promise<void> }> {
  const server = http.createServer((req, res) => {
    req.resume();
    req.on('end', () => res.writeHead(204).end());
  });
  server.keepAliveTimeout = 60_000;
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`,
    close: () => new Promise<void>((r) => { server.closeAllConnections(); server.close(() => r()); }),
  };
}

/** The dispatcher: `workers` processes draining `events` pre-seeded events. */
export async function dispatcherDrain(
  rootUrl: string,
  events: number,
  workers: number,
  sink: 'noop' | 'http',
  tuning: Record<string, string>,
  opts: { cold?: boolean; label?: string; main?: string } = {},
): Promise<DrainResult> {
  const db = await createBenchDb(rootUrl, `drain${workers}${sink}`, { migrateWith: opts.main });
  const receiver = sink === 'http' ? await startReceiver() : undefined;
  try {
    if (opts.cold) {
      await seedColdBurst(db.admin, events);
    } else {
      await seedPending(db.admin, events);
      await db.admin.query('VACUUM ANALYZE capacity_outbox');
    }
    const routes = receiver ? JSON.stringify({ routes: [{ match: '*', sink: { type: 'http', url: receiver.url, timeoutMs: 5000 } }] }) : NOOP_ROUTES;
    const before = await walAndCommits(db.admin);
    const pgCpu0 = postgresCpuSeconds();
    const procs = Array.from({ length: workers }, (_, i) => startWorker({ DATABASE_URL: db.workerUrl, OUTBOX_ROUTES: routes, OUTBOX_WORKER_ID: `bench-${i}`, ...tuning }, opts.main));
    const readyAt = await Promise.all(procs.map((p) => p.ready));
    const t0 = Math.min(...readyAt);
    const cpu0 = procs.map((p) => cpuSeconds(p.child.pid!));
    let maxRss = 0;
    const sampler = setInterval(() => {
      for (const p of procs) maxRss = Math.max(maxRss, rssMb(p.child.pid!));
    }, 100);
    const t1 = await waitUntilDrained(db.admin, 600_000);
    clearInterval(sampler);
    const nodeCpu = procs.reduce((s, p, i) => s + cpuSeconds(p.child.pid!) - cpu0[i]!, 0);
    const pgCpu = postgresCpuSeconds() - pgCpu0;
    await Promise.all(procs.map((p) => p.stop()));
    await new Promise((r) => setTimeout(r, 1100));
    const after = await walAndCommits(db.admin);
    const seconds = (t1 - t0) / 1000;
    return {
      name: `outbox-dispatcher (${workers} worker${workers > 1 ? 's' : ''}, ${sink} sink${opts.label ? `, ${opts.label}` : ''})`,
      events,
      seconds: round(seconds, 2),
      eventsPerSec: Math.round(events / seconds),
      nodeCpuPerEventUs: round((nodeCpu / events) * 1e6),
      postgresCpuPerEventUs: round((pgCpu / events) * 1e6),
      walBytesPerEvent: Math.round((await walBytesBetween(db.admin, before.lsn, after.lsn)) / events),
      commitsPerEvent: round((after.commits - before.commits) / events, 3),
      maxRssMb: round(maxRss),
    };
  } finally {
    await receiver?.close();
    await db.drop();
  }
}

/** graphile-worker at its best measured settings (local queue 500, concurrency 50, batched completions). */
export async function graphileDrain(rootUrl: string, events: number): Promise<DrainResult> {
  const { run, makeWorkerUtils, Logger } = await import('graphile-worker');
  const logger = new Logger(() => () => {});
  const db = await createBenchDb(rootUrl, 'graphile');
  try {
    const utils = await makeWorkerUtils({ connectionString: db.adminUrl, logger });
    await utils.migrate();
    for (let i = 0; i < events; i += 5000) {
      await utils.addJobs(Array.from({ length: Math.min(5000, events - i) }, (_, k) => ({ identifier: 'noop', payload: { n: i + k } })));
    }
    await utils.release();
    await db.admin.query('VACUUM ANALYZE graphile_worker._private_jobs');
    const t0 = performance.now();
    const runner = await run({
      connectionString: db.adminUrl,
      concurrency: 50,
      maxPoolSize: 50,
      noHandleSignals: true,
      pollInterval: 1000,
      taskList: { noop: async () => {} },
      logger,
      preset: { worker: { localQueue: { size: 500 }, completeJobBatchDelay: 0, failJobBatchDelay: 0 } } as never,
    });
    for (;;) {
      const r = await db.admin.query('SELECT count(*)::int AS n FROM graphile_worker._private_jobs');
      if (r.rows[0].n === 0) break;
      await new Promise((res) => setTimeout(res, 20));
    }
    const seconds = (performance.now() - t0) / 1000;
    await runner.stop();
    return { name: 'graphile-worker 0.18 (local queue 500, concurrency 50)', events, seconds: round(seconds, 2), eventsPerSec: Math.round(events / seconds) };
  } finally {
    await db.drop();
  }
}

/** pg-boss at its best measured settings here (batch 1000, 2 local workers, burst on full batches). */
export async function pgBossDrain(rootUrl: string, events: number): Promise<DrainResult> {
  const { PgBoss } = (await import('pg-boss')) as unknown as { PgBoss: new (o: object) => PgBossLike };
  const db = await createBenchDb(rootUrl, 'pgboss');
  try {
    const boss = new PgBoss({ connectionString: db.adminUrl, max: 8 });
    boss.on('error', () => undefined);
    await boss.start();
    await boss.createQueue('noop');
    for (let i = 0; i < events; i += 5000) {
      await boss.insert('noop', Array.from({ length: Math.min(5000, events - i) }, (_, k) => ({ data: { n: i + k } })));
    }
    const t0 = performance.now();
    await boss.work('noop', { batchSize: 1000, localConcurrency: 2, pollingIntervalSeconds: 0.5, burstWhenBatchFull: true }, async () => {});
    for (;;) {
      const r = await db.admin.query(`SELECT count(*)::int AS n FROM pgboss.job WHERE name = 'noop' AND state <> 'completed'`);
      if (r.rows[0].n === 0) break;
      await new Promise((res) => setTimeout(res, 20));
    }
    const seconds = (performance.now() - t0) / 1000;
    await boss.stop({ graceful: false, wait: true });
    return { name: 'pg-boss 12 (batch 1000, 2 local workers, burst)', events, seconds: round(seconds, 2), eventsPerSec: Math.round(events / seconds) };
  } finally {
    await db.drop();
  }
}

interface PgBossLike {
  on(event: 'error', fn: (e: unknown) => void): void;
  start(): Promise<unknown>;
  stop(o: object): Promise<void>;
  createQueue(name: string): Promise<void>;
  insert(name: string, jobs: object[]): Promise<unknown>;
  work(name: string, opts: object, fn: (jobs: unknown[]) => Promise<void>): Promise<string>;
}

/** `n` connections as the daemon's login (it inherits app_background: no role switch). */
async function workerClients(url: string, n: number): Promise<pg.Client[]> {
  return Promise.all(
    Array.from({ length: n }, async () => {
      const c = new pg.Client({ connectionString: url });
      await c.connect();
      return c;
    }),
  );
}
