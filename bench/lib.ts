// Shared plumbing for `npm run bench`: databases, seeding, process accounting.
import { execFile, spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { asProducer, insertEvents } from '../src/db/queries/producer.ts';
import { migrate } from '../src/db/migrator.ts';

/** The built daemon (what the image runs; `npm run bench` builds it first). */
/** BENCH_MAIN runs another build (e.g. the previous commit's, to compare before/after), migrated by itself (createBenchDb). */
export const MAIN = process.env.BENCH_MAIN ?? fileURLToPath(new URL('../dist/main.js', import.meta.url));
/** V8 flags of the image (Dockerfile NODE_OPTIONS): the defaults people run. BENCH_NODE_FLAGS adds a heap cap. */
export const NODE_FLAGS = (process.env.BENCH_NODE_FLAGS ?? '--max-semi-space-size=8').split(' ').filter(Boolean);
export const WORKER_ROLE = 'outbox_bench_worker';
export const PRODUCER_ROLE = 'outbox_bench_producer';
const PASSWORD = 'outbox-bench';

export interface BenchDb {
  name: string;
  adminUrl: string;
  workerUrl: string;
  producerUrl: string;
  admin: pg.Client;
  drop(): Promise<void>;
}

function urlFor(base: string, database: string, user?: string): string {
  const u = new URL(base);
  u.pathname = `/${database}`;
  if (user) {
    u.username = user;
    u.password = PASSWORD;
  }
  return u.toString();
}

/**
 * A fresh, migrated database with least-privilege login roles for worker and producer.
 * `migrateWith` (default BENCH_MAIN) is the dist/main.js of the build under test: its own
 * `migrate` command, as the superuser, creates the schema, so an older build runs against the
 * schema it shipped with (not this checkout's migrations). Without it: this checkout's migrations.
 * The roles app_background and app_producer exist in every build since migration 0001.
 */
export async function createBenchDb(rootUrl: string, label: string, opts: { migrateWith?: string } = {}): Promise<BenchDb> {
  const migrateWith = opts.migrateWith ?? process.env.BENCH_MAIN;
  const name = `outbox_bench_${label}_${Date.now().toString(36)}`;
  const root = new pg.Client(rootUrl);
  await root.connect();
  await root.query(`CREATE DATABASE ${name}`);
  await root.end();
  const adminUrl = urlFor(rootUrl, name);
  const admin = new pg.Client(adminUrl);
  await admin.connect();
  if (migrateWith) await migrateWithBuild(migrateWith, adminUrl);
  else await migrate(admin);
  for (const [role, group] of [[WORKER_ROLE, 'app_background'], [PRODUCER_ROLE, 'app_producer']] as const) {
    await admin.query(`DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '${role}') THEN CREATE ROLE ${role} LOGIN; END IF; END $$`);
    await admin.query(`ALTER ROLE ${role} LOGIN NOSUPERUSER NOBYPASSRLS PASSWORD '${PASSWORD}'`);
    await admin.query(`GRANT ${group} TO ${role}`);
  }
  return {
    name,
    adminUrl,
    workerUrl: urlFor(rootUrl, name, WORKER_ROLE),
    producerUrl: urlFor(rootUrl, name, PRODUCER_ROLE),
    admin,
    async drop() {
      await admin.end().catch(() => undefined);
      const r = new pg.Client(rootUrl);
      await r.connect();
      await r.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      await r.end();
    },
  };
}

/** Runs `main migrate` (the build's own CLI and migrations) against `adminUrl`. */
function migrateWithBuild(main: string, adminUrl: string): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile(process.execPath, [main, 'migrate'], { env: { PATH: process.env.PATH, HOME: process.env.HOME, DATABASE_URL: adminUrl, LOG_LEVEL: 'warn' } }, (err, _out, stderr) =>
      err ? reject(new Error(`${main} migrate failed: ${err.message} ${stderr}`)) : resolve(),
    );
  });
}

/** The partitions of capacity_outbox, as names ready for SQL (regclass text). */
export async function partitionsOf(admin: pg.Client): Promise<string[]> {
  const { rows } = await admin.query<{ part: string }>(
    "SELECT inhrelid::regclass::text AS part FROM pg_inherits WHERE inhparent = 'public.capacity_outbox'::regclass",
  );
  return rows.map((r) => r.part);
}

/** Monthly partitions for the last `months` months (the table's history). */
export async function ensureHistory(admin: pg.Client, months: number): Promise<void> {
  await admin.query(
    `SELECT outbox_dispatcher.ensure_monthly_partition('public.capacity_outbox', (date_trunc('month', now()) - make_interval(months => m))::date)
     FROM generate_series(1, $1::int) m`,
    [months],
  );
}

/** `n` due, keyless pending events for the noop route (one statement, as the owner). */
export async function seedPending(admin: pg.Client, n: number, type = 'bench.noop'): Promise<number> {
  const t0 = performance.now();
  await admin.query(
    `INSERT INTO capacity_outbox (restaurant_id, event_type, payload)
     SELECT ('00000000-0000-4000-8000-' || lpad((g % 50)::text, 12, '0'))::uuid, $2, jsonb_build_object('n', g)
     FROM generate_series(1, $1::int) g`,
    [n, type],
  );
  return performance.now() - t0;
}

/**
 * The issue-9 cold burst: `n` pending events with ~200-byte payloads, every one with a dedupe
 * key, 20 tenants, committed in one statement (the dedupe triggers run) and never analyzed:
 * autovacuum is switched off on the partitions so no ANALYZE can run before or during the drain.
 */
export async function seedColdBurst(admin: pg.Client, n: number, type = 'bench.noop'): Promise<number> {
  for (const p of await partitionsOf(admin)) await admin.query(`ALTER TABLE ${p} SET (autovacuum_enabled = off)`);
  const t0 = performance.now();
  await admin.query(
    `INSERT INTO capacity_outbox (restaurant_id, event_type, payload, dedupe_key)
     SELECT ('00000000-0000-4000-8000-' || lpad((g % 20)::text, 12, '0'))::uuid, $2,
            jsonb_build_object('n', g, 'booking', md5(g::text), 'note', repeat('x', 120)), 'booking-' || g
     FROM generate_series(1, $1::int) g`,
    [n, type],
  );
  return performance.now() - t0;
}

export async function remaining(admin: pg.Client): Promise<number> {
  const r = await admin.query<{ n: string }>(`SELECT count(*) AS n FROM capacity_outbox WHERE status IN ('pending', 'processing')`);
  return Number(r.rows[0]!.n);
}

export async function waitUntilDrained(admin: pg.Client, timeoutMs: number): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const r = await admin.query(`SELECT 1 FROM capacity_outbox WHERE status IN ('pending', 'processing') LIMIT 1`);
    if (r.rowCount === 0) return performance.now();
    if (Date.now() > deadline) throw new Error(`not drained after ${timeoutMs} ms (${await remaining(admin)} left)`);
    await new Promise((res) => setTimeout(res, 20));
  }
}

export interface WorkerProc {
  child: ChildProcessWithoutNullStreams;
  ready: Promise<number>;
  stop(): Promise<void>;
}

/** A dispatcher process (of build `main`); `ready` resolves (performance.now()) when it logs that it runs. */
export function startWorker(env: Record<string, string>, main = MAIN): WorkerProc {
  const child = spawn(process.execPath, [...NODE_FLAGS, main, 'run'], {
    env: { PATH: process.env.PATH, HOME: process.env.HOME, METRICS_PORT: '0', LOG_LEVEL: 'info', PARTITION_ROTATION: 'false', OUTBOX_BACKLOG_SAMPLE_MS: '0', ...env },
  });
  let out = '';
  const ready = new Promise<number>((resolve, reject) => {
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('"outbox dispatcher running"')) resolve(performance.now());
    });
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    child.on('exit', (code) => reject(new Error(`worker exited ${code}: ${out.slice(-1500)}`)));
  });
  ready.catch(() => undefined);
  return {
    child,
    ready,
    stop: () =>
      new Promise<void>((resolve) => {
        if (child.exitCode !== null) return resolve();
        child.once('exit', () => resolve());
        child.kill('SIGTERM');
      }),
  };
}

/** CPU seconds (user + system) of a process, from /proc. */
export function cpuSeconds(pid: number): number {
  try {
    const f = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const rest = f.slice(f.lastIndexOf(')') + 2).split(' ');
    return (Number(rest[11]) + Number(rest[12])) / 100;
  } catch {
    return 0;
  }
}

/** CPU seconds of every PostgreSQL server process on this machine. */
export function postgresCpuSeconds(): number {
  let total = 0;
  for (const pid of fs.readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    try {
      const comm = fs.readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
      if (comm === 'postgres' || comm === 'postmaster') total += cpuSeconds(Number(pid));
    } catch {
      /* gone */
    }
  }
  return total;
}

export function rssMb(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) / 1024 : 0;
  } catch {
    return 0;
  }
}

export async function walAndCommits(admin: pg.Client): Promise<{ lsn: string; commits: number }> {
  const r = await admin.query<{ lsn: string; commits: string }>(
    `SELECT pg_current_wal_lsn()::text AS lsn, (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()) AS commits`,
  );
  return { lsn: r.rows[0]!.lsn, commits: Number(r.rows[0]!.commits) };
}

export async function walBytesBetween(admin: pg.Client, from: string, to: string): Promise<number> {
  const r = await admin.query<{ b: string }>('SELECT pg_wal_lsn_diff($2::pg_lsn, $1::pg_lsn) AS b', [from, to]);
  return Number(r.rows[0]!.b);
}

/** The median of unsorted values (the mean of the middle two for an even count). */
export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}

export function quantile(sorted: number[], q: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
}

export const round = (n: number, d = 1) => Math.round(n * 10 ** d) / 10 ** d;

/**
 * Commits `count` events for `tenant`, one per transaction, one every `intervalMs` (paced against
 * the schedule, not the previous insert, so a slow insert is not hidden). Each payload carries
 * its sequence number as `seq`; returns when each was committed (performance.now()).
 */
export async function pacedCommits(
  producer: pg.Client,
  tenant: string,
  count: number,
  intervalMs: number,
  type: string,
  keyPrefix: string,
): Promise<Map<string, number>> {
  const committed = new Map<string, number>();
  const t0 = performance.now();
  for (let i = 0; i < count; i++) {
    const wait = t0 + i * intervalMs - performance.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    const seq = String(i);
    await asProducer(producer, tenant, () =>
      insertEvents(producer, tenant, [{ type, payload: { seq, note: 'x'.repeat(150) }, dedupeKey: `${keyPrefix}-${i}` }]),
    );
    committed.set(seq, performance.now());
  }
  return committed;
}

export interface EventReceiver {
  url: string;
  close(): Promise<void>;
}

/**
 * An HTTP sink for the latency sections: hands each event body to `onEvent` with its receipt
 * time (performance.now()) and answers 204 after `delayMs`.
 */
export async function startEventReceiver(
  onEvent: (body: { restaurantId?: string; payload?: { seq?: string } }, at: number) => void,
  delayMs = 0,
): Promise<EventReceiver> {
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (d: Buffer) => chunks.push(d));
    req.on('end', () => {
      const at = performance.now();
      try {
        onEvent(JSON.parse(Buffer.concat(chunks).toString()), at);
      } catch {
        // not an event body
      }
      if (delayMs > 0) setTimeout(() => res.writeHead(204).end(), delayMs);
      else res.writeHead(204).end();
    });
  });
  server.keepAliveTimeout = 60_000;
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`,
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}
