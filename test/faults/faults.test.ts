import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { migrate } from '../../src/db/migrator.ts';
import { ensureEmbeddedCluster, type EmbeddedCluster } from '../../src/embedded/cluster.ts';
import { createLogger } from '../../src/kernel/log.ts';
import { startReceiver, type Received } from '../support/http-receiver.ts';
import { freePort } from '../support/ports.ts';

// Fault injection (npm run test:faults, ~2 minutes): producers insert continuously into a
// PostgreSQL this file owns while eight workers dispatch to a flaky HTTP sink, and the
// harness SIGKILLs workers, restarts PostgreSQL, terminates worker connections and drops
// the LISTEN connections. Afterwards the delivered set is checked against the committed set.

const MAIN = fileURLToPath(new URL('../../src/main.ts', import.meta.url));
const LEASE_MS = 4000;
const SINK_TIMEOUT_MS = 1000;
const RUN_MS = Number(process.env.FAULTS_RUN_MS ?? 30_000);

let cluster: EmbeddedCluster;
let dir: string;
let adminUrl: string;
let workerUrl: string;
let producerUrl: string;

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'outbox-faults-'));
  fs.chmodSync(dir, 0o755);
  cluster = await ensureEmbeddedCluster({ dir: path.join(dir, 'pg'), port: await freePort(), log: createLogger('warn') });
  const root = new pg.Client(cluster.url({ database: 'postgres', as: 'superuser' }));
  await root.connect();
  await root.query('CREATE DATABASE faults');
  await root.end();
  adminUrl = cluster.url({ database: 'faults', as: 'superuser' });
  const admin = new pg.Client(adminUrl);
  await admin.connect();
  await migrate(admin);
  await admin.query(`CREATE ROLE fault_worker LOGIN PASSWORD 'w' IN ROLE app_background`);
  await admin.query(`CREATE ROLE fault_producer LOGIN PASSWORD 'p' IN ROLE app_producer`);
  await admin.end();
  const u = (user: string, pw: string) => adminUrl.replace(/\/\/[^@]+@/, `//${user}:${pw}@`);
  workerUrl = u('fault_worker', 'w');
  producerUrl = u('fault_producer', 'p');
}, 120_000);

afterAll(async () => {
  await cluster?.stop().catch(() => undefined);
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

interface Worker {
  id: string;
  child: ChildProcessWithoutNullStreams;
  killed: boolean;
  exit?: number | null;
  output: string;
}

describe('fault injection', () => {
  it('delivers every committed event at least once through kills, a database restart and dropped connections', async () => {
    // A sink that fails half its calls, hangs past the timeout on some, throttles others.
    const acknowledged = new Set<Received>();
    const receiver = await startReceiver((r) => {
      const roll = Math.random();
      if (roll < 0.5) return { status: 503 };
      if (roll < 0.53) return { status: 200, delayMs: SINK_TIMEOUT_MS * 3 }; // the worker gives up first and retries
      if (roll < 0.58) return { status: 429, headers: { 'retry-after': '1' } };
      acknowledged.add(r);
      return { status: 200 };
    });
    const routes = JSON.stringify({ routes: [{ match: '*', sink: { type: 'http', url: receiver.url, timeoutMs: SINK_TIMEOUT_MS } }] });
    const workers: Worker[] = [];
    const spawnWorker = (id: string) => {
      const child = spawn(process.execPath, [MAIN, 'run'], {
        env: {
          PATH: process.env.PATH,
          DATABASE_URL: workerUrl,
          OUTBOX_ROUTES: routes,
          OUTBOX_WORKER_ID: id,
          OUTBOX_LEASE_MS: String(LEASE_MS),
          OUTBOX_RESCUE_INTERVAL_MS: '500',
          OUTBOX_BACKOFF_BASE_MS: '100',
          OUTBOX_BACKOFF_MAX_MS: '1000',
          // Time compressed like the backoff: a sink failing ~58% of calls at random can trip
          // the breaker during the restart; a 30 s open interval would dominate recovery here.
          OUTBOX_CIRCUIT_OPEN_MS: '2000',
          OUTBOX_MAX_ATTEMPTS: '1000',
          OUTBOX_POLL_INTERVAL_MS: '200',
          OUTBOX_BATCH_SIZE: '20',
          OUTBOX_CONCURRENCY: '10',
          METRICS_PORT: '0',
          LOG_LEVEL: 'error',
          PARTITION_ROTATION: 'false',
        },
      });
      const w: Worker = { id, child, killed: false, output: '' };
      child.stdout.on('data', (d: Buffer) => (w.output = (w.output + d.toString()).slice(-4000)));
      child.stderr.on('data', (d: Buffer) => (w.output = (w.output + d.toString()).slice(-4000)));
      child.on('exit', (code) => (w.exit = code));
      workers.push(w);
    };
    for (let i = 0; i < 8; i++) spawnWorker(`w${i}`);

    // Producers: an id counts as committed only once its COMMIT returned.
    const committed = new Set<string>();
    let producing = true;
    let producerErrors = 0;
    const producer = async (n: number) => {
      const tenant = `00000000-0000-4000-8000-${String(n).padStart(12, '0')}`;
      while (producing) {
        const c = new pg.Client({ connectionString: producerUrl, connectionTimeoutMillis: 2000 });
        c.on('error', () => undefined);
        try {
          await c.connect();
          while (producing) {
            await c.query('BEGIN');
            await c.query('SELECT public.set_restaurant_context($1)', [tenant]);
            const r = await c.query<{ id: string }>(
              `INSERT INTO capacity_outbox (restaurant_id, event_type, payload) SELECT $1, 'fault.e', jsonb_build_object('g', g) FROM generate_series(1, 10) g RETURNING id`,
              [tenant],
            );
            await c.query('COMMIT');
            for (const row of r.rows) committed.add(row.id);
            await new Promise((res) => setTimeout(res, 20));
          }
        } catch {
          producerErrors++;
          await new Promise((res) => setTimeout(res, 200));
        } finally {
          await c.end().catch(() => undefined);
        }
      }
    };
    const producers = [0, 1, 2].map(producer);

    // Faults.
    const faults: string[] = [];
    const admin = () => {
      const c = new pg.Client(adminUrl);
      c.on('error', () => undefined);
      return c;
    };
    const at = (ms: number, what: string, fn: () => Promise<void>) =>
      new Promise<void>((resolve) => setTimeout(() => fn().then(() => faults.push(what), (e: Error) => faults.push(`${what} (failed: ${e.message})`)).finally(resolve), ms));
    const t0 = Date.now();
    const schedule: Promise<void>[] = [];
    for (let k = 1; k * 4000 < RUN_MS; k++) {
      schedule.push(
        at(k * 4000, `SIGKILL worker`, async () => {
          const alive = workers.filter((w) => !w.killed);
          const victim = alive[Math.floor(Math.random() * alive.length)]!;
          victim.killed = true;
          victim.child.kill('SIGKILL');
          spawnWorker(`${victim.id}r${k}`);
        }),
      );
    }
    schedule.push(
      at(RUN_MS * 0.3, 'PostgreSQL restarted', async () => {
        await cluster.stop();
        cluster = await ensureEmbeddedCluster({ dir: path.join(dir, 'pg'), port: cluster.credentials.port, log: createLogger('warn') });
      }),
      at(RUN_MS * 0.5, 'worker connections terminated (pg_terminate_backend)', async () => {
        const c = admin();
        await c.connect();
        await c.query(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'fault_worker' AND application_name LIKE 'outbox-dispatcher:%'`);
        await c.end();
      }),
      at(RUN_MS * 0.7, 'LISTEN connections dropped', async () => {
        const c = admin();
        await c.connect();
        await c.query(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'outbox-dispatcher-listener'`);
        await c.end();
      }),
    );
    await Promise.all(schedule);
    await new Promise((res) => setTimeout(res, Math.max(0, RUN_MS - (Date.now() - t0))));
    producing = false;
    await Promise.all(producers);

    // Recovery: every committed event done, nothing left processing.
    const recoveryStart = Date.now();
    const check = admin();
    await check.connect();
    for (;;) {
      const r = await check.query(`SELECT count(*)::int AS n FROM capacity_outbox WHERE status IN ('pending', 'processing')`);
      if (r.rows[0].n === 0) break;
      if (Date.now() - recoveryStart > 90_000) {
        // Say where they are stuck: which state, whose lease, which error, how many attempts.
        const where = await check.query(
          `SELECT status, locked_by, left(coalesce(last_error, ''), 120) AS error, count(*)::int AS n,
                  max(attempts) AS max_attempts, min(next_attempt_at - now()) AS next_due_in
           FROM capacity_outbox WHERE status IN ('pending', 'processing') GROUP BY 1, 2, 3 ORDER BY n DESC LIMIT 8`,
        );
        throw new Error(`${r.rows[0].n} events still not done after 90 s: ${JSON.stringify(where.rows)}`);
      }
      await new Promise((res) => setTimeout(res, 250));
    }
    const recoverySeconds = (Date.now() - recoveryStart) / 1000;
    const dead = await check.query(`SELECT count(*)::int AS n FROM capacity_outbox WHERE status = 'dead'`);
    await check.end();

    const ok = [...acknowledged];
    const delivered = new Set(ok.map((r) => r.json.id));
    const lost = [...committed].filter((id) => !delivered.has(id));
    const successfulTwice = new Map<string, number>();
    for (const r of ok) successfulTwice.set(r.json.id, (successfulTwice.get(r.json.id) ?? 0) + 1);
    const duplicates = [...successfulTwice.values()].filter((n) => n > 1).length;
    const survivors = workers.filter((w) => !w.killed);

    const table = [
      ['events committed', committed.size],
      ['delivery attempts', receiver.received.length],
      ['faults injected', faults.length],
      ['lost', lost.length],
      ['acknowledged twice (duplicates)', duplicates],
      ['dead-lettered', dead.rows[0].n],
      ['producer reconnects', producerErrors],
      ['recovery time (s)', recoverySeconds.toFixed(1)],
    ];
    process.stdout.write(`\nfault injection summary\n${table.map(([k, v]) => `  ${String(k).padEnd(30)} ${v}`).join('\n')}\n  faults: ${faults.join('; ')}\n`);

    for (const w of survivors) w.child.kill('SIGTERM');
    await Promise.all(survivors.map((w) => new Promise((res) => (w.exit !== undefined ? res(null) : w.child.once('exit', res)))));
    await receiver.close();

    expect(faults.filter((f) => f.includes('failed'))).toEqual([]);
    expect(committed.size).toBeGreaterThan(500);
    expect(lost).toEqual([]);
    expect(dead.rows[0].n).toBe(0);
    // The daemon never exits on a transient fault: every worker not killed ran until told to stop.
    const crashed = survivors.filter((w) => w.exit !== 0).map((w) => `${w.id} exited ${w.exit}: ${w.output.slice(-3500)}`);
    expect(crashed).toEqual([]);
    // Duplicates only come from crashes/timeouts between acknowledgement and completion: bounded.
    expect(duplicates).toBeLessThan(committed.size * 0.05);
  }, 300_000);
});
