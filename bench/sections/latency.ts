// End-to-end latency at a steady rate: commit (the producer's COMMIT returned) to receipt by
// an HTTP sink, one worker with default settings. Issue 9 target: p99 < 20 ms at 200 events/s.
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import pg from 'pg';
import { createBenchDb, pacedCommits, quantile, round, startWorker } from '../lib.ts';

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
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (d: Buffer) => chunks.push(d));
    req.on('end', () => {
      const at = performance.now();
      try {
        const body = JSON.parse(Buffer.concat(chunks).toString()) as { payload?: { seq?: string } };
        if (body.payload?.seq) received.set(body.payload.seq, at);
      } catch {
        // not ours
      }
      res.writeHead(204).end();
    });
  });
  server.keepAliveTimeout = 60_000;
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`;
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
    await new Promise<void>((r) => { server.closeAllConnections(); server.close(() => r()); });
    await db.drop();
  }
}
