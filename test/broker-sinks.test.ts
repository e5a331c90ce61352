import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import amqp from 'amqplib';
import { jetstreamManager } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseRoutes } from '../src/config/routes.ts';
import { DispatchAbortedError, RetryableDispatchError } from '../src/domain/dispatch-errors.ts';
import type { OutboxEvent } from '../src/domain/event.ts';
import { NatsSink } from '../src/sinks/nats-sink.ts';
import { RabbitMqSink, withHeartbeat } from '../src/sinks/rabbitmq-sink.ts';
import type { SinkContext } from '../src/sinks/types.ts';
import { createTestDatabase, produce, statusCounts, tenantId, waitFor, type TestDatabase } from './support/db.ts';
import { startDaemon } from './support/daemon.ts';
import { freePort } from './support/ports.ts';

// Real brokers: the machine's NATS (JetStream) on 4222 and RabbitMQ on 5672, plus a
// private nats-server this file starts and stops to show outage and recovery.

const NATS = process.env.TEST_NATS_URL ?? 'nats://127.0.0.1:4222';
const AMQP = process.env.TEST_AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672';
const ctx = (signal = new AbortController().signal): SinkContext => ({ signal, withTenant: () => Promise.reject(new Error('unused')) });
const event = (over: Partial<OutboxEvent> = {}): OutboxEvent => ({
  id: crypto.randomUUID(),
  restaurantId: '11111111-1111-4111-8111-111111111111',
  eventType: 'booking.created',
  payload: { bookingId: 7 },
  createdAt: new Date('2026-11-22T10:00:00.000Z'),
  attempt: 1,
  dedupeKey: null,
  idempotencyKey: null,
  headers: {},
  orderingKey: null,
  sequence: null,
  ...over,
});
const natsConfig = (subject: string, servers = NATS) => parseRoutes({ routes: [{ match: '*', sink: { type: 'nats', servers, subject, timeoutMs: 2000 } }] }).routes[0]!.sink as never;
const rabbitConfig = (routingKey: string, exchange: string, url = AMQP, extra: { mandatory?: boolean; timeoutMs?: number } = {}) =>
  parseRoutes({ routes: [{ match: '*', sink: { type: 'rabbitmq', url, exchange, routingKey, timeoutMs: 2000, ...extra } }] }).routes[0]!.sink as never;

describe('NATS JetStream sink', () => {
  const prefix = `outbox_test_${crypto.randomBytes(4).toString('hex')}`;
  beforeAll(async () => {
    const nc = await connect({ servers: NATS });
    const jsm = await jetstreamManager(nc);
    await jsm.streams.add({ name: prefix.toUpperCase(), subjects: [`${prefix}.>`], duplicate_window: 60_000_000_000 });
    await nc.close();
  });
  afterAll(async () => {
    const nc = await connect({ servers: NATS });
    await (await jetstreamManager(nc)).streams.delete(prefix.toUpperCase()).catch(() => undefined);
    await nc.close();
  });

  it('publishes to the templated subject with Nats-Msg-Id, and a redelivery is dropped by the duplicate window', async () => {
    const sink = new NatsSink('nats', natsConfig(`${prefix}.{restaurantId}.{eventType}`));
    const e = event();
    try {
      await sink.send(e, ctx());
      await sink.send({ ...e, attempt: 2 }, ctx()); // e.g. the worker died before marking it done
    } finally {
      await sink.close();
    }
    const nc = await connect({ servers: NATS });
    const jsm = await jetstreamManager(nc);
    const info = await jsm.streams.info(prefix.toUpperCase());
    expect(info.state.messages).toBe(1);
    const msg = await jsm.streams.getMessage(prefix.toUpperCase(), { seq: info.state.first_seq });
    expect(msg!.subject).toBe(`${prefix}.11111111-1111-4111-8111-111111111111.booking.created`);
    expect(msg!.header.get('Nats-Msg-Id')).toBe(e.id);
    expect(msg!.header.get('X-Restaurant-Id')).toBe(e.restaurantId);
    expect(msg!.json()).toEqual({ id: e.id, eventType: 'booking.created', restaurantId: e.restaurantId, payload: { bookingId: 7 }, createdAt: '2026-11-22T10:00:00.000Z', attempt: 1 });
    await nc.close();
  });

  it('fails retryably while the server is down and delivers once it is back', async () => {
    const port = await freePort();
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nats-'));
    const start = () => spawn('nats-server', ['-a', '127.0.0.1', '-p', String(port), '-js', '-sd', dir], { stdio: 'ignore' });
    const sink = new NatsSink('nats', natsConfig('outage.{eventType}', `nats://127.0.0.1:${port}`));
    let server: ChildProcess | undefined;
    try {
      await expect(sink.send(event(), ctx())).rejects.toBeInstanceOf(RetryableDispatchError);
      server = start();
      await waitFor(async () => {
        const nc = await connect({ servers: `127.0.0.1:${port}` });
        await (await jetstreamManager(nc)).streams.add({ name: 'OUTAGE', subjects: ['outage.>'] }).catch(() => undefined);
        await nc.close();
        return true;
      });
      await waitFor(async () => (await sink.send(event(), ctx()), true), { timeoutMs: 20_000, intervalMs: 200 });
      server.kill('SIGKILL');
      await new Promise((r) => server!.once('exit', r));
      await expect(sink.send(event(), ctx())).rejects.toBeInstanceOf(RetryableDispatchError);
      server = start();
      // The sink's connection reconnects by itself; retries succeed again.
      await waitFor(async () => (await sink.send(event(), ctx()), true), { timeoutMs: 20_000, intervalMs: 250 });
    } finally {
      await sink.close();
      server?.kill('SIGKILL');
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }, 60_000);
});

/** Takes every message off `queue` on a connection of its own (another test may have dropped the shared one). */
async function drainQueue(queue: string): Promise<amqp.GetMessage[]> {
  const c = await amqp.connect(AMQP);
  try {
    const cch = await c.createChannel();
    const got: amqp.GetMessage[] = [];
    for (let m = await cch.get(queue, { noAck: true }); m; m = await cch.get(queue, { noAck: true })) got.push(m);
    return got;
  } finally {
    await c.close().catch(() => undefined);
  }
}

describe('RabbitMQ sink', () => {
  const exchange = `outbox_test_${crypto.randomBytes(4).toString('hex')}`;
  const queue = `${exchange}_q`;
  let conn: amqp.ChannelModel;
  let ch: amqp.Channel;
  beforeAll(async () => {
    conn = await amqp.connect(AMQP);
    ch = await conn.createChannel();
    await ch.assertExchange(exchange, 'topic', { durable: false, autoDelete: false });
    await ch.assertQueue(queue, { durable: true });
    await ch.bindQueue(queue, exchange, 'booking.#');
  });
  afterAll(async () => {
    await ch.deleteQueue(queue).catch(() => undefined);
    await ch.deleteExchange(exchange).catch(() => undefined);
    await conn.close().catch(() => undefined);
  });

  it('publishes persistent, confirmed messages with the event id as message_id and a templated routing key', async () => {
    const sink = new RabbitMqSink('rabbit', rabbitConfig('{eventType}.{restaurantId}', exchange));
    const e = event();
    try {
      await sink.send(e, ctx());
    } finally {
      await sink.close();
    }
    const msg = await waitFor(async () => (await ch.get(queue, { noAck: true })) || undefined);
    expect(msg.fields.routingKey).toBe(`booking.created.${e.restaurantId}`);
    expect(msg.properties.messageId).toBe(e.id);
    expect(msg.properties.deliveryMode).toBe(2);
    expect(msg.properties.headers).toMatchObject({ 'x-restaurant-id': e.restaurantId, 'x-outbox-event-type': 'booking.created' });
    expect(JSON.parse(msg.content.toString())).toMatchObject({ id: e.id, restaurantId: e.restaurantId, payload: { bookingId: 7 } });
  });

  it('fails retryably when the broker is unreachable or the exchange is missing, and recovers after the connection is dropped', async () => {
    const down = new RabbitMqSink('rabbit', rabbitConfig('x', exchange, `amqp://guest:guest@127.0.0.1:${await freePort()}`));
    await expect(down.send(event(), ctx())).rejects.toBeInstanceOf(RetryableDispatchError);
    await down.close();

    const missing = new RabbitMqSink('rabbit', rabbitConfig('x', `${exchange}_missing`));
    await expect(missing.send(event(), ctx())).rejects.toThrow(/NOT_FOUND|no exchange/i);
    await missing.close();

    const sink = new RabbitMqSink('rabbit', rabbitConfig('booking.recovered', exchange));
    try {
      await sink.send(event(), ctx());
      // Drops every client connection of this broker (ours included), as a broker restart would.
      const ctl = spawnSync('rabbitmqctl', ['close_all_connections', 'test: connection dropped'], { encoding: 'utf8' });
      if (ctl.status === 0) {
        await waitFor(async () => (await sink.send(event(), ctx()), true), { timeoutMs: 20_000, intervalMs: 200 });
      }
    } finally {
      await sink.close();
    }
    conn = await amqp.connect(AMQP);
    ch = await conn.createChannel();
    await ch.purgeQueue(queue);
  }, 60_000);

  it('fails a message no queue takes (mandatory) with the reason, unless the route opts out', async () => {
    const sink = new RabbitMqSink('rabbit', rabbitConfig('nobody.{eventType}', exchange));
    const toNoQueue = new RabbitMqSink('rabbit', rabbitConfig(`${exchange}_no_such_queue`, ''));
    const optOut = new RabbitMqSink('rabbit', rabbitConfig('nobody.{eventType}', exchange, AMQP, { mandatory: false }));
    try {
      // The exchange exists, but no binding matches nobody.*: the broker returns it.
      const err = await sink.send(event(), ctx()).then(() => undefined, (e: unknown) => e);
      expect(err).toBeInstanceOf(RetryableDispatchError);
      expect((err as Error).message).toMatch(/returned the message as unroutable \(312 NO_ROUTE\): no queue is bound for outbox_test_\w+\/nobody\.booking\.created/);
      await expect(toNoQueue.send(event(), ctx())).rejects.toThrow(/unroutable \(312 NO_ROUTE\)/);
      // The same channel still delivers routable messages afterwards.
      const ok = new RabbitMqSink('rabbit', rabbitConfig('booking.after_return', exchange));
      await ok.send(event(), ctx());
      await ok.close();
      // Explicit opt-out: the broker drops it and the send counts as delivered.
      await expect(optOut.send(event(), ctx())).resolves.toBeUndefined();
    } finally {
      await Promise.all([sink.close(), toNoQueue.close(), optOut.close()]);
    }
    const msgs = await waitFor(async () => {
      const m = await drainQueue(queue);
      return m.length > 0 ? m : undefined;
    });
    expect(msgs.map((m) => m.fields.routingKey)).toEqual(['booking.after_return']);
  });

  it('replaces a half-open connection: a confirm timeout resets it and the next send uses a fresh one', async () => {
    // A TCP proxy whose existing connections can be frozen (bytes silently dropped both ways),
    // as a dead NAT entry or a crashed peer looks to the client.
    const frozen = new Set<net.Socket>();
    const live: net.Socket[] = [];
    const proxy = net.createServer((client) => {
      const server = net.connect(5672, '127.0.0.1');
      live.push(client);
      client.on('data', (d) => { if (!frozen.has(client)) server.write(d); });
      server.on('data', (d) => { if (!frozen.has(client)) client.write(d); });
      client.on('error', () => undefined);
      server.on('error', () => undefined);
      client.on('close', () => server.destroy());
      server.on('close', () => client.destroy());
    });
    await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', r));
    const url = `amqp://guest:guest@127.0.0.1:${(proxy.address() as net.AddressInfo).port}`;
    const sink = new RabbitMqSink('rabbit', rabbitConfig('booking.halfopen', exchange, url, { timeoutMs: 1000 }));
    try {
      await sink.send(event(), ctx());
      expect(live).toHaveLength(1);
      for (const s of live) frozen.add(s);
      await expect(sink.send(event(), ctx())).rejects.toThrow(/no publisher confirm within 1000 ms; connection reset/);
      // The next send opens a new connection instead of waiting on the dead one.
      await sink.send(event(), ctx());
      expect(live).toHaveLength(2);
    } finally {
      await sink.close();
      for (const s of live) s.destroy();
      await new Promise<void>((r) => proxy.close(() => r()));
    }
    expect((await drainQueue(queue)).map((m) => m.fields.routingKey)).toEqual(['booking.halfopen', 'booking.halfopen']);
  }, 20_000);

  it('asks the broker for a heartbeat unless the URL sets one', () => {
    expect(withHeartbeat('amqp://guest:guest@127.0.0.1:5672', 10)).toBe('amqp://guest:guest@127.0.0.1:5672?heartbeat=10');
    expect(withHeartbeat('amqp://u:p@h/vh?heartbeat=30', 10)).toBe('amqp://u:p@h/vh?heartbeat=30');
  });

  it('reports shutdown as an abort', async () => {
    const sink = new RabbitMqSink('rabbit', rabbitConfig('x', exchange));
    const ac = new AbortController();
    ac.abort();
    await expect(sink.send(event(), ctx(ac.signal))).rejects.toBeInstanceOf(DispatchAbortedError);
    await sink.close();
  });
});

describe('brokers through the daemon', () => {
  let db: TestDatabase;
  const prefix = `outbox_e2e_${crypto.randomBytes(4).toString('hex')}`;
  beforeAll(async () => {
    db = await createTestDatabase();
    const nc = await connect({ servers: NATS });
    await (await jetstreamManager(nc)).streams.add({ name: prefix.toUpperCase(), subjects: [`${prefix}.>`] });
    await nc.close();
  });
  afterAll(async () => {
    const nc = await connect({ servers: NATS });
    await (await jetstreamManager(nc)).streams.delete(prefix.toUpperCase()).catch(() => undefined);
    await nc.close();
    await db.drop();
  });

  it('marks events done only after JetStream acknowledged them', async () => {
    const routes = { routes: [{ match: '*', sink: { type: 'nats' as const, servers: NATS, subject: `${prefix}.{eventType}` } }] };
    const daemon = await startDaemon(db, { routes });
    try {
      const ids = await produce(db.producerUrl, tenantId(), Array.from({ length: 20 }, (_, i) => ({ type: 'booking.created', payload: { i } })));
      await waitFor(async () => (await statusCounts(db)).done === 20);
      const nc = await connect({ servers: NATS });
      const info = await (await jetstreamManager(nc)).streams.info(prefix.toUpperCase());
      expect(info.state.messages).toBe(ids.length);
      await nc.close();
    } finally {
      await daemon.stop();
    }
  });
});
