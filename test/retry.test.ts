import { afterAll, beforeAll, describe, expect } from 'vitest';
import { PermanentDispatchError, RetryableDispatchError, DispatchAbortedError } from '../src/domain/dispatch-errors.ts';
import { maxTimeoutForLease } from '../src/config/lease.ts';
import { backoffDelayMs, outcomeForFailure, RETRY_AFTER_CEILING_MS } from '../src/dispatch/retry-policy.ts';
import { produce, tenantId, waitFor } from './support/db.ts';
import { recordingSink, startDaemon } from './support/daemon.ts';
import { startReceiver } from './support/http-receiver.ts';
import { it } from './support/fixtures.ts';

const policy = { maxAttempts: 5, backoffBaseMs: 1000, backoffMaxMs: 60_000, retryHorizonMs: 0 };

describe('retry policy', () => {
  it('uses exponential backoff with full jitter, capped', () => {
    expect(backoffDelayMs(1, policy, () => 0.999999)).toBe(999);
    expect(backoffDelayMs(3, policy, () => 0.999999)).toBe(3999);
    expect(backoffDelayMs(3, policy, () => 0)).toBe(0);
    expect(backoffDelayMs(30, policy, () => 0.999999)).toBe(59_999);
    expect(backoffDelayMs(10_000, policy, () => 0.5)).toBe(30_000);
  });

  it('maps failures to retry, dead (permanent or exhausted) and release (shutdown)', () => {
    expect(outcomeForFailure(new RetryableDispatchError('HTTP 503'), { attempt: 1, ageMs: 0 }, policy, () => 0.5)).toEqual({ kind: 'retry', delayMs: 500, error: 'HTTP 503' });
    expect(outcomeForFailure(new Error('boom'), { attempt: 5, ageMs: 0 }, policy)).toEqual({ kind: 'dead', error: 'exhausted 5/5 attempts: boom', reason: 'exhausted' });
    expect(outcomeForFailure(new PermanentDispatchError('HTTP 400'), { attempt: 1, ageMs: 0 }, policy)).toEqual({ kind: 'dead', error: 'permanent: HTTP 400', reason: 'permanent' });
    expect(outcomeForFailure(new DispatchAbortedError('x'), { attempt: 1, ageMs: 0 }, policy)).toEqual({ kind: 'release' });
  });

  it('honours Retry-After when longer than the backoff, within a ceiling', () => {
    expect(outcomeForFailure(new RetryableDispatchError('429', { retryAfterMs: 120_000 }), { attempt: 1, ageMs: 0 }, policy, () => 0.5)).toMatchObject({ delayMs: 120_000 });
    expect(outcomeForFailure(new RetryableDispatchError('429', { retryAfterMs: 10 }), { attempt: 1, ageMs: 0 }, policy, () => 0.5)).toMatchObject({ delayMs: 500 });
    expect(outcomeForFailure(new RetryableDispatchError('429', { retryAfterMs: 1e12 }), { attempt: 1, ageMs: 0 }, policy, () => 0)).toMatchObject({ delayMs: RETRY_AFTER_CEILING_MS });
  });
});

describe('retry, dead-lettering and bad input in the running dispatcher', () => {
  let receiver: Awaited<ReturnType<typeof startReceiver>>;
  beforeAll(async () => {
    receiver = await startReceiver();
  });
  afterAll(async () => {
    await receiver.close();
  });

  const httpRoutes = () => ({ routes: [{ match: 'hook.*', sink: { type: 'http' as const, url: receiver.url, timeoutMs: 2000 } }, { match: 'ok.*', sink: { type: 'noop' as const, name: 'test' } }] });

  it('retries on 503 with a growing schedule, then dead-letters with last_error after max attempts', async ({ fileDb: db }) => {
    receiver.setResponder(() => ({ status: 503, body: 'try later' }));
    const t = tenantId();
    const [id] = await produce(db.producerUrl, t, [{ type: 'hook.fail' }]);
    const daemon = await startDaemon(db, { routes: httpRoutes(), env: { OUTBOX_MAX_ATTEMPTS: '4', OUTBOX_RETRY_HORIZON_MS: '0', OUTBOX_BACKOFF_BASE_MS: '100', OUTBOX_BACKOFF_MAX_MS: '300' } });
    try {
      const row = await waitFor(async () => (await db.query("SELECT * FROM capacity_outbox WHERE id = $1 AND status = 'dead'", [id])).rows[0], { what: 'dead letter' });
      expect(row.attempts).toBe(4);
      expect(row.last_error).toBe('exhausted 4/4 attempts: HTTP 503: try later');
      expect(row.locked_by).toBeNull();
      const attempts = receiver.received.filter((r) => r.json?.id === id).map((r) => r.json.attempt);
      expect(attempts).toEqual([1, 2, 3, 4]);
      // Dead letters release their dedupe key and wait for a replay; the worker carries on.
      expect(daemon.dispatcher.state).toBe('running');
    } finally {
      await daemon.stop();
    }
  });

  it('schedules the next attempt per backoff and honours Retry-After', async ({ fileDb: db }) => {
    receiver.setResponder(() => ({ status: 429, headers: { 'retry-after': '120' } }));
    const [id] = await produce(db.producerUrl, tenantId(), [{ type: 'hook.slow' }]);
    const daemon = await startDaemon(db, { routes: httpRoutes() });
    try {
      const row = await waitFor(async () => (await db.query("SELECT *, extract(epoch FROM next_attempt_at - now()) AS wait FROM capacity_outbox WHERE id = $1 AND status = 'pending' AND attempts = 1", [id])).rows[0]);
      expect(Number(row.wait)).toBeGreaterThan(110);
      expect(Number(row.wait)).toBeLessThanOrEqual(120);
      expect(row.last_error).toBe('HTTP 429');
    } finally {
      await daemon.stop();
    }
  });

  it('delivers through a sink whose timeout is the longest the lease allows (repro 03: no claim/release livelock)', async ({ fileDb: db }) => {
    receiver.setResponder(() => ({ status: 200 }));
    const [id] = await produce(db.producerUrl, tenantId(), [{ type: 'hook.tight' }]);
    const routes = { routes: [{ match: 'hook.*', sink: { type: 'http' as const, url: receiver.url, timeoutMs: maxTimeoutForLease(10_000) } }] };
    const daemon = await startDaemon(db, { routes, env: { OUTBOX_LEASE_MS: '10000' } });
    try {
      const row = await waitFor(async () => (await db.query("SELECT * FROM capacity_outbox WHERE id = $1 AND status = 'done'", [id])).rows[0], { what: 'delivered' });
      expect(row.attempts).toBe(1);
    } finally {
      await daemon.stop();
    }
  });

  it('dead-letters a permanent 4xx at once', async ({ fileDb: db }) => {
    receiver.setResponder(() => ({ status: 422, body: '{"error":"unknown booking"}' }));
    const [id] = await produce(db.producerUrl, tenantId(), [{ type: 'hook.bad' }]);
    const daemon = await startDaemon(db, { routes: httpRoutes() });
    try {
      const row = await waitFor(async () => (await db.query("SELECT * FROM capacity_outbox WHERE id = $1 AND status = 'dead'", [id])).rows[0]);
      expect(row.attempts).toBe(1);
      expect(row.last_error).toBe('permanent: HTTP 422: {"error":"unknown booking"}');
    } finally {
      await daemon.stop();
    }
  });

  it('dead-letters unrouted and malformed events with a reason and keeps dispatching the rest', async ({ fileDb: db }) => {
    const t = tenantId();
    // Written as the owner: the producer contract cannot express these, a buggy writer could.
    await db.query(
      `INSERT INTO capacity_outbox (restaurant_id, event_type, payload) VALUES
         ($1, 'nobody.listens', '{}'), ($1, 'ok.array', '[1,2]'), ($1, 'ok.scalar', '"text"'),
         ($1, 'bad type; DROP TABLE x', '{}'), ($1, 'ok.big', $2::jsonb), ($1, 'ok.fine', '{"a":1}')`,
      [t, JSON.stringify({ blob: 'x'.repeat(5000) })],
    );
    const sink = recordingSink();
    const daemon = await startDaemon(db, { routes: httpRoutes(), sinks: { test: sink }, env: { OUTBOX_MAX_PAYLOAD_BYTES: '4096' } });
    try {
      await waitFor(async () => (await db.query("SELECT 1 FROM capacity_outbox WHERE restaurant_id = $1 AND status IN ('pending','processing')", [t])).rowCount === 0);
      const { rows } = await db.query('SELECT event_type, status, last_error FROM capacity_outbox WHERE restaurant_id = $1 ORDER BY event_type', [t]);
      const byType = Object.fromEntries(rows.map((r) => [r.event_type, r]));
      expect(byType['nobody.listens']).toMatchObject({ status: 'dead', last_error: 'unrouted: no route in OUTBOX_ROUTES matches event type nobody.listens' });
      expect(byType['ok.array']).toMatchObject({ status: 'dead', last_error: 'malformed: payload must be a JSON object, got array' });
      expect(byType['ok.scalar']).toMatchObject({ status: 'dead', last_error: 'malformed: payload must be a JSON object, got string' });
      expect(byType['bad type; DROP TABLE x'].last_error).toMatch(/^malformed: event_type/);
      expect(byType['ok.big'].last_error).toMatch(/^malformed: payload is \d+ bytes, over OUTBOX_MAX_PAYLOAD_BYTES \(4096\)/);
      expect(byType['ok.fine']).toMatchObject({ status: 'done', last_error: null });
      expect(sink.calls.map((c) => c.event.eventType)).toEqual(['ok.fine']);
      expect(daemon.dispatcher.state).toBe('running');
    } finally {
      await daemon.stop();
    }
  });
});
