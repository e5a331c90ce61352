// End-to-end latency at a steady rate: commit (the producer's COMMIT returned) to receipt by
// an HTTP sink, one worker with default settings. Issue 9 target: p99 < 20 ms at 200 events/s.
import pg from 'pg';
import { createBenchDb, pacedCommits, quantile, round, startEventReceiver, startWorker } from '../lib.ts';

export interface LatencyResult {
  ratePerSec: number;
  events: number;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
}

export async function steadyLatency(rootUrl: string, ratePerSec: number, seconds: number): Promise<LatencyResult> {
  const db = await createBenchDb(rootUrl, 'latency');
  const received = new Map<string, number>();
  const receiver = await startEventReceiver((body, at) => {
    if (body.payload?.seq) received.set(body.payload.seq, at);
  });
  const url = receiver.url;
  const worker = startWorker({
    DATABASE_URL: db.workerUrl,
    OUTBOX_ROUTES: JSON.stringify({ routes: [{ match: '*', sink: { type: 'http', url, timeoutMs: 5000 } }] }),
  });
  const producer = new pg.Client(db.producerUrl);
  try {
    await worker.ready;
    await producer.connect();
    const tenant = '00000000-0000-4000-8000-000000000001';
    const total = ratePerSec * seconds;
    const committed = await pacedCommits(producer, tenant, total, 1000 / ratePerSec, 'bench.latency', 'lat');
    const deadline = Date.now() + 30_000;
    while (received.size < total && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    const lat = [...committed].map(([seq, at]) => (received.get(seq) ?? Number.POSITIVE_INFINITY) - at).sort((a, b) => a - b);
    return {
      ratePerSec,
      events: total,
      p50Ms: round(quantile(lat, 0.5), 2),
      p99Ms: round(quantile(lat, 0.99), 2),
      maxMs: round(lat[lat.length - 1]!, 2),
    };
  } finally {
    await producer.end().catch(() => undefined);
    await worker.stop();
    await receiver.close();
    await db.drop();
  }
}
