import crypto from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DispatchAbortedError, PermanentDispatchError, RetryableDispatchError } from '../src/domain/dispatch-errors.ts';
import type { OutboxEvent } from '../src/domain/event.ts';
import { HttpSink, parseRetryAfter, signBody } from '../src/sinks/http-sink.ts';
import type { SinkContext } from '../src/sinks/types.ts';
import { startReceiver } from './support/http-receiver.ts';
import { freePort } from './support/ports.ts';

const event: OutboxEvent = {
  id: '0b9a2c1e-3f4d-4e5f-8a9b-0c1d2e3f4a5b',
  restaurantId: '11111111-1111-4111-8111-111111111111',
  eventType: 'booking.created',
  payload: { bookingId: 42, covers: 4 },
  createdAt: new Date('2026-11-22T10:00:00.123Z'),
  attempt: 2,
  dedupeKey: 'b-42',
  idempotencyKey: null,
  headers: {},
  orderingKey: null,
  sequence: null,
};

const ctx = (signal = new AbortController().signal): SinkContext => ({ signal, withTenant: () => Promise.reject(new Error('unused')) });

let receiver: Awaited<ReturnType<typeof startReceiver>>;
beforeAll(async () => {
  receiver = await startReceiver();
});
afterAll(async () => {
  await receiver.close();
});

function sink(opts: { timeoutMs?: number; secret?: string; url?: string } = {}) {
  return new HttpSink('hook', { type: 'http', url: opts.url ?? receiver.url, timeoutMs: opts.timeoutMs ?? 2000, headers: { 'x-team': 'ops' }, retryStatuses: [] }, opts.secret);
}

describe('HTTP sink', () => {
  it('POSTs the documented body and headers', async () => {
    receiver.setResponder(() => ({ status: 204 }));
    await sink().send(event, ctx());
    const got = receiver.received.at(-1)!;
    expect(got.json).toEqual({
      id: event.id,
      eventType: 'booking.created',
      restaurantId: event.restaurantId,
      payload: { bookingId: 42, covers: 4 },
      createdAt: '2026-11-22T10:00:00.123Z',
      attempt: 2,
    });
    expect(got.headers).toMatchObject({
      'content-type': 'application/json',
      'idempotency-key': event.id,
      'x-outbox-event-type': 'booking.created',
      'x-restaurant-id': event.restaurantId,
      'x-outbox-attempt': '2',
      'x-team': 'ops',
    });
    expect(got.headers['x-outbox-signature']).toBeUndefined();
  });

  it('signs the body with HMAC-SHA256 over "<timestamp>.<body>" when a secret is configured', async () => {
    receiver.setResponder(() => ({ status: 200 }));
    await sink({ secret: 's3cret' }).send(event, ctx());
    const got = receiver.received.at(-1)!;
    const ts = got.headers['x-outbox-timestamp'] as string;
    expect(Math.abs(Number(ts) - Date.now() / 1000)).toBeLessThan(10);
    const expected = `sha256=${crypto.createHmac('sha256', 's3cret').update(`${ts}.${got.body}`).digest('hex')}`;
    expect(got.headers['x-outbox-signature']).toBe(expected);
    expect(signBody('s3cret', ts, got.body)).toBe(expected);
  });

  it.each([200, 201, 202, 204, 299])('treats %i as delivered', async (status) => {
    receiver.setResponder(() => ({ status }));
    await expect(sink().send(event, ctx())).resolves.toBeUndefined();
  });

  it.each([408, 429, 500, 502, 503, 504])('retries %i', async (status) => {
    receiver.setResponder(() => ({ status, body: 'nope' }));
    const err = await sink().send(event, ctx()).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(RetryableDispatchError);
    expect((err as Error).message).toBe(`HTTP ${status}: nope`);
  });

  it.each([301, 302, 400, 401, 403, 404, 409, 410, 422])('dead-letters %i as permanent', async (status) => {
    receiver.setResponder(() => ({ status, headers: status < 400 ? { location: 'http://elsewhere/' } : ({} as Record<string, string>) }));
    const err = await sink().send(event, ctx()).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PermanentDispatchError);
  });

  it.each([401, 403, 404, 409])('retries %i when the route lists it in retryStatuses', async (status) => {
    receiver.setResponder(() => ({ status, body: 'not yet' }));
    const lenient = new HttpSink('hook', { type: 'http', url: receiver.url, timeoutMs: 2000, headers: {}, retryStatuses: [401, 403, 404, 409] }, undefined);
    try {
      const err = await lenient.send(event, ctx()).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(RetryableDispatchError);
      expect((err as Error).message).toBe(`HTTP ${status}: not yet`);
      receiver.setResponder(() => ({ status: 422 }));
      expect(await lenient.send(event, ctx()).catch((e: unknown) => e)).toBeInstanceOf(PermanentDispatchError);
    } finally {
      await lenient.close();
    }
  });

  it('passes Retry-After (seconds or HTTP date) on to the retry policy', async () => {
    receiver.setResponder(() => ({ status: 429, headers: { 'retry-after': '30' } }));
    const err = (await sink().send(event, ctx()).catch((e: unknown) => e)) as RetryableDispatchError;
    expect(err.retryAfterMs).toBe(30_000);
    const now = Date.parse('2026-11-22T10:00:00Z');
    expect(parseRetryAfter('Sun, 22 Nov 2026 10:01:00 GMT', now)).toBe(60_000);
    expect(parseRetryAfter('soon', now)).toBeUndefined();
    expect(parseRetryAfter(null, now)).toBeUndefined();
  });

  it('retries a timeout', async () => {
    receiver.setResponder(() => ({ status: 200, delayMs: 1000 }));
    const err = await sink({ timeoutMs: 100 }).send(event, ctx()).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(RetryableDispatchError);
    expect((err as Error).message).toBe('timeout after 100 ms');
  });

  it('retries a refused connection', async () => {
    const port = await freePort();
    const err = await sink({ url: `http://127.0.0.1:${port}/x` }).send(event, ctx()).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(RetryableDispatchError);
    expect((err as Error).message).toMatch(/network error: ECONNREFUSED/);
  });

  it('reports an abort by shutdown as such (the event is released, not retried)', async () => {
    receiver.setResponder(() => ({ status: 200, delayMs: 2000 }));
    const ac = new AbortController();
    const p = sink().send(event, ctx(ac.signal));
    setTimeout(() => ac.abort(), 50);
    await expect(p).rejects.toBeInstanceOf(DispatchAbortedError);
  });
});
