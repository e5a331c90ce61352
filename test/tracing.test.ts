import crypto from 'node:crypto';
import amqp from 'amqplib';
import { jetstreamManager } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError } from '../src/config/errors.ts';
import { createLogger } from '../src/kernel/log.ts';
import { tracingSettings } from '../src/tracing/settings.ts';
import { startTracing } from '../src/tracing/tracer.ts';
import { runCli } from './support/cli.ts';
import { startDaemon } from './support/daemon.ts';
import { createTestDatabase, produce, tenantId, waitFor, type TestDatabase } from './support/db.ts';
import { startReceiver } from './support/http-receiver.ts';

// Dispatch spans end to end: a real OTLP/HTTP receiver (node:http, decoding the exporter's
// JSON encoding of ExportTraceServiceRequest) gets one span per delivery attempt, a child of
// the producer's span; the consumer's traceparent names the dispatch span in the same trace.

const NATS = process.env.TEST_NATS_URL ?? 'nats://127.0.0.1:4222';
const AMQP = process.env.TEST_AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672';

function producerContext() {
  const traceId = crypto.randomBytes(16).toString('hex');
  const spanId = crypto.randomBytes(8).toString('hex');
  return { traceId, spanId, traceparent: `00-${traceId}-${spanId}-01` };
}

const parseTraceparent = (tp: string | undefined) => {
  const m = /^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/.exec(tp ?? '');
  return m ? { traceId: m[1]!, spanId: m[2]!, flags: m[3]! } : undefined;
};

interface OtlpValue { stringValue?: string; intValue?: string | number; boolValue?: boolean }
interface DecodedSpan {
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  name: string;
  kind: number;
  status?: { code?: number; message?: string };
  attributes: Record<string, string | number | boolean | undefined>;
  resource: Record<string, string | number | boolean | undefined>;
}

const attrs = (list: { key: string; value: OtlpValue }[] | undefined) =>
  Object.fromEntries((list ?? []).map((a) => [a.key, a.value.stringValue ?? (a.value.intValue !== undefined ? Number(a.value.intValue) : a.value.boolValue)]));

/** Decodes every OTLP/HTTP JSON request the collector received into flat spans. */
function decode(bodies: { body: string; path?: string }[]): DecodedSpan[] {
  const spans: DecodedSpan[] = [];
  for (const { body } of bodies) {
    const req = JSON.parse(body) as {
      resourceSpans: { resource?: { attributes?: { key: string; value: OtlpValue }[] }; scopeSpans: { spans: (Omit<DecodedSpan, 'attributes' | 'resource'> & { attributes?: { key: string; value: OtlpValue }[] })[] }[] }[];
    };
    for (const rs of req.resourceSpans) {
      for (const ss of rs.scopeSpans) for (const s of ss.spans) spans.push({ ...s, parentSpanId: s.parentSpanId || undefined, attributes: attrs(s.attributes), resource: attrs(rs.resource?.attributes) });
    }
  }
  return spans;
}

describe('tracing settings (README "Tracing")', () => {
  it('is off unless an OTLP endpoint or OTEL_TRACES_EXPORTER=otlp is set, and OTEL_SDK_DISABLED wins', () => {
    expect(tracingSettings({})).toEqual({ enabled: false });
    expect(tracingSettings({ OTEL_SERVICE_NAME: 'x' })).toEqual({ enabled: false });
    expect(tracingSettings({ OTEL_TRACES_EXPORTER: 'none', OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318' })).toEqual({ enabled: false });
    expect(tracingSettings({ OTEL_SDK_DISABLED: 'true', OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318' })).toEqual({ enabled: false });
    expect(tracingSettings({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318/' })).toMatchObject({ enabled: true, url: 'http://c:4318/v1/traces', serviceName: 'outbox-dispatcher' });
    expect(tracingSettings({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318', OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'https://t/x' })).toMatchObject({ url: 'https://t/x' });
    expect(tracingSettings({ OTEL_TRACES_EXPORTER: 'otlp' })).toMatchObject({ enabled: true, url: 'http://localhost:4318/v1/traces' });
    expect(tracingSettings({ OTEL_TRACES_EXPORTER: 'otlp', OTEL_SERVICE_NAME: 'relay', OTEL_RESOURCE_ATTRIBUTES: 'deployment.environment=prod,team=a%20b' })).toMatchObject({
      serviceName: 'relay',
      resourceAttributes: { 'deployment.environment': 'prod', team: 'a b' },
      sampler: { parentBased: true, ratio: 1 },
    });
  });

  it('rejects what it cannot honour, naming the key', () => {
    for (const [env, key] of [
      [{ OTEL_TRACES_EXPORTER: 'zipkin' }, 'OTEL_TRACES_EXPORTER'],
      [{ OTEL_TRACES_EXPORTER: 'otlp', OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc' }, 'OTEL_EXPORTER_OTLP_PROTOCOL'],
      [{ OTEL_TRACES_EXPORTER: 'otlp', OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: 'http/protobuf', OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json' }, 'OTEL_EXPORTER_OTLP_TRACES_PROTOCOL'],
      [{ OTEL_EXPORTER_OTLP_ENDPOINT: 'collector:4318' }, 'OTEL_EXPORTER_OTLP_ENDPOINT'],
      [{ OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'ftp://c/v1/traces' }, 'OTEL_EXPORTER_OTLP_TRACES_ENDPOINT'],
      [{ OTEL_TRACES_EXPORTER: 'otlp', OTEL_TRACES_SAMPLER: 'jaeger_remote' }, 'OTEL_TRACES_SAMPLER'],
      [{ OTEL_TRACES_EXPORTER: 'otlp', OTEL_TRACES_SAMPLER: 'traceidratio', OTEL_TRACES_SAMPLER_ARG: '2' }, 'OTEL_TRACES_SAMPLER_ARG'],
      [{ OTEL_TRACES_EXPORTER: 'otlp', OTEL_BSP_SCHEDULE_DELAY: 'soon' }, 'OTEL_BSP_SCHEDULE_DELAY'],
      [{ OTEL_SDK_DISABLED: 'yes' }, 'OTEL_SDK_DISABLED'],
    ] as const) {
      let err: unknown;
      try {
        tracingSettings(env);
      } catch (e) {
        err = e;
      }
      expect(err, JSON.stringify(env)).toBeInstanceOf(ConfigError);
      expect((err as ConfigError).key).toBe(key);
    }
  });

  it('exits 78 naming the key when run is misconfigured', async () => {
    const r = await runCli(['run'], { OTEL_TRACES_EXPORTER: 'zipkin' });
    expect(r.code).toBe(78);
    expect(r.stderr).toMatch(/OTEL_TRACES_EXPORTER/);
    expect(r.stderr).not.toMatch(/\n\s+at /);
  });

  it('loads nothing when off', async () => {
    expect(await startTracing({ enabled: false }, createLogger('silent'))).toBeUndefined();
  });
});

describe('dispatch spans through the daemon', () => {
  let db: TestDatabase;
  let consumer: Awaited<ReturnType<typeof startReceiver>>;
  let collector: Awaited<ReturnType<typeof startReceiver>>;
  const prefix = `outbox_otel_${crypto.randomBytes(4).toString('hex')}`;
  // A connection per use: one held across the file can be closed under load (missed heartbeats).
  const withChannel = async <T>(work: (ch: amqp.Channel) => Promise<T>): Promise<T> => {
    const conn = await amqp.connect(AMQP);
    try {
      return await work(await conn.createChannel());
    } finally {
      await conn.close().catch(() => undefined);
    }
  };

  beforeAll(async () => {
    db = await createTestDatabase();
    consumer = await startReceiver();
    collector = await startReceiver();
    const nc = await connect({ servers: NATS });
    await (await jetstreamManager(nc)).streams.add({ name: prefix.toUpperCase(), subjects: [`${prefix}.>`] });
    await nc.close();
    await withChannel(async (ch) => {
      await ch.assertExchange(prefix, 'topic', { durable: false });
      await ch.assertQueue(`${prefix}_q`, { durable: false, autoDelete: false });
      await ch.bindQueue(`${prefix}_q`, prefix, '#');
    });
  });
  afterAll(async () => {
    await withChannel(async (ch) => {
      await ch.deleteQueue(`${prefix}_q`);
      await ch.deleteExchange(prefix);
    }).catch(() => undefined);
    const nc = await connect({ servers: NATS });
    await (await jetstreamManager(nc)).streams.delete(prefix.toUpperCase()).catch(() => undefined);
    await nc.close();
    await consumer?.close();
    await collector?.close();
    await db?.drop();
  });

  const routes = () => ({
    routes: [
      { match: 'trace.nats', sink: { type: 'nats' as const, name: 'nats', servers: NATS, subject: `${prefix}.{eventType}` } },
      { match: 'trace.rabbit', sink: { type: 'rabbitmq' as const, name: 'rabbit', url: AMQP, exchange: prefix, routingKey: '{eventType}' } },
      { match: '*', sink: { type: 'http' as const, name: 'http', url: `${consumer.url}?token=secret` } },
    ],
  });
  const tracingEnv = () => ({ OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${collector.port}`, OTEL_BSP_SCHEDULE_DELAY: '100', OTEL_SERVICE_NAME: 'outbox-test' });
  const spansFor = (id: string) => decode(collector.received).filter((s) => s.attributes['messaging.message.id'] === id);

  it('exports one span per attempt, a child of the producer’s span; the consumer nests under it (HTTP, across a retry)', async () => {
    const producer = producerContext();
    let calls = 0;
    consumer.setResponder(() => ({ status: ++calls === 1 ? 503 : 200 }));
    const daemon = await startDaemon(db, { routes: routes(), env: tracingEnv() });
    let id: string;
    try {
      [id] = (await produce(db.producerUrl, tenantId(), [{ type: 'trace.http', headers: { traceparent: producer.traceparent, tracestate: 'vendor=abc' } }])) as [string];
      await waitFor(async () => (await db.query(`SELECT status FROM capacity_outbox WHERE id = $1`, [id])).rows[0]?.status === 'done');
    } finally {
      await daemon.stop(); // flushes the batch processor
      consumer.setResponder(() => ({ status: 200 }));
    }
    expect(collector.received.every((r) => r.headers['content-type'] === 'application/json')).toBe(true);
    const spans = spansFor(id).sort((a, b) => Number(a.attributes['outbox.attempt']) - Number(b.attributes['outbox.attempt']));
    expect(spans).toHaveLength(2);
    for (const [n, s] of spans.entries()) {
      expect(s.traceId).toBe(producer.traceId);
      expect(s.parentSpanId).toBe(producer.spanId);
      expect(s.kind).toBe(4); // SPAN_KIND_PRODUCER
      expect(s.name).toBe(`send ${consumer.url}`);
      expect(s.attributes).toMatchObject({
        'messaging.system': 'http',
        'messaging.destination.name': consumer.url, // no query: the token stays out of traces
        'messaging.operation.type': 'send',
        'messaging.operation.name': 'send',
        'outbox.event_type': 'trace.http',
        'outbox.sink': 'http',
        'outbox.attempt': n + 1,
      });
      expect(s.resource['service.name']).toBe('outbox-test');
    }
    expect(spans[0]!.attributes['outbox.outcome']).toBe('retry');
    expect(spans[0]!.status?.code).toBe(2); // STATUS_CODE_ERROR
    expect(spans[0]!.status?.message).toMatch(/503/);
    expect(spans[1]!.attributes['outbox.outcome']).toBe('done');
    expect(spans[1]!.status?.code ?? 0).not.toBe(2);

    const received = consumer.received.filter((r) => r.json?.id === id);
    expect(received).toHaveLength(2);
    for (const [n, r] of received.entries()) {
      const tp = parseTraceparent(r.headers.traceparent as string);
      expect(tp).toEqual({ traceId: producer.traceId, spanId: spans[n]!.spanId, flags: '01' });
      expect(r.headers.tracestate).toBe('vendor=abc');
    }
  });

  it('keeps the producer as parent after dead-lettering and replay', async () => {
    const producer = producerContext();
    consumer.setResponder((r) => ({ status: r.json?.payload?.reject ? 400 : 200 }));
    let daemon = await startDaemon(db, { routes: routes(), env: tracingEnv() });
    let id: string;
    try {
      [id] = (await produce(db.producerUrl, tenantId(), [{ type: 'trace.http', payload: { reject: true }, headers: { traceparent: producer.traceparent } }])) as [string];
      await waitFor(async () => (await db.query(`SELECT status FROM capacity_outbox WHERE id = $1`, [id])).rows[0]?.status === 'dead');
    } finally {
      await daemon.stop();
    }
    consumer.setResponder(() => ({ status: 200 }));
    const replay = await runCli(['events', 'replay', '--id', id, '--json'], { DATABASE_URL: db.workerUrl });
    expect(replay.code).toBe(0);
    daemon = await startDaemon(db, { routes: routes(), env: tracingEnv() });
    try {
      await waitFor(async () => (await db.query(`SELECT status FROM capacity_outbox WHERE id = $1`, [id])).rows[0]?.status === 'done');
    } finally {
      await daemon.stop();
    }
    const spans = spansFor(id);
    expect(spans.map((s) => s.attributes['outbox.outcome']).sort()).toEqual(['dead', 'done']);
    for (const s of spans) {
      expect(s.traceId).toBe(producer.traceId);
      expect(s.parentSpanId).toBe(producer.spanId);
    }
    const dead = spans.find((s) => s.attributes['outbox.outcome'] === 'dead')!;
    expect(dead.status?.code).toBe(2);
    expect(dead.attributes['error.type']).toBe('permanent');
    const last = consumer.received.filter((r) => r.json?.id === id).at(-1)!;
    expect(parseTraceparent(last.headers.traceparent as string)).toEqual({
      traceId: producer.traceId,
      spanId: spans.find((s) => s.attributes['outbox.outcome'] === 'done')!.spanId,
      flags: '01',
    });
  }, 120_000);

  it('gives the consumer the producer’s trace id on NATS and RabbitMQ', async () => {
    const [pn, pr] = [producerContext(), producerContext()];
    const daemon = await startDaemon(db, { routes: routes(), env: tracingEnv() });
    let natsId: string;
    let rabbitId: string;
    try {
      const tenant = tenantId();
      [natsId] = (await produce(db.producerUrl, tenant, [{ type: 'trace.nats', headers: { traceparent: pn.traceparent } }])) as [string];
      [rabbitId] = (await produce(db.producerUrl, tenant, [{ type: 'trace.rabbit', headers: { traceparent: pr.traceparent, tracestate: 'v=1' } }])) as [string];
      await waitFor(async () => (await db.query(`SELECT count(*)::int AS n FROM capacity_outbox WHERE id = ANY($1) AND status = 'done'`, [[natsId, rabbitId]])).rows[0].n === 2);
    } finally {
      await daemon.stop();
    }
    const [natsSpan] = spansFor(natsId);
    const [rabbitSpan] = spansFor(rabbitId);
    expect(natsSpan).toMatchObject({ traceId: pn.traceId, parentSpanId: pn.spanId, kind: 4, name: `publish ${prefix}.trace.nats` });
    expect(natsSpan!.attributes).toMatchObject({ 'messaging.system': 'nats', 'messaging.destination.name': `${prefix}.trace.nats`, 'messaging.operation.name': 'publish', 'outbox.outcome': 'done' });
    expect(rabbitSpan).toMatchObject({ traceId: pr.traceId, parentSpanId: pr.spanId, kind: 4, name: `publish ${prefix}` });
    expect(rabbitSpan!.attributes).toMatchObject({ 'messaging.system': 'rabbitmq', 'messaging.destination.name': prefix, 'outbox.outcome': 'done' });

    const nc = await connect({ servers: NATS });
    const msg = await (await jetstreamManager(nc)).streams.getMessage(prefix.toUpperCase(), { last_by_subj: `${prefix}.trace.nats` });
    expect(parseTraceparent(msg!.header.get('traceparent'))).toEqual({ traceId: pn.traceId, spanId: natsSpan!.spanId, flags: '01' });
    await nc.close();
    const got = await waitFor(() => withChannel(async (ch) => (await ch.get(`${prefix}_q`, { noAck: true })) || undefined));
    expect(got.properties.messageId).toBe(rabbitId);
    expect(parseTraceparent(String(got.properties.headers?.traceparent))).toEqual({ traceId: pr.traceId, spanId: rabbitSpan!.spanId, flags: '01' });
    expect(got.properties.headers?.tracestate).toBe('v=1');
  });

  it('makes an invalid traceparent a root span, never fatal; follows an unsampled producer without exporting', async () => {
    const unsampled = producerContext();
    const daemon = await startDaemon(db, { routes: routes(), env: tracingEnv() });
    let badId: string;
    let quietId: string;
    try {
      const tenant = tenantId();
      [badId] = (await produce(db.producerUrl, tenant, [{ type: 'trace.http', headers: { traceparent: 'not-a-traceparent', tracestate: 'a=b' } }])) as [string];
      [quietId] = (await produce(db.producerUrl, tenant, [{ type: 'trace.http', headers: { traceparent: unsampled.traceparent.replace(/-01$/, '-00') } }])) as [string];
      await waitFor(async () => (await db.query(`SELECT count(*)::int AS n FROM capacity_outbox WHERE id = ANY($1) AND status = 'done'`, [[badId, quietId]])).rows[0].n === 2);
    } finally {
      await daemon.stop();
    }
    const [root] = spansFor(badId);
    expect(root).toBeDefined();
    expect(root!.parentSpanId).toBeUndefined();
    expect(root!.attributes['outbox.outcome']).toBe('done');
    const got = consumer.received.find((r) => r.json?.id === badId)!;
    expect(parseTraceparent(got.headers.traceparent as string)).toEqual({ traceId: root!.traceId, spanId: root!.spanId, flags: '01' });
    expect(got.headers.tracestate).toBeUndefined();

    // ParentBased sampling: the producer decided not to sample, so nothing is exported, but
    // the consumer still continues the producer's trace.
    expect(spansFor(quietId)).toHaveLength(0);
    const quiet = parseTraceparent(consumer.received.find((r) => r.json?.id === quietId)!.headers.traceparent as string);
    expect(quiet).toMatchObject({ traceId: unsampled.traceId, flags: '00' });
  });

  it('exports nothing and adds no trace context when off', async () => {
    const before = collector.received.length;
    // An endpoint with the SDK disabled: still off.
    const daemon = await startDaemon(db, { routes: routes(), env: { ...tracingEnv(), OTEL_SDK_DISABLED: 'true' } });
    let id: string;
    let withParent: string;
    const producer = producerContext();
    try {
      const tenant = tenantId();
      [id] = (await produce(db.producerUrl, tenant, [{ type: 'trace.http' }])) as [string];
      [withParent] = (await produce(db.producerUrl, tenant, [{ type: 'trace.http', headers: { traceparent: producer.traceparent } }])) as [string];
      await waitFor(async () => (await db.query(`SELECT count(*)::int AS n FROM capacity_outbox WHERE id = ANY($1) AND status = 'done'`, [[id, withParent]])).rows[0].n === 2);
    } finally {
      await daemon.stop();
    }
    expect(collector.received.length).toBe(before);
    expect(consumer.received.find((r) => r.json?.id === id)!.headers.traceparent).toBeUndefined();
    // Off, the producer's traceparent is forwarded unchanged (README "Producer contract").
    expect(consumer.received.find((r) => r.json?.id === withParent)!.headers.traceparent).toBe(producer.traceparent);
  });
});
