import { describe, expect } from 'vitest';
import { CircuitBreaker, sendResultOf, type CircuitState } from '../src/dispatch/circuit-breaker.ts';
import { DispatchAbortedError, PermanentDispatchError, RetryableDispatchError } from '../src/domain/dispatch-errors.ts';
import { isExhausted, outcomeForFailure } from '../src/dispatch/retry-policy.ts';
import { loadEnvConfig } from '../src/config/env.ts';
import { produce, tenantId, waitFor } from './support/db.ts';
import { startDaemon } from './support/daemon.ts';
import { startReceiver } from './support/http-receiver.ts';
import { metricTotal } from './support/metrics.ts';
import { it } from './support/fixtures.ts';

// "Sink outages must not turn into dead letters" (issue 10): a per-sink circuit breaker
// holds events without spending attempts, and a retry horizon in time keeps the attempt
// limit from dead-lettering events during an ordinary outage (ADR 0007).

function clock(start = 1_000_000) {
  let now = start;
  return { now: () => now, advance: (ms: number) => (now += ms) };
}

describe('circuit breaker', () => {
  const settings = { failureThreshold: 3, failureRatio: 0.9, windowMs: 10_000, openMs: 1000, halfOpenProbes: 1 };
  const make = (over: Partial<typeof settings> = {}) => {
    const c = clock();
    const changes: CircuitState[] = [];
    const b = new CircuitBreaker('hook', { ...settings, ...over }, { now: c.now, random: () => 0.5, onChange: (s) => changes.push(s) });
    return { b, c, changes };
  };
  const fail = (b: CircuitBreaker, retryAfterMs?: number) => {
    const a = b.admit();
    if (!a.send) throw new Error('expected a send');
    b.record({ ok: false, retryAfterMs }, a.probe);
  };

  it('opens when the window holds enough failures and almost nothing else', () => {
    const { b, changes } = make();
    fail(b);
    fail(b);
    expect(b.state).toBe('closed');
    fail(b);
    expect(b.state).toBe('open');
    expect(changes).toEqual(['open']);
  });

  it('stays closed for a flaky sink that still delivers, and forgets failures older than the window', () => {
    const { b, c } = make();
    for (let i = 0; i < 50; i++) {
      fail(b);
      b.record({ ok: true }, false);
    }
    expect(b.state).toBe('closed');
    c.advance(11_000); // the window slides past all of that
    fail(b);
    fail(b);
    c.advance(11_000);
    fail(b);
    expect(b.state).toBe('closed');
    // A sink that was healthy and goes down opens once its successes leave the window.
    for (let i = 0; i < 20; i++) b.record({ ok: true }, false);
    for (let i = 0; i < 20; i++) fail(b);
    expect(b.state).toBe('closed'); // 20 of 40 in the window
    c.advance(6000);
    for (let i = 0; i < 20 && b.state === 'closed'; i++) fail(b);
    expect(b.state).toBe('closed'); // buckets of the successes are still in the window
    c.advance(5000);
    fail(b);
    expect(b.state).toBe('open');
  });

  it('holds sends while open, spread over one open interval after the probe time', () => {
    const { b, c } = make();
    for (let i = 0; i < 3; i++) fail(b);
    expect(b.admit()).toEqual({ send: false, retryInMs: 1000 + 500 });
    c.advance(400);
    expect(b.admit()).toEqual({ send: false, retryInMs: 600 + 500 });
  });

  it('half-open admits only the probes; a failed probe re-opens, a successful one closes', () => {
    const { b, c, changes } = make({ halfOpenProbes: 2 });
    for (let i = 0; i < 3; i++) fail(b);
    c.advance(1000);
    const p1 = b.admit();
    const p2 = b.admit();
    expect(p1).toEqual({ send: true, probe: true });
    expect(p2).toEqual({ send: true, probe: true });
    expect(b.admit()).toMatchObject({ send: false });
    expect(b.state).toBe('half_open');
    b.record({ ok: false }, true);
    expect(b.state).toBe('open');
    b.record({ ok: true }, true); // the other probe, finishing late, proves nothing once re-opened
    expect(b.state).toBe('open');
    c.advance(1000);
    const p3 = b.admit();
    expect(p3).toEqual({ send: true, probe: true });
    b.record({ ok: true }, true);
    expect(b.state).toBe('closed');
    expect(b.admit()).toEqual({ send: true, probe: false });
    expect(changes).toEqual(['open', 'half_open', 'open', 'half_open', 'closed']);
  });

  it('reads half-open once the open period has ended, before any send tries it', () => {
    const { b, c, changes } = make();
    for (let i = 0; i < 3; i++) fail(b);
    c.advance(999);
    expect(b.state).toBe('open');
    c.advance(1);
    expect(b.state).toBe('half_open');
    expect(changes).toEqual(['open', 'half_open']);
    expect(b.admit()).toEqual({ send: true, probe: true });
  });

  it('stays open at least as long as a Retry-After asks; aborted sends do not count, event-level rejections count as answers', () => {
    const answered = make().b;
    answered.record({ ok: true }, false); // e.g. HTTP 400: the sink answered
    for (let i = 0; i < 3; i++) fail(answered);
    expect(answered.state).toBe('closed'); // 3 failures of 4 results: below 90 %
    const { b, c } = make();
    for (let i = 0; i < 5; i++) b.record({ aborted: true }, false);
    fail(b);
    fail(b);
    fail(b, 5000);
    expect(b.state).toBe('open');
    c.advance(4000);
    expect(b.admit()).toMatchObject({ send: false });
    c.advance(1000);
    expect(b.admit()).toEqual({ send: true, probe: true });
  });

  it('classifies failures: shutdown aborts are neutral, permanent rejections prove the sink answers, the rest count', () => {
    expect(sendResultOf(new DispatchAbortedError('x'))).toEqual({ aborted: true });
    expect(sendResultOf(new PermanentDispatchError('HTTP 400'))).toEqual({ ok: true });
    expect(sendResultOf(new RetryableDispatchError('HTTP 429', { retryAfterMs: 2000 }))).toEqual({ ok: false, retryAfterMs: 2000 });
    expect(sendResultOf(new Error('socket hang up'))).toEqual({ ok: false, retryAfterMs: undefined });
  });

  it('frees a probe slot whose send never reported back (after its timeout plus one interval)', () => {
    const c = clock();
    const b = new CircuitBreaker('hook', settings, { now: c.now, random: () => 0.5, sendTimeoutMs: 2000 });
    for (let i = 0; i < 3; i++) fail(b);
    c.advance(1000);
    expect(b.admit()).toEqual({ send: true, probe: true }); // ...and it hangs
    c.advance(2999);
    expect(b.admit()).toMatchObject({ send: false });
    c.advance(2);
    expect(b.admit()).toEqual({ send: true, probe: true });
  });

  it('is off with a threshold of 0', () => {
    const { b } = make({ failureThreshold: 0 });
    for (let i = 0; i < 100; i++) fail(b);
    expect(b.state).toBe('closed');
  });
});

describe('retry horizon', () => {
  const policy = { maxAttempts: 10, backoffBaseMs: 1000, backoffMaxMs: 300_000, retryHorizonMs: 86_400_000 };

  it('dead-letters as exhausted only when both the attempts and the time are spent', () => {
    expect(isExhausted({ attempt: 10, ageMs: 3_600_000 }, policy)).toBe(false);
    expect(isExhausted({ attempt: 3, ageMs: 100_000_000 }, policy)).toBe(false);
    expect(isExhausted({ attempt: 10, ageMs: 86_400_000 }, policy)).toBe(true);
    const dead = outcomeForFailure(new RetryableDispatchError('HTTP 503'), { attempt: 290, ageMs: 90_000_000 }, policy);
    expect(dead).toEqual({ kind: 'dead', reason: 'exhausted', error: 'exhausted 290/10 attempts over 25.0 h (retry horizon 24.0 h): HTTP 503' });
    expect(outcomeForFailure(new RetryableDispatchError('HTTP 503'), { attempt: 50, ageMs: 3_600_000 }, policy, () => 0.5)).toEqual({ kind: 'retry', delayMs: 150_000, error: 'HTTP 503' });
  });

  it('with the defaults a ten-minute outage of fast failures dead-letters nothing (repro 12)', () => {
    const d = loadEnvConfig({}).dispatch;
    // Without the breaker (worst case), an event retried back to back from its commit.
    for (let run = 0; run < 2000; run++) {
      let t = 0;
      for (let attempt = 1; t < 600_000; attempt++) {
        const o = outcomeForFailure(new RetryableDispatchError('HTTP 503'), { attempt, ageMs: t }, d);
        expect(o.kind).toBe('retry');
        t += (o as { delayMs: number }).delayMs + 5;
      }
    }
  });
});

describe('a sink outage through the daemon (black box)', () => {
  it('503 for a while: nothing dead, few attempts per event, all delivered after recovery, the other sink unaffected', async ({ fileDb: db }) => {
    let down = true;
    const flaky = await startReceiver(() => (down ? { status: 503, body: 'deploying' } : { status: 200 }));
    const healthy = await startReceiver(() => ({ status: 200 }));
    const daemon = await startDaemon(db, {
      routes: {
        routes: [
          { match: 'orders.*', sink: { type: 'http', name: 'orders', url: flaky.url, timeoutMs: 2000 } },
          { match: 'audit.*', sink: { type: 'http', name: 'audit', url: healthy.url, timeoutMs: 2000 } },
        ],
      },
      // Compressed: without breaker and horizon, 3 attempts 50-400 ms apart dead-letter within a second.
      env: {
        OUTBOX_MAX_ATTEMPTS: '3',
        OUTBOX_BACKOFF_BASE_MS: '50',
        OUTBOX_BACKOFF_MAX_MS: '400',
        OUTBOX_RETRY_HORIZON_MS: '120000',
        OUTBOX_CIRCUIT_FAILURE_THRESHOLD: '5',
        OUTBOX_CIRCUIT_OPEN_MS: '500',
        OUTBOX_CONCURRENCY: '4',
      },
    });
    const t = tenantId();
    try {
      const orders = await produce(db.producerUrl, t, Array.from({ length: 40 }, (_, i) => ({ type: 'orders.placed', payload: { i } })));
      await waitFor(async () => (await daemon.metrics.circuitState.get()).values.find((v) => v.labels.sink === 'orders')?.value === 2, { what: 'circuit open' });
      // While the orders sink is down, the audit sink keeps delivering.
      const audit: string[] = [];
      const outageStart = Date.now();
      while (Date.now() - outageStart < 6000) {
        audit.push(...(await produce(db.producerUrl, t, [{ type: 'audit.logged' }])));
        await new Promise((r) => setTimeout(r, 300));
      }
      await waitFor(async () => (await db.query("SELECT count(*)::int AS n FROM capacity_outbox WHERE id = ANY($1) AND status = 'done'", [audit])).rows[0].n === audit.length, {
        what: 'audit events delivered during the outage',
      });
      expect(down).toBe(true);
      const during = await db.query("SELECT status, count(*)::int AS n, max(attempts) AS max FROM capacity_outbox WHERE id = ANY($1) GROUP BY 1", [orders]);
      expect(during.rows.find((r) => r.status === 'dead')).toBeUndefined();
      expect(during.rows.find((r) => r.status === 'done')).toBeUndefined();
      expect(await metricTotal(daemon.metrics.eventsReleased, { reason: 'circuit_open' })).toBeGreaterThan(0);

      down = false;
      await waitFor(async () => (await db.query("SELECT count(*)::int AS n FROM capacity_outbox WHERE id = ANY($1) AND status = 'done'", [orders])).rows[0].n === orders.length, {
        what: 'orders delivered after recovery',
        timeoutMs: 30_000,
      });
      const attemptsPerEvent = new Map<string, number>();
      for (const r of flaky.received) attemptsPerEvent.set(r.json.id, (attemptsPerEvent.get(r.json.id) ?? 0) + 1);
      const worst = Math.max(...attemptsPerEvent.values());
      // Without the breaker each event would have been sent every ~50-400 ms for 6+ s.
      expect(worst).toBeLessThanOrEqual(6);
      expect(flaky.received.length).toBeLessThan(orders.length * 4);
      const final = await db.query('SELECT max(attempts) AS max, count(*) FILTER (WHERE status = $2)::int AS dead FROM capacity_outbox WHERE id = ANY($1)', [orders, 'dead']);
      expect(final.rows[0].dead).toBe(0);
      // The stored attempt count is what the receiver saw: held events did not spend attempts.
      expect(final.rows[0].max).toBe(worst);
      await waitFor(async () => (await daemon.metrics.circuitState.get()).values.find((v) => v.labels.sink === 'orders')?.value === 0, { what: 'circuit closed' });
      expect((await daemon.metrics.circuitState.get()).values.find((v) => v.labels.sink === 'audit')?.value).toBe(0);
      expect(await metricTotal(daemon.metrics.deadLettered)).toBe(0);
    } finally {
      await daemon.stop();
      await flaky.close();
      await healthy.close();
    }
  }, 60_000);

  it('429 with Retry-After: no event is sent again before the sink asked, and none is dead-lettered', async ({ fileDb: db }) => {
    let limited = true;
    const receiver = await startReceiver(() => (limited ? { status: 429, headers: { 'retry-after': '2' } } : { status: 200 }));
    const daemon = await startDaemon(db, {
      routes: { routes: [{ match: 'rate.*', sink: { type: 'http', name: 'rate', url: receiver.url, timeoutMs: 2000 } }] },
      env: { OUTBOX_MAX_ATTEMPTS: '2', OUTBOX_BACKOFF_BASE_MS: '50', OUTBOX_BACKOFF_MAX_MS: '200', OUTBOX_RETRY_HORIZON_MS: '120000', OUTBOX_CIRCUIT_OPEN_MS: '300' },
    });
    const t = tenantId();
    try {
      const ids = await produce(db.producerUrl, t, Array.from({ length: 10 }, (_, i) => ({ type: 'rate.limited', payload: { i } })));
      await waitFor(() => receiver.received.length >= 12, { what: 'a few rounds of 429', timeoutMs: 30_000 });
      limited = false;
      await waitFor(async () => (await db.query("SELECT count(*)::int AS n FROM capacity_outbox WHERE id = ANY($1) AND status = 'done'", [ids])).rows[0].n === ids.length, {
        timeoutMs: 30_000,
      });
      const byEvent = new Map<string, number[]>();
      for (const r of receiver.received) byEvent.set(r.json.id, [...(byEvent.get(r.json.id) ?? []), r.at]);
      for (const times of byEvent.values()) {
        for (let i = 1; i < times.length; i++) expect(times[i]! - times[i - 1]!).toBeGreaterThanOrEqual(1900);
      }
      // The breaker held the whole sink for the Retry-After, not only the event that got it.
      const sorted = receiver.received.map((r) => r.at).sort((a, b) => a - b);
      const bursts = sorted.filter((at, i) => i > 0 && at - sorted[i - 1]! >= 1500).length;
      expect(bursts).toBeGreaterThanOrEqual(1);
      expect(await metricTotal(daemon.metrics.deadLettered)).toBe(0);
    } finally {
      await daemon.stop();
      await receiver.close();
    }
  }, 60_000);
});
