import crypto from 'node:crypto';
import amqp from 'amqplib';
import { jetstreamManager } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkHeaders, forwardedHeaders, validTraceparent } from '../src/dispatch/headers.ts';
import { runCli } from './support/cli.ts';
import { startDaemon } from './support/daemon.ts';
import { createTestDatabase, produce, tenantId, waitFor, type TestDatabase } from './support/db.ts';
import { startReceiver } from './support/http-receiver.ts';

// The producer's headers column, end to end: validated by the dispatcher, W3C trace context
// forwarded on every sink, everything else namespaced so it cannot override a sink's headers.

const NATS = process.env.TEST_NATS_URL ?? 'nats://127.0.0.1:4222';
const AMQP = process.env.TEST_AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672';
const traceparent = () => `00-${crypto.randomBytes(16).toString('hex')}-${crypto.randomBytes(8).toString('hex')}-01`;

describe('header rules', () => {
  it('accepts W3C traceparent version 00 and future versions, rejects the rest', () => {
    const tp = traceparent();
    expect(validTraceparent(tp)).toBe(true);
    expect(validTraceparent(`cc-${tp.slice(3)}-what-comes-later`)).toBe(true);
    for (const bad of [
      'nonsense',
      `${tp}-extra`, // version 00 has exactly four fields
      `ff-${tp.slice(3)}`,
      tp.toUpperCase(),
      `00-${'0'.repeat(32)}-${tp.slice(36)}`,
      `${tp.slice(0, 36)}${'0'.repeat(16)}-01`,
    ]) {
      expect(validTraceparent(bad), bad).toBe(false);
    }
  });

  it('forwards trace context as is and everything else under x-outbox-header-; drops tracestate with an invalid traceparent', () => {
    const tp = traceparent();
    expect(forwardedHeaders({ traceparent: tp, tracestate: 'a=b', 'content-type': 'text/plain' })).toEqual({
      traceparent: tp,
      tracestate: 'a=b',
      'x-outbox-header-content-type': 'text/plain',
    });
    expect(forwardedHeaders({ traceparent: 'bogus', tracestate: 'a=b' })).toEqual({});
  });

  it('rejects what is not an object of printable strings within the limits', () => {
    expect(checkHeaders(null, undefined)).toEqual({ ok: true, headers: {} });
    expect(checkHeaders({ TraceParent: 'x' }, undefined)).toEqual({ ok: true, headers: { traceparent: 'x' } });
    for (const [raw, why] of [
      [[1], /JSON object/],
      ['s', /JSON object/],
      [{ a: 1 }, /must be a string/],
      [{ a: 'line\r\nInjected: 1' }, /printable/],
      [{ 'bad name': 'x' }, /header name/],
      [{ A: 'x', a: 'y' }, /twice/],
      [Object.fromEntries(Array.from({ length: 33 }, (_, i) => [`h${i}`, 'x'])), /over 32/],
      [{ big: 'x'.repeat(4097) }, /printable characters \(max 4096\)/],
      [Object.fromEntries(Array.from({ length: 3 }, (_, i) => [`h${i}`, 'x'.repeat(4000)])), /bytes, over 8192/],
    ] as const) {
      const r = checkHeaders(raw, undefined);
      expect(r.ok, JSON.stringify(raw).slice(0, 60)).toBe(false);
      expect((r as { reason: string }).reason).toMatch(why);
    }
  });
});

describe('through the daemon', () => {
  let db: TestDatabase;
  let receiver: Awaited<ReturnType<typeof startReceiver>>;
  const prefix = `outbox_hdr_${crypto.randomBytes(4).toString('hex')}`;
  let amqpConn: amqp.ChannelModel;
  let ch: amqp.Channel;

  beforeAll(async () => {
    db = await createTestDatabase();
    receiver = await startReceiver();
    const nc = await connect({ servers: NATS });
    await (await jetstreamManager(nc)).streams.add({ name: prefix.toUpperCase(), subjects: [`${prefix}.>`] });
    await nc.close();
    amqpConn = await amqp.connect(AMQP);
    ch = await amqpConn.createChannel();
    await ch.assertExchange(prefix, 'topic', { durable: false });
    await ch.assertQueue(`${prefix}_q`, { durable: false });
    await ch.bindQueue(`${prefix}_q`, prefix, '#');
  });
  afterAll(async () => {
    await ch?.deleteQueue(`${prefix}_q`).catch(() => undefined);
    await ch?.deleteExchange(prefix).catch(() => undefined);
    await amqpConn?.close().catch(() => undefined);
    const nc = await connect({ servers: NATS });
    await (await jetstreamManager(nc)).streams.delete(prefix.toUpperCase()).catch(() => undefined);
    await nc.close();
    await receiver?.close();
    await db?.drop();
  });

  const routes = () => ({
    routes: [
      { match: 'trace.nats', sink: { type: 'nats' as const, name: 'nats', servers: NATS, subject: `${prefix}.{eventType}` } },
      { match: 'trace.rabbit', sink: { type: 'rabbitmq' as const, name: 'rabbit', url: AMQP, exchange: prefix, routingKey: '{eventType}' } },
      { match: '*', sink: { type: 'http' as const, name: 'http', url: receiver.url, headers: { 'x-route': 'route-value' } } },
    ],
  });

  it('forwards trace context on HTTP across a retry, and cannot override the sink’s or the route’s headers', async () => {
    const tp = traceparent();
    let calls = 0;
    receiver.setResponder(() => ({ status: ++calls === 1 ? 503 : 200 }));
    const daemon = await startDaemon(db, { routes: routes() });
    try {
      const [id] = await produce(db.producerUrl, tenantId(), [
        {
          type: 'trace.http',
          headers: {
            traceparent: tp,
            tracestate: 'vendor=abc',
            'Content-Type': 'text/plain',
            'Idempotency-Key': 'forged',
            'X-Outbox-Attempt': '99',
            'x-route': 'forged',
            'Booking-Source': 'web',
          },
        },
      ]);
      const got = await waitFor(() => {
        const mine = receiver.received.filter((r) => r.json?.id === id);
        return mine.length >= 2 ? mine : undefined;
      });
      for (const [n, r] of got.entries()) {
        expect(r.headers).toMatchObject({
          traceparent: tp,
          tracestate: 'vendor=abc',
          'content-type': 'application/json',
          'idempotency-key': id,
          'x-outbox-attempt': String(n + 1),
          'x-route': 'route-value',
          'x-outbox-header-content-type': 'text/plain',
          'x-outbox-header-idempotency-key': 'forged',
          'x-outbox-header-x-outbox-attempt': '99',
          'x-outbox-header-x-route': 'forged',
          'x-outbox-header-booking-source': 'web',
        });
      }
    } finally {
      await daemon.stop();
      receiver.setResponder(() => ({ status: 200 }));
    }
  });

  it('ignores an invalid traceparent (and its tracestate) without failing the event', async () => {
    const daemon = await startDaemon(db, { routes: routes() });
    try {
      const [id] = await produce(db.producerUrl, tenantId(), [{ type: 'trace.http', headers: { traceparent: 'not-a-traceparent', tracestate: 'a=b' } }]);
      const r = await waitFor(() => receiver.received.find((x) => x.json?.id === id));
      expect(r.headers.traceparent).toBeUndefined();
      expect(r.headers.tracestate).toBeUndefined();
      await waitFor(async () => (await db.query(`SELECT status FROM capacity_outbox WHERE id = $1`, [id])).rows[0]?.status === 'done');
    } finally {
      await daemon.stop();
    }
  });

  it('dead-letters malformed headers with the reason, and keeps headers through dead-lettering and replay', async () => {
    const tp = traceparent();
    receiver.setResponder((r) => ({ status: r.json?.payload?.reject ? 400 : 200 }));
    const daemon = await startDaemon(db, { routes: routes() });
    try {
      const tenant = tenantId();
      const [bad] = await produce(db.producerUrl, tenant, [{ type: 'trace.http', headers: { n: 1 } }]);
      const [rejected] = await produce(db.producerUrl, tenant, [{ type: 'trace.http', payload: { reject: true }, headers: { traceparent: tp } }]);
      const dead = await waitFor(async () => {
        const { rows } = await db.query(`SELECT id, last_error FROM capacity_outbox WHERE id = ANY($1) AND status = 'dead'`, [[bad, rejected]]);
        return rows.length === 2 ? Object.fromEntries(rows.map((x) => [x.id, x.last_error as string])) : undefined;
      });
      expect(dead[bad!]).toMatch(/malformed: header n must be a string/);
      expect(receiver.received.find((x) => x.json?.id === rejected)?.headers.traceparent).toBe(tp);

      receiver.setResponder(() => ({ status: 200 }));
      const replay = await runCli(['events', 'replay', '--id', rejected!, '--json'], { DATABASE_URL: db.workerUrl });
      expect(replay.code).toBe(0);
      await waitFor(async () => (await db.query(`SELECT status FROM capacity_outbox WHERE id = $1`, [rejected])).rows[0]?.status === 'done');
      const after = receiver.received.filter((x) => x.json?.id === rejected);
      expect(after.length).toBeGreaterThanOrEqual(2);
      expect(after.at(-1)!.headers.traceparent).toBe(tp);
    } finally {
      await daemon.stop();
    }
  }, 120_000);

  it('forwards the producer’s traceparent on NATS and RabbitMQ', async () => {
    const [tpNats, tpRabbit] = [traceparent(), traceparent()];
    const daemon = await startDaemon(db, { routes: routes() });
    try {
      const tenant = tenantId();
      const [natsId] = await produce(db.producerUrl, tenant, [{ type: 'trace.nats', headers: { traceparent: tpNats, 'booking-source': 'app' } }]);
      const [rabbitId] = await produce(db.producerUrl, tenant, [{ type: 'trace.rabbit', headers: { traceparent: tpRabbit, tracestate: 'v=1' } }]);
      await waitFor(async () => (await db.query(`SELECT count(*)::int AS n FROM capacity_outbox WHERE id = ANY($1) AND status = 'done'`, [[natsId, rabbitId]])).rows[0].n === 2);

      const nc = await connect({ servers: NATS });
      const jsm = await jetstreamManager(nc);
      const msg = await jsm.streams.getMessage(prefix.toUpperCase(), { last_by_subj: `${prefix}.trace.nats` });
      expect(msg!.header.get('traceparent')).toBe(tpNats);
      expect(msg!.header.get('x-outbox-header-booking-source')).toBe('app');
      expect(msg!.header.get('Content-Type')).toBe('application/json');
      expect(msg!.json<{ id: string }>().id).toBe(natsId);
      await nc.close();

      const got = await waitFor(async () => (await ch.get(`${prefix}_q`, { noAck: true })) || undefined);
      expect(got.properties.messageId).toBe(rabbitId);
      expect(got.properties.headers).toMatchObject({ traceparent: tpRabbit, tracestate: 'v=1', 'x-outbox-event-type': 'trace.rabbit' });
    } finally {
      await daemon.stop();
    }
  });
});
