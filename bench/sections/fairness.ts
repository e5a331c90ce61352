// Per-tenant fairness (issue 11, ADR 0012): tenant B's events committed behind tenant A's
// backlog, one worker with default settings, an HTTP sink answering every request after 10 ms.
// Target: B's commit-to-receipt p99 under 200 ms while A's backlog still drains at close to full
// speed. The same run with OUTBOX_FAIR_SHARE_PERCENT=0 (oldest first only) shows what B waited before.
import pg from 'pg';
import { createBenchDb, pacedCommits, quantile, round, startEventReceiver, startWorker } from '../lib.ts';

export interface FairnessResult {
  name: string;
  backlog: number;
  bEvents: number;
  bP50Ms: number;
  bP99Ms: number;
  bMaxMs: number;
  /** Tenant A's events delivered per second from worker start to A's last delivery. */
  aDrainPerSec: number;
}

const TENANT_A = '00000000-0000-4000-8000-00000000000a';
const TENANT_B = '00000000-0000-4000-8000-00000000000b';

export async function fairnessRun(rootUrl: string, backlog: number, fairSharePercent: number | undefined): Promise<FairnessResult> {
  const db = await createBenchDb(rootUrl, `fair${fairSharePercent ?? 'd'}`);
  const receivedB = new Map<string, number>();
  let receivedA = 0;
  let lastA = 0;
  const receiver = await startEventReceiver((body, at) => {
    if (body.restaurantId === TENANT_B && body.payload?.seq) receivedB.set(body.payload.seq, at);
    else if (body.restaurantId === TENANT_A) {
      receivedA++;
      lastA = at;
    }
  }, 10);
  const url = receiver.url;
  // A's backlog: one import committed before the worker starts, never analyzed, ~200-byte keyed payloads.
  await db.admin.query(
    `INSERT INTO capacity_outbox (restaurant_id, event_type, payload, dedupe_key)
     SELECT $1::uuid, 'bench.import', jsonb_build_object('n', g, 'booking', md5(g::text), 'note', repeat('x', 120)), 'import-' || g
     FROM generate_series(1, $2::int) g`,
    [TENANT_A, backlog],
  );
  const worker = startWorker({
    DATABASE_URL: db.workerUrl,
    OUTBOX_ROUTES: JSON.stringify({ routes: [{ match: '*', sink: { type: 'http', url, timeoutMs: 5000 } }] }),
    ...(fairSharePercent === undefined ? {} : { OUTBOX_FAIR_SHARE_PERCENT: String(fairSharePercent) }),
  });
  const producer = new pg.Client(db.producerUrl);
  try {
    const t0 = await worker.ready;
    await producer.connect();
    // B: 20 events per second for 15 s, one per transaction, starting once A's drain is under
    // way (300 samples, so the p99 is not just the slowest event).
    await new Promise((r) => setTimeout(r, 1000));
    const bEvents = 300;
    const committed = await pacedCommits(producer, TENANT_B, bEvents, 50, 'bench.booking', 'b');
    // A's rate is taken over at least 30 s (all of a 100k drain); a 1M backlog is not drained
    // to the end, which would take minutes and tell nothing more.
    const deadline = Date.now() + 600_000;
    const enough = () => receivedA >= backlog || performance.now() - t0 >= 30_000;
    while ((receivedB.size < bEvents || !enough()) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    const lat = [...committed].map(([seq, at]) => (receivedB.get(seq) ?? Number.POSITIVE_INFINITY) - at).sort((a, b) => a - b);
    const name = `tenant B behind A's ${backlog.toLocaleString('en-US')} (HTTP 10 ms, ${fairSharePercent === undefined ? 'defaults' : `OUTBOX_FAIR_SHARE_PERCENT=${fairSharePercent}`})`;
    return {
      name,
      backlog,
      bEvents,
      bP50Ms: round(quantile(lat, 0.5), 1),
      bP99Ms: round(quantile(lat, 0.99), 1),
      bMaxMs: round(lat[lat.length - 1]!, 1),
      aDrainPerSec: Math.round(receivedA / ((lastA - t0) / 1000)),
    };
  } finally {
    await producer.end().catch(() => undefined);
    await worker.stop();
    await receiver.close();
    await db.drop();
  }
}
