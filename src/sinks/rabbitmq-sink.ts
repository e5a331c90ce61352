import type amqp from 'amqplib';
import type { RabbitMqSinkConfig } from '../config/routes.ts';
import type { OutboxEvent } from '../domain/event.ts';
import { DispatchAbortedError, RetryableDispatchError } from '../domain/dispatch-errors.ts';
import { SEQUENCE_HEADER, eventBody, renderTemplate } from './event-body.ts';
import type { Sink, SinkContext } from './types.ts';

/**
 * amqplib, imported on first use: a worker whose routes have no RabbitMQ sink never loads it
 * (docs/performance.md "Memory").
 */
let amqpClient: Promise<typeof import('amqplib')> | undefined;
function loadAmqpClient(): Promise<typeof import('amqplib')> {
  amqpClient ??= import('amqplib');
  return amqpClient;
}

interface OpenChannel {
  conn: amqp.ChannelModel;
  ch: amqp.ConfirmChannel;
  /** basic.return for mandatory messages no queue took, by message id (arrives before the confirm). */
  returned: Map<string, string>;
}

/** The URL with the sink's heartbeat, unless the URL sets one itself. */
export function withHeartbeat(url: string, seconds: number): string {
  const u = new URL(url);
  if (!u.searchParams.has('heartbeat')) u.searchParams.set('heartbeat', String(seconds));
  return u.toString();
}

/**
 * Publishes persistent messages on a confirm channel and waits for the broker's confirm
 * before the event counts as delivered. The event id is the AMQP `message_id`, for
 * consumers to dedupe redeliveries. Messages are `mandatory` (unless the route opts out):
 * one no queue is bound for is returned by the broker and the send fails instead of the
 * event being marked done. A connection that stops answering (no confirm within the
 * timeout, or missed heartbeats) is torn down and re-opened on the next send.
 */
export class RabbitMqSink implements Sink {
  readonly type = 'rabbitmq';
  readonly name: string;
  readonly timeoutMs: number;
  readonly #config: RabbitMqSinkConfig;
  #channel: Promise<OpenChannel> | undefined;
  /** Why the broker closed the last channel (e.g. 404 NOT_FOUND for a missing exchange). */
  #lastChannelError: string | undefined;

  constructor(name: string, config: RabbitMqSinkConfig) {
    this.name = name;
    this.timeoutMs = config.timeoutMs;
    this.#config = config;
  }

  #open(): Promise<OpenChannel> {
    if (this.#channel) return this.#channel;
    const opening: Promise<OpenChannel> = (async () => {
      const amqpLib = await loadAmqpClient();
      const conn = await amqpLib.connect(withHeartbeat(this.#config.url, this.#config.heartbeatSeconds ?? 10), {
        timeout: Math.min(this.timeoutMs, 5000),
        clientProperties: { connection_name: 'outbox-dispatcher' },
      });
      // Only forget the channel if it is still this one: an old connection closing late
      // must not drop its replacement.
      const reset = (err?: Error) => {
        if (this.#channel === opening) this.#channel = undefined;
        if (err?.message) this.#lastChannelError = err.message;
      };
      conn.on('error', reset);
      conn.on('close', () => reset());
      const ch = await conn.createConfirmChannel();
      ch.on('error', reset);
      ch.on('close', () => reset());
      const returned = new Map<string, string>();
      ch.on('return', (msg: amqp.Message) => {
        const id = msg.properties.messageId as string | undefined;
        if (id) returned.set(id, `${(msg.fields as { replyCode?: number }).replyCode ?? ''} ${(msg.fields as { replyText?: string }).replyText ?? 'returned'}`.trim());
      });
      return { conn, ch, returned };
    })().catch((err: unknown) => {
      if (this.#channel === opening) this.#channel = undefined;
      throw err;
    });
    this.#channel = opening;
    return opening;
  }

  /** Tears down a connection that stopped answering without waiting for the broker. */
  #discard(open: Promise<OpenChannel>): void {
    if (this.#channel === open) this.#channel = undefined;
    void open.then(
      ({ conn }) => {
        // close() would wait for a close-ok that a half-open socket never delivers.
        const stream = (conn as unknown as { connection?: { stream?: { destroy(): void } } }).connection?.stream;
        stream?.destroy();
      },
      () => undefined,
    );
  }

  /** The exchange, as the messaging conventions name a RabbitMQ destination (amq.default for ''). */
  destination(): string {
    return this.#config.exchange || 'amq.default';
  }

  async send(event: OutboxEvent, ctx: SinkContext): Promise<void> {
    if (ctx.signal.aborted) throw new DispatchAbortedError('shutdown before publishing');
    const routingKey = renderTemplate(this.#config.routingKey, event);
    const target = `${this.#config.exchange || '(default exchange)'}/${routingKey}`;
    const mandatory = this.#config.mandatory ?? true;
    let timer: NodeJS.Timeout | undefined;
    let open: Promise<OpenChannel> | undefined;
    let returnedAs: string | undefined;
    try {
      open = this.#open();
      const { ch, returned } = await open;
      returned.delete(event.id);
      await Promise.race([
        new Promise<void>((resolve, reject) => {
          ch.publish(
            this.#config.exchange,
            routingKey,
            Buffer.from(JSON.stringify(eventBody(event))),
            {
              persistent: true,
              mandatory,
              messageId: event.id,
              contentType: 'application/json',
              timestamp: Math.floor(event.createdAt.getTime() / 1000),
              headers: {
                ...event.headers,
                'x-outbox-event-type': event.eventType,
                'x-restaurant-id': event.restaurantId,
                'x-outbox-attempt': event.attempt,
                ...(event.sequence !== null ? { [SEQUENCE_HEADER.toLowerCase()]: event.sequence } : {}),
              },
            },
            (err) => (err ? reject(err) : resolve()),
          );
        }),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => {
            // A broker that does not confirm in time is as good as gone (half-open TCP,
            // blocked connection): a fresh connection for the next send.
            if (open) this.#discard(open);
            reject(new Error(`no publisher confirm within ${this.timeoutMs} ms; connection reset`));
          }, this.timeoutMs);
        }),
      ]);
      returnedAs = returned.get(event.id);
      returned.delete(event.id);
    } catch (err) {
      if (ctx.signal.aborted) throw new DispatchAbortedError('shutdown interrupted the publish');
      const why = this.#lastChannelError && /closed/.test((err as Error).message) ? `${(err as Error).message}: ${this.#lastChannelError}` : (err as Error).message;
      this.#lastChannelError = undefined;
      throw new RetryableDispatchError(`RabbitMQ publish to ${target} failed: ${why}`, { cause: err });
    } finally {
      clearTimeout(timer);
    }
    if (returnedAs !== undefined) {
      // Retryable: a missing queue or binding is a deployment state an operator fixes (or
      // a consumer declares on start); the event waits for it instead of being dropped.
      throw new RetryableDispatchError(
        `RabbitMQ returned the message as unroutable (${returnedAs}): no queue is bound for ${target}; bind one, or set mandatory: false on the route to let the broker drop such messages`,
      );
    }
  }

  async close(): Promise<void> {
    const open = this.#channel;
    this.#channel = undefined;
    const c = await open?.catch(() => undefined);
    await c?.conn.close().catch(() => undefined);
  }
}
