import type { JetStreamClient } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/transport-node';
import type { NatsSinkConfig } from '../config/routes.ts';
import type { OutboxEvent } from '../domain/event.ts';
import { DispatchAbortedError, RetryableDispatchError } from '../domain/dispatch-errors.ts';
import { SEQUENCE_HEADER, eventBody, renderTemplate } from './event-body.ts';
import type { Sink, SinkContext } from './types.ts';

/**
 * The NATS client, imported on first use: a worker whose routes have no NATS sink never loads
 * it (about 60 modules; docs/performance.md "Memory").
 */
let natsClient: Promise<[typeof import('@nats-io/transport-node'), typeof import('@nats-io/jetstream')]> | undefined;
function loadNatsClient() {
  natsClient ??= Promise.all([import('@nats-io/transport-node'), import('@nats-io/jetstream')]);
  return natsClient;
}

interface NatsSession {
  nc: NatsConnection;
  js: JetStreamClient;
  /** The client's header constructor (the module is loaded with the connection). */
  headers: typeof import('@nats-io/transport-node').headers;
}

/**
 * Publishes to NATS JetStream and waits for the stream's acknowledgement before the event
 * counts as delivered. The event id is the `Nats-Msg-Id`, so JetStream's duplicate window
 * drops a redelivery (an ack marked duplicate is success). A stream must capture the subject.
 */
export class NatsSink implements Sink {
  readonly type = 'nats';
  readonly name: string;
  readonly timeoutMs: number;
  readonly #config: NatsSinkConfig;
  #conn: Promise<NatsSession> | undefined;

  constructor(name: string, config: NatsSinkConfig) {
    this.name = name;
    this.timeoutMs = config.timeoutMs;
    this.#config = config;
  }

  #connect(): Promise<NatsSession> {
    this.#conn ??= (async () => {
      const [{ connect, headers }, { jetstream }] = await loadNatsClient();
      const nc = await connect({
        servers: this.#config.servers.split(',').map((s) => s.trim()),
        name: 'outbox-dispatcher',
        timeout: Math.min(this.timeoutMs, 5000),
        reconnect: true,
        maxReconnectAttempts: -1,
        reconnectTimeWait: 500,
      });
      nc.closed().then(() => (this.#conn = undefined));
      return { nc, js: jetstream(nc, { timeout: this.timeoutMs }), headers };
    })().catch((err: unknown) => {
      this.#conn = undefined;
      throw err;
    });
    return this.#conn;
  }

  destination(event: OutboxEvent): string {
    return renderTemplate(this.#config.subject, event);
  }

  async send(event: OutboxEvent, ctx: SinkContext): Promise<void> {
    if (ctx.signal.aborted) throw new DispatchAbortedError('shutdown before publishing');
    const subject = renderTemplate(this.#config.subject, event);
    try {
      const { js, headers } = await this.#connect();
      const h = headers();
      for (const [name, value] of Object.entries(event.headers)) h.set(name, value);
      h.set('Content-Type', 'application/json');
      h.set('X-Outbox-Event-Type', event.eventType);
      h.set('X-Restaurant-Id', event.restaurantId);
      h.set('X-Outbox-Attempt', String(event.attempt));
      if (event.sequence !== null) h.set(SEQUENCE_HEADER, event.sequence);
      await js.publish(subject, JSON.stringify(eventBody(event)), { msgID: event.id, timeout: this.timeoutMs, headers: h });
    } catch (err) {
      if (ctx.signal.aborted) throw new DispatchAbortedError('shutdown interrupted the publish');
      throw new RetryableDispatchError(`NATS publish to ${subject} failed: ${(err as Error).message}`, { cause: err });
    }
  }

  async close(): Promise<void> {
    const conn = this.#conn;
    this.#conn = undefined;
    if (conn) await (await conn.catch(() => undefined))?.nc.drain().catch(() => undefined);
  }
}
