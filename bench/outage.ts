// A sink outage with the default retry and breaker settings, in real time (not part of
// npm test or npm run bench: it takes OUTAGE_SECONDS plus a few minutes).
//
//   node bench/outage.ts
//
// A daemon process (node src/main.ts run, the worker login, defaults for everything not set
// below) delivers two routes: `orders.*` to a receiver that answers 503 for OUTAGE_SECONDS,
// `audit.*` to one that always answers 200. A producer commits events to both at a steady
// rate before, during and after the outage. The run fails (exit 1) if any event is
// dead-lettered, if the orders backlog is not delivered within RECOVERY_LIMIT_SECONDS of
// the receiver coming back, or if audit deliveries stalled during the outage.
//
//   OUTAGE_DATABASE_URL  superuser URL of the PostgreSQL (default BENCH_DATABASE_URL, then
//                        postgres://postgres@127.0.0.1:5432/postgres)
//   OUTAGE_SECONDS       length of the outage (default 600: the issue's ten-minute deploy)
//   OUTAGE_RATE          events per second per route (default 5)
//   WARMUP_SECONDS       healthy time before the outage (default 10)
//   RECOVERY_LIMIT_SECONDS  deadline for the backlog after recovery (default 60)
//   OUTBOX_*             passed to the daemon (unset: the documented defaults)
import { spawn } from 'node:child_process';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { createBenchDb, quantile, round } from './lib.ts';
import { asProducer, insertEvents } from '../src/db/queries/producer.ts';

const ROOT = process.env.OUTAGE_DATABASE_URL ?? process.env.BENCH_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
const OUTAGE_MS = Number(process.env.OUTAGE_SECONDS ?? 600) * 1000;
const RATE = Number(process.env.OUTAGE_RATE ?? 5);
const WARMUP_MS = Number(process.env.WARMUP_SECONDS ?? 10) * 1000;
const RECOVERY_LIMIT_MS = Number(process.env.RECOVERY_LIMIT_SECONDS ?? 60) * 1000;
const MAIN = fileURLToPath(new URL('../src/main.ts', import.meta.url));
const log = (s: string) => process.stderr.write(`${new Date().toISOString()} ${s}\n`);

interface Receiver {
  url: string;
  /** Requests per event id. */
  attempts: Map<string, number>;
  /** When each event id was first answered 200. */
  delivered: Map<string, number>;
  close(): Promise<void>;
}

async function receiver(failing: () => boolean): Promise<Receiver> {
  const attempts = new Map<string, number>();
  const delivered = new Map<string, number>();
  const server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => {
      const id = (JSON.parse(body) as { id: string }).id;
      attempts.set(id, (attempts.get(id) ?? 0) + 1);
      if (failing()) {
        res.writeHead(503).end('deploying');
        return;
      }
      if (!delivered.has(id)) delivered.set(id, Date.now());
      res.writeHead(200).end();
    });
  });
  server.keepAliveTimeout = 5000;
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`,
    attempts,
    delivered,
    close: () => new Promise<void>((r) => { server.closeAllConnections(); server.close(() => r()); }),
  };
}

async function main() {
  const db = await createBenchDb(ROOT, 'outage');
  let down = false;
  const orders = await receiver(() => down);
  const audit = await receiver(() => false);
  const daemonEnv: Record<string, string> = {
    PATH: process.env.PATH ?? '',
    DATABASE_URL: db.workerUrl,
    METRICS_PORT: '0',
    LOG_LEVEL: process.env.LOG_LEVEL ?? 'warn',
    PARTITION_ROTATION: 'false',
    OUTBOX_ROUTES: JSON.stringify({
      routes: [
        { match: 'orders.*', sink: { type: 'http', name: 'orders', url: orders.url } },
        { match: 'audit.*', sink: { type: 'http', name: 'audit', url: audit.url } },
      ],
    }),
  };
  for (const [k, v] of Object.entries(process.env)) if (k.startsWith('OUTBOX_') && v !== undefined) daemonEnv[k] = v;
  // The daemon's logs go to stderr with ours; stdout carries only the JSON result.
  const daemon = spawn(process.execPath, [MAIN, 'run'], { env: daemonEnv, stdio: ['ignore', 2, 2] });
  const exited = new Promise<number | null>((r) => daemon.on('exit', (code) => r(code)));

  const producer = new pg.Client(db.producerUrl);
  await producer.connect();
  const tenant = '11111111-1111-4111-8111-111111111111';
  const created = new Map<string, { type: string; at: number }>();
  const produce = () =>
    asProducer(producer, tenant, async () => {
      for (const type of ['orders.placed', 'audit.logged']) {
        const ids = await insertEvents(producer, tenant, Array.from({ length: RATE }, (_, g) => ({ type, payload: { n: g + 1 } })));
        for (const id of ids) created.set(id, { type, at: Date.now() });
      }
    });

  let outageStart = 0;
  let recoveredAt = 0;
  const startedAt = Date.now();
  log(`outage run: ${OUTAGE_MS / 1000} s outage, ${RATE} events/s per route, daemon pid ${daemon.pid}`);
  let lastReport = 0;
  for (;;) {
    const t = Date.now() - startedAt;
    if (!down && outageStart === 0 && t >= WARMUP_MS) {
      down = true;
      outageStart = Date.now();
      log('orders receiver now answers 503');
    }
    if (down && Date.now() - outageStart >= OUTAGE_MS) {
      down = false;
      recoveredAt = Date.now();
      log('orders receiver recovered');
    }
    if (recoveredAt > 0 && Date.now() - recoveredAt > 5000) break;
    await produce();
    if (Date.now() - lastReport > 30_000) {
      lastReport = Date.now();
      const s = await db.admin.query<{ status: string; n: number }>('SELECT status, count(*)::int AS n FROM capacity_outbox GROUP BY 1 ORDER BY 1');
      log(`status: ${s.rows.map((r) => `${r.status}=${r.n}`).join(' ')}`);
    }
    await new Promise((r) => setTimeout(r, 1000));
  }

  const ordersIds = [...created].filter(([, c]) => c.type === 'orders.placed').map(([id]) => id);
  const auditIds = [...created].filter(([, c]) => c.type === 'audit.logged').map(([id]) => id);
  const deadline = recoveredAt + RECOVERY_LIMIT_MS;
  while (Date.now() < deadline && ordersIds.some((id) => !orders.delivered.has(id))) await new Promise((r) => setTimeout(r, 500));
  await new Promise((r) => setTimeout(r, 2000)); // let the last outcomes be written

  const rows = await db.admin.query<{ status: string; n: number; max_attempts: number }>('SELECT status, count(*)::int AS n, max(attempts)::int AS max_attempts FROM capacity_outbox GROUP BY 1');
  const byStatus = Object.fromEntries(rows.rows.map((r) => [r.status, r.n]));
  const heldDuringOutage = ordersIds.filter((id) => created.get(id)!.at < recoveredAt);
  const afterRecovery = heldDuringOutage.map((id) => (orders.delivered.get(id) ?? Infinity) - recoveredAt).sort((a, b) => a - b);
  const attempts = ordersIds.map((id) => orders.attempts.get(id) ?? 0).sort((a, b) => a - b);
  const auditDuringOutage = auditIds.filter((id) => created.get(id)!.at >= outageStart && created.get(id)!.at < recoveredAt);
  const auditLag = auditDuringOutage.map((id) => (audit.delivered.get(id) ?? Infinity) - created.get(id)!.at).sort((a, b) => a - b);
  const result = {
    outageSeconds: OUTAGE_MS / 1000,
    events: created.size,
    statuses: byStatus,
    dead: byStatus.dead ?? 0,
    orders: {
      events: ordersIds.length,
      heldByOutage: heldDuringOutage.length,
      undelivered: ordersIds.filter((id) => !orders.delivered.has(id)).length,
      attemptsPerEvent: { p50: quantile(attempts, 0.5), p99: quantile(attempts, 0.99), max: attempts.at(-1) },
      requestsDuringOutage: [...orders.attempts.values()].reduce((a, b) => a + b, 0) - orders.delivered.size,
      deliveredAfterRecoverySeconds: { p50: round(quantile(afterRecovery, 0.5) / 1000), p99: round(quantile(afterRecovery, 0.99) / 1000), max: round((afterRecovery.at(-1) ?? 0) / 1000) },
    },
    audit: {
      eventsDuringOutage: auditDuringOutage.length,
      undelivered: auditIds.filter((id) => !audit.delivered.has(id)).length,
      lagDuringOutageSeconds: { p50: round(quantile(auditLag, 0.5) / 1000, 2), p99: round(quantile(auditLag, 0.99) / 1000, 2) },
    },
  };
  process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);

  daemon.kill('SIGTERM');
  await exited;
  await producer.end();
  await orders.close();
  await audit.close();
  await db.drop();
  const failures = [
    result.dead > 0 && `${result.dead} events dead-lettered`,
    result.orders.undelivered > 0 && `${result.orders.undelivered} orders events not delivered within ${RECOVERY_LIMIT_MS / 1000} s of recovery`,
    result.audit.undelivered > 0 && `${result.audit.undelivered} audit events not delivered`,
    result.audit.lagDuringOutageSeconds.p99 > 10 && 'audit deliveries stalled during the outage',
  ].filter(Boolean);
  if (failures.length > 0) {
    log(`FAILED: ${failures.join('; ')}`);
    process.exitCode = 1;
  } else log('ok: nothing dead-lettered, backlog delivered after recovery, the other sink unaffected');
}

main().catch((err: unknown) => {
  log(`outage run failed: ${(err as Error).stack ?? String(err)}`);
  process.exitCode = 1;
});
