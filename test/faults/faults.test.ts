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
// Part of the events carry an ordering_key (README "producer contract", ADR 0011): for them
// the receiver's log is also checked for per-key order, with the property of
// test/ordering-blackbox.test.ts plus the direct one: no event of a key reaches the sink while
// an earlier event of that key has not been acknowledged.

const MAIN = fileURLToPath(new URL('../../src/main.ts', import.meta.url));
const LEASE_MS = 4000;
const SINK_TIMEOUT_MS = 1000;
const RUN_MS = Number(process.env.FAULTS_RUN_MS ?? 30_000);
/** Keyed producers: tenants x keys per tenant; each round writes two overlapping windows. */
const KEYED_TENANTS = 4;
const KEYS_PER_TENANT = 75;
const KEY_WINDOW = 5;

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
    // onDeadHead is `block` (the default), spelled out on purpose: every failure this sink
    // produces (503, 429, a timeout) is retryable and OUTBOX_MAX_ATTEMPTS is 1000, so no head
    // should ever be dead-lettered here. If one were, `block` holds its key's later events
    // pending, which the recovery wait below reports as stuck (and `dead` must be 0), whereas
    // `skip` would let the key move on and hide it.
    const routes = JSON.stringify({
      routes: [{ match: '*', sink: { type: 'http', url: receiver.url, timeoutMs: SINK_TIMEOUT_MS }, ordering: { onDeadHead: 'block' } }],
    });
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
    // Keyed producers, one per tenant (tenants 0-2 also get unkeyed events above). Each round
    // commits two transactions at once, on two connections, over overlapping windows of the
    // tenant's keys ([c, c+5) and [c+2, c+7)): the shared keys are written by both, so one
    // producer waits at its INSERT for the other's commit (commit order = sequence order), and
    // each holds its key locks a little before COMMIT, so completions of those keys' heads
    // find the key held by a producer (the settler's path). Keys are inserted in one sorted
    // order in every transaction (consistent lock order: producers never deadlock). About five
    // events per key over a 30 s run, in bursts. More keeps keys' chains long at the producers'
    // stop: a key drains one event per hop, and each hop (retries of a 58%-failing sink, a
    // promoted event queueing behind the due backlog, ADR 0011) takes a second or more, which
    // stretches recovery well past the unkeyed events'.
    const committedKeyed = new Set<string>();
    let keyedRounds = 0;
    const keyName = (i: number) => `booking:${String(i % KEYS_PER_TENANT).padStart(3, '0')}`;
    const keyedTx = async (c: pg.Client, tenant: string, keys: string[], round: number, tx: string) => {
      const perKey = Math.random() < 0.25 ? 2 : 1;
      const ids: string[] = [];
      await c.query('BEGIN');
      await c.query('SELECT public.set_restaurant_context($1)', [tenant]);
      for (let i = 0; i < perKey; i++) {
        const r = await c.query<{ id: string }>(
          `INSERT INTO capacity_outbox (restaurant_id, event_type, payload, ordering_key)
           SELECT $1, 'fault.keyed', jsonb_build_object('round', $2::int, 'tx', $3::text, 'i', $4::int), k FROM unnest($5::text[]) WITH ORDINALITY AS u(k, n) ORDER BY n
           RETURNING id`,
          [tenant, round, tx, i, keys],
        );
        ids.push(...r.rows.map((row) => row.id));
      }
      await new Promise((res) => setTimeout(res, 30));
      await c.query('COMMIT');
      for (const id of ids) committedKeyed.add(id);
    };
    const keyedProducer = async (n: number) => {
      const tenant = `00000000-0000-4000-8000-${String(n).padStart(12, '0')}`;
      let cursor = Math.floor(Math.random() * KEYS_PER_TENANT);
      let round = 0;
      while (producing) {
        const clients = [0, 1].map(() => {
          const c = new pg.Client({ connectionString: producerUrl, connectionTimeoutMillis: 2000 });
          c.on('error', () => undefined);
          return c;
        });
        try {
          await Promise.all(clients.map((c) => c.connect()));
          while (producing) {
            const window = (from: number) => Array.from({ length: KEY_WINDOW }, (_, i) => keyName(from + i)).sort();
            const a = window(cursor);
            const b = window(cursor + 2);
            await Promise.all([keyedTx(clients[0]!, tenant, a, round, 'a'), keyedTx(clients[1]!, tenant, b, round, 'b')]);
            keyedRounds++;
            round++;
            cursor = (cursor + KEY_WINDOW) % KEYS_PER_TENANT;
            await new Promise((res) => setTimeout(res, 400 + Math.random() * 500));
          }
        } catch {
          producerErrors++;
          await new Promise((res) => setTimeout(res, 200));
        } finally {
          await Promise.all(clients.map((c) => c.end().catch(() => undefined)));
        }
      }
    };
    const producers = [...[0, 1, 2].map(producer), ...Array.from({ length: KEYED_TENANTS }, (_, n) => keyedProducer(n))];

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
    const backlogTrace: string[] = []; // unkeyed/keyed events not done, once a second from the producers' stop
    const check = admin();
    await check.connect();
    for (;;) {
      const r = await check.query<{ n: number; keyed: number }>(
        `SELECT count(*)::int AS n, count(ordering_key)::int AS keyed FROM capacity_outbox WHERE status IN ('pending', 'processing')`,
      );
      if (Date.now() - recoveryStart >= backlogTrace.length * 1000) backlogTrace.push(`${r.rows[0].n - r.rows[0].keyed}/${r.rows[0].keyed}`);
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
    const blocked = await check.query(`SELECT count(*)::int AS n FROM outbox_dispatcher.capacity_outbox_ordering_blocked`);
    // The sequence of every keyed event in the table (those whose COMMIT returned an error but
    // did commit included): the order the receiver must respect.
    const keyedRows = await check.query<{ id: string; restaurant_id: string; ordering_key: string; seq: string }>(
      `SELECT id, restaurant_id, ordering_key, ordering_seq::text AS seq FROM capacity_outbox WHERE ordering_key IS NOT NULL`,
    );
    await check.end();

    const ok = [...acknowledged];
    const delivered = new Set(ok.map((r) => r.json.id));
    const lost = [...committed].filter((id) => !delivered.has(id));
    const successfulTwice = new Map<string, number>();
    for (const r of ok) successfulTwice.set(r.json.id, (successfulTwice.get(r.json.id) ?? 0) + 1);
    const duplicates = [...successfulTwice.values()].filter((n) => n > 1).length;
    const survivors = workers.filter((w) => !w.killed);

    // Per-key order, over every request the receiver got (failed attempts too), in arrival
    // order. (1) test/ordering-blackbox.test.ts's property: a key's sequence never goes
    // backwards; an equal sequence is only ever the same event again (a redelivery).
    // (2) Directly: no request of a key carries a sequence above the key's lowest sequence not
    // yet acknowledged (an earlier event still undelivered was overtaken).
    const keyOf = (tenant: string, key: string) => `${tenant}/${key}`;
    const seqById = new Map<string, bigint>();
    const pendingByKey = new Map<string, bigint[]>(); // each key's sequences, ascending; acknowledged ones shifted off
    for (const row of keyedRows.rows) {
      seqById.set(row.id, BigInt(row.seq));
      const k = keyOf(row.restaurant_id, row.ordering_key);
      pendingByKey.set(k, [...(pendingByKey.get(k) ?? []), BigInt(row.seq)]);
    }
    for (const seqs of pendingByKey.values()) seqs.sort((x, y) => (x < y ? -1 : x > y ? 1 : 0));
    const ackedSeqs = new Map<string, Set<bigint>>();
    const lastSeq = new Map<string, { seq: bigint; id: string }>();
    const orderingViolations: string[] = [];
    let keyedRequests = 0;
    let backwards = 0;
    let overtakes = 0;
    let keyedRedeliveries = 0;
    for (const r of receiver.received) {
      const body = r.json as (Received['json'] & { orderingKey?: string; sequence?: string }) | undefined;
      if (!body?.orderingKey) continue;
      keyedRequests++;
      const k = keyOf(body.restaurantId, body.orderingKey);
      const seq = BigInt(body.sequence!);
      if (r.headers['x-outbox-sequence'] !== body.sequence || seqById.get(body.id) !== seq) {
        orderingViolations.push(`${body.id}: sequence ${body.sequence}, header ${String(r.headers['x-outbox-sequence'])}, table ${seqById.get(body.id)}`);
      }
      const prev = lastSeq.get(k);
      if (prev && seq < prev.seq) {
        backwards++;
        orderingViolations.push(`${k}: ${seq} (${body.id}) after ${prev.seq} (${prev.id})`);
      }
      if (prev && seq === prev.seq) {
        if (body.id === prev.id) keyedRedeliveries++;
        else orderingViolations.push(`${k}: sequence ${seq} carried by ${body.id} and ${prev.id}`);
      }
      if (!prev || seq > prev.seq) lastSeq.set(k, { seq, id: body.id });
      const waiting = pendingByKey.get(k) ?? [];
      if (waiting.length > 0 && seq > waiting[0]!) {
        overtakes++;
        orderingViolations.push(`${k}: ${seq} (${body.id}) sent while ${waiting[0]} was not yet acknowledged`);
      }
      if (acknowledged.has(r)) {
        const acked = ackedSeqs.get(k) ?? new Set<bigint>();
        acked.add(seq);
        ackedSeqs.set(k, acked);
        while (waiting.length > 0 && acked.has(waiting[0]!)) waiting.shift();
      }
    }
    const lastAckAfterStop = (keyed: boolean) =>
      (Math.max(0, ...ok.filter((r) => ('orderingKey' in r.json) === keyed).map((r) => r.at - recoveryStart)) / 1000).toFixed(1);
    const keyedLost = [...committedKeyed].filter((id) => !delivered.has(id));
    const keyedUndelivered = keyedRows.rows.filter((row) => !delivered.has(row.id)).map((row) => row.id);

    const table = [
      ['events committed (unkeyed)', committed.size],
      ['delivery attempts', receiver.received.length],
      ['faults injected', faults.length],
      ['lost', lost.length],
      ['acknowledged twice (duplicates)', duplicates],
      ['dead-lettered', dead.rows[0].n],
      ['producer reconnects', producerErrors],
      ['recovery time (s)', recoverySeconds.toFixed(1)],
      ['last unkeyed ack after stop (s)', lastAckAfterStop(false)],
      ['last keyed ack after stop (s)', lastAckAfterStop(true)],
      ['keyed events committed', committedKeyed.size],
      ['keys (tenant, key)', pendingByKey.size],
      ['overlapping keyed tx pairs', keyedRounds],
      ['keyed requests received', keyedRequests],
      ['keyed lost', keyedLost.length],
      ['keyed repeats of same event', keyedRedeliveries],
      ['keyed backwards', backwards],
      ['keyed overtakes', overtakes],
      ['ordering blocked keys', blocked.rows[0].n],
    ];
    process.stdout.write(`\nfault injection summary\n${table.map(([k, v]) => `  ${String(k).padEnd(33)} ${v}`).join('\n')}\n  faults: ${faults.join('; ')}\n  backlog each second after stop (unkeyed/keyed): ${backlogTrace.join(' ')}\n`);
    if (orderingViolations.length > 0) process.stdout.write(`  ordering violations (first 20):\n    ${orderingViolations.slice(0, 20).join('\n    ')}\n`);

    for (const w of survivors) w.child.kill('SIGTERM');
    await Promise.all(survivors.map((w) => new Promise((res) => (w.exit !== undefined ? res(null) : w.child.once('exit', res)))));
    await receiver.close();

    expect(faults.filter((f) => f.includes('failed'))).toEqual([]);
    expect(committed.size).toBeGreaterThan(500);
    expect(lost).toEqual([]);
    expect(dead.rows[0].n).toBe(0);
    // Per key: order kept, every keyed event delivered (none stuck behind a head), none blocked.
    expect(committedKeyed.size).toBeGreaterThan(500);
    expect(orderingViolations.slice(0, 20)).toEqual([]);
    expect(backwards).toBe(0);
    expect(overtakes).toBe(0);
    expect(keyedLost).toEqual([]);
    expect(keyedUndelivered).toEqual([]);
    expect(blocked.rows[0].n).toBe(0);
    // The daemon never exits on a transient fault: every worker not killed ran until told to stop.
    const crashed = survivors.filter((w) => w.exit !== 0).map((w) => `${w.id} exited ${w.exit}: ${w.output.slice(-3500)}`);
    expect(crashed).toEqual([]);
    // Duplicates only come from crashes/timeouts between acknowledgement and completion: bounded.
    expect(duplicates).toBeLessThan(committed.size * 0.05);
  }, 300_000);
});
