import pg from 'pg';
import { describe, expect } from 'vitest';
import { preflight } from '../src/db/preflight.ts';
import { EXIT, StartupError } from '../src/kernel/exit-codes.ts';
import { createLogger } from '../src/kernel/log.ts';
import { runCli, startWorkerProcess } from './support/cli.ts';
import { produce, statusCounts, tenantId, waitFor } from './support/db.ts';
import { startReceiver } from './support/http-receiver.ts';
import { freePort } from './support/ports.ts';
import { it } from './support/fixtures.ts';

// What the tenancy, privilege and configuration tests do not already cover: BYPASSRLS logins,
// injection through event data, and secrets staying out of logs, errors and /metrics.

describe('security', () => {
  it('refuses a BYPASSRLS login role (exit 77), like a superuser', async ({ fileDb: db }) => {
    const role = `outbox_bypass_${process.pid}`;
    await db.query(`CREATE ROLE ${role} LOGIN BYPASSRLS PASSWORD 'x' IN ROLE app_background`);
    try {
      const url = new URL(db.workerUrl);
      url.username = role;
      url.password = 'x';
      const err = await preflight(url.toString(), { allowPrivilegedRole: false, log: createLogger('silent') }).catch((e: unknown) => e);
      expect((err as StartupError).exitCode).toBe(EXIT.PRIVILEGED_ROLE);
      expect((err as Error).message).toMatch(/refusing to run as a BYPASSRLS role/);
    } finally {
      await db.query(`DROP ROLE ${role}`);
    }
  });

  it('treats hostile event types, keys and payloads as data: stored literally, dead-lettered when malformed, nothing executed', async ({ fileDb: db }) => {
    const t = tenantId();
    const hostile = "x'); DROP TABLE capacity_outbox; --";
    const ids = await produce(db.producerUrl, t, [
      { type: hostile, dedupeKey: hostile, idempotencyKey: "'; SELECT pg_sleep(10); --", payload: { note: hostile } },
      { type: 'booking.created', dedupeKey: "k' OR '1'='1", payload: { $where: 'sleep(1000)' } },
    ]);
    expect(ids).toHaveLength(2);
    const r = await runCli(['events', 'stats', '--json', '--tenant', t], { DATABASE_URL: db.workerUrl, LOG_LEVEL: 'warn' });
    expect(r.code, r.stderr).toBe(0);
    const { rows } = await db.query('SELECT event_type, dedupe_key FROM capacity_outbox WHERE restaurant_id = $1 ORDER BY event_type', [t]);
    expect(rows).toEqual([
      { event_type: 'booking.created', dedupe_key: "k' OR '1'='1" },
      { event_type: hostile, dedupe_key: hostile },
    ]);
    expect((await db.query(`SELECT to_regclass('public.capacity_outbox') IS NOT NULL AS ok`)).rows[0].ok).toBe(true);
  });

  it('never writes the database password or the HMAC secret to logs, errors or /metrics', async ({ fileDb: db }) => {
    const secret = 'hmac-s3cr3t-value-0123456789';
    const receiver = await startReceiver(() => ({ status: 500, body: 'nope' }));
    const port = await freePort();
    const worker = startWorkerProcess({
      DATABASE_URL: db.workerUrl,
      OUTBOX_ROUTES: JSON.stringify({ routes: [{ match: '*', sink: { type: 'http', url: receiver.url, hmacSecretEnv: 'HOOK_SECRET' } }] }),
      HOOK_SECRET: secret,
      METRICS_PORT: String(port),
      LOG_LEVEL: 'trace',
      OUTBOX_BACKOFF_BASE_MS: '50',
      OUTBOX_BACKOFF_MAX_MS: '100',
      OUTBOX_MAX_ATTEMPTS: '2',
      OUTBOX_RETRY_HORIZON_MS: '0',
    });
    try {
      await worker.waitForLog((l) => l.msg === 'outbox dispatcher running');
      await produce(db.producerUrl, tenantId(), [{ type: 'secret.test', payload: { card: '4111111111111111' } }]);
      await waitFor(async () => (await statusCounts(db)).dead >= 1);
      const metrics = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
      const password = new URL(db.workerUrl).password;
      for (const leak of [secret, password]) {
        expect(worker.output()).not.toContain(leak);
        expect(metrics).not.toContain(leak);
      }
      // Payload bodies are never logged either, even at trace level.
      expect(worker.output()).not.toContain('4111111111111111');
      expect(receiver.received[0]!.headers['x-outbox-signature']).toMatch(/^sha256=[0-9a-f]{64}$/);
    } finally {
      worker.child.kill('SIGTERM');
      await worker.exited;
      await receiver.close();
    }
  });
});
