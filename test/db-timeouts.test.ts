import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createKysely, createPool, QueryTimeoutError } from '../src/db/pool.ts';
import { sessionTimeoutsSql } from '../src/db/queries/session.ts';
import { claimBatch } from '../src/db/queries/outbox.ts';
import { claimLoopBoundMs, Heartbeat, Watchdog } from '../src/kernel/heartbeat.ts';
import { createTestDatabase, produce, statusCounts, tenantId, waitFor, type TestDatabase } from './support/db.ts';
import { recordingSink, startDaemon } from './support/daemon.ts';
import { metricTotal } from './support/metrics.ts';

/**
 * A TCP proxy to PostgreSQL that can black-hole: while frozen it accepts connections and
 * reads what both sides send, but relays nothing and closes nothing (a failover, or a NAT or
 * load balancer dropping the flow without a reset). Repro 15 of review 2026-11.
 */
async function blackholeProxy(target: { host: string; port: number }) {
  let frozen = false;
  const pairs = new Set<[net.Socket, net.Socket]>();
  const server = net.createServer((client) => {
    const upstream = net.connect(target.port, target.host);
    const pair: [net.Socket, net.Socket] = [client, upstream];
    pairs.add(pair);
    client.on('data', (d) => { if (!frozen) upstream.write(d); });
    upstream.on('data', (d) => { if (!frozen) client.write(d); });
    const close = () => { client.destroy(); upstream.destroy(); pairs.delete(pair); };
    client.on('close', close);
    upstream.on('close', close);
    client.on('error', () => undefined);
    upstream.on('error', () => undefined);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as net.AddressInfo).port,
    freeze: () => { frozen = true; },
    heal: () => { frozen = false; },
    async close() {
      for (const [a, b] of pairs) { a.destroy(); b.destroy(); }
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

let db: TestDatabase;
let proxy: Awaited<ReturnType<typeof blackholeProxy>>;
let proxyUrl: string;
beforeAll(async () => {
  db = await createTestDatabase();
  const u = new URL(db.workerUrl);
  proxy = await blackholeProxy({ host: u.hostname, port: Number(u.port || 5432) });
  u.hostname = '127.0.0.1';
  u.port = String(proxy.port);
  proxyUrl = u.toString();
});
afterAll(async () => {
  await proxy.close();
  await db.drop();
});

const TIMEOUTS = { statementTimeoutMs: 1000, idleInTransactionTimeoutMs: 2000, connectTimeoutMs: 1000, keepAliveInitialDelayMs: 1000 };
const ENV = {
  OUTBOX_DB_STATEMENT_TIMEOUT_MS: '1000',
  OUTBOX_DB_IDLE_IN_TRANSACTION_TIMEOUT_MS: '2000',
  OUTBOX_DB_CONNECT_TIMEOUT_MS: '1000',
  OUTBOX_DB_KEEPALIVE_MS: '1000',
  OUTBOX_POLL_INTERVAL_MS: '100',
  // Short, so the event whose outcome the black-holed shutdown could not write is rescued soon.
  OUTBOX_LEASE_MS: '5000',
};

async function healthz(port: number): Promise<{ status: number; body: { status: string; stalled?: { loop: string }[] } }> {
  const res = await fetch(`http://127.0.0.1:${port}/healthz`);
  return { status: res.status, body: (await res.json()) as { status: string } };
}

describe('database timeouts (issue 10 item 6)', () => {
  it('the daemon pool sets the server-side timeouts on every session', async () => {
    const pool = createPool({ connectionString: db.workerUrl, max: 1, applicationName: 'test', role: 'app_background', timeouts: TIMEOUTS });
    try {
      const { rows } = await pool.query("SELECT current_setting('statement_timeout') AS st, current_setting('idle_in_transaction_session_timeout') AS it");
      expect(rows[0]).toEqual({ st: '1s', it: '2s' });
      // The server enforces it: a statement over the limit is cancelled (57014), the pool survives.
      await expect(pool.query('SELECT pg_sleep(5)')).rejects.toMatchObject({ code: '57014' });
      expect((await pool.query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
    } finally {
      await pool.end();
    }
    expect(() => sessionTimeoutsSql({ statementTimeoutMs: 1.5, idleInTransactionTimeoutMs: 1 })).toThrow(/invalid timeout/);
  });

  it('a claim through a black-holed connection fails with a timeout, and the connection is replaced once the path heals', async () => {
    const worker = createKysely(createPool({ connectionString: proxyUrl, max: 1, applicationName: 'test', role: 'app_background', timeouts: TIMEOUTS }));
    try {
      expect(await claimBatch(worker, { workerId: 'bh', limit: 1, leaseMs: 1000, maxPayloadBytes: 1_048_576 })).toEqual([]);
      proxy.freeze();
      await expect(claimBatch(worker, { workerId: 'bh', limit: 1, leaseMs: 1000, maxPayloadBytes: 1_048_576 })).rejects.toBeInstanceOf(QueryTimeoutError);
      // A new connection through the black hole fails on the connect timeout, not never.
      await expect(claimBatch(worker, { workerId: 'bh', limit: 1, leaseMs: 1000, maxPayloadBytes: 1_048_576 })).rejects.toThrow();
      proxy.heal();
      expect(await claimBatch(worker, { workerId: 'bh', limit: 1, leaseMs: 1000, maxPayloadBytes: 1_048_576 })).toEqual([]);
    } finally {
      proxy.heal();
      await worker.destroy();
    }
  });

  it('black-holed database: claims fail, /healthz turns 503, the worker recovers when the path heals and delivers everything; shutdown is bounded', async () => {
    const sink = recordingSink('test');
    const daemon = await startDaemon(db, { env: ENV, sinks: { test: sink }, connectionString: proxyUrl });
    const t = tenantId();
    let stopped = false;
    try {
      await produce(db.producerUrl, t, Array.from({ length: 5 }, (_, i) => ({ type: 'bh.before', payload: { i } })));
      await waitFor(async () => (await statusCounts(db)).done === 5, { what: '5 events done before the black hole' });
      expect((await healthz(daemon.server.port!)).status).toBe(200);

      proxy.freeze();
      const errorsBefore = await metricTotal(daemon.metrics.claimErrors);
      await produce(db.producerUrl, t, Array.from({ length: 5 }, (_, i) => ({ type: 'bh.during', payload: { i } })));
      // The claim loop no longer waits forever on the dead connection: its claims fail...
      await waitFor(async () => (await metricTotal(daemon.metrics.claimErrors)) > errorsBefore, { timeoutMs: 30_000, what: 'a claim error' });
      // ...and /healthz reports the stalled loop, so the orchestrator can restart it.
      const unhealthy = await waitFor(async () => {
        const h = await healthz(daemon.server.port!);
        return h.status === 503 ? h : undefined;
      }, { timeoutMs: 60_000, what: '/healthz 503' });
      expect(unhealthy.body.status).toBe('stalled');
      expect(unhealthy.body.stalled?.map((s) => s.loop)).toContain('dispatcher');
      expect(await statusCounts(db)).toEqual({ done: 5, pending: 5 });

      proxy.heal();
      await waitFor(async () => (await statusCounts(db)).done === 10, { timeoutMs: 60_000, what: 'all 10 events done after healing' });
      await waitFor(async () => (await healthz(daemon.server.port!)).status === 200, { what: '/healthz 200 again' });
      const delivered = sink.calls.map((c) => `${c.event.eventType}:${(c.event.payload as { i: number }).i}`);
      for (const type of ['bh.before', 'bh.during']) for (let i = 0; i < 5; i++) expect(delivered).toContain(`${type}:${i}`);

      // Shutdown while the path is black-holed again: bounded by the query, completer and close bounds.
      await produce(db.producerUrl, t, [{ type: 'bh.shutdown', payload: { i: 0 } }]);
      proxy.freeze();
      const started = Date.now();
      await daemon.stop();
      stopped = true;
      expect(Date.now() - started).toBeLessThan(45_000);
    } finally {
      proxy.heal();
      if (!stopped) await daemon.stop();
    }
    // Nothing lost: a fresh worker (directly connected) delivers whatever is left.
    const again = await startDaemon(db, { env: ENV, sinks: { test: sink } });
    try {
      await waitFor(async () => (await statusCounts(db)).done === 11, { timeoutMs: 60_000, what: 'all 11 events done' });
    } finally {
      await again.stop();
    }
  });
});

describe('heartbeat and watchdog', () => {
  it('is stalled only after its bound without progress, and never while idle', () => {
    let now = 0;
    let idle = false;
    const beat = new Heartbeat('loop', 1000, { now: () => now, idle: () => idle });
    const dog = new Watchdog();
    dog.add(beat);
    now = 1000;
    expect(dog.check().live).toBe(true);
    now = 1001;
    expect(dog.check()).toEqual({ live: false, stalled: [{ loop: 'loop', silentMs: 1001, boundMs: 1000 }] });
    beat.beat(false); // a failed round is not progress
    expect(dog.check().live).toBe(false);
    idle = true;
    expect(dog.check().live).toBe(true);
    idle = false;
    beat.beat();
    expect(dog.check().live).toBe(true);
  });

  it('bounds the claim loop by poll interval and query timeout', () => {
    expect(claimLoopBoundMs(1000, 16_500)).toBe(2 * (1200 + 16_500) + 5000);
  });
});
