import amqp from 'amqplib';
import type { RabbitMqSinkConfig } from '../config/routes.ts';
import type { OutboxEvent } from '../dispatch/event.ts';
import { DispatchAbortedError, RetryableDispatchError } from '../dispatch/errors.ts';
import { eventBody, renderTemplate } from './event-body.ts';
import type { Sink, SinkContext } from './types.ts';

/**
 * Publishes persistent messages on a confirm channel and waits for the broker's confirm
 * before the event counts as delivered. The event id is the AMQP `message_id`, for
 * consumers to dedupe redeliveries. A lost connection is re-opened on the next send.
 */
export class RabbitMqSink implements Sink {
  readonly type = 'rabbitmq';
  readonly name: string;
  readonly timeoutMs: number;
  readonly #config: RabbitMqSinkConfig;
  #channel: Promise<{ conn: amqp.ChannelModel; ch: amqp.ConfirmChannel }> | undefined;
  /** Why the broker closed the last channel (e.g. 404 NOT_FOUND for a missing exchange). */
  #lastChannelError: string | undefined;

  constructor(name: string, config: RabbitMqSinkConfig) {
    this.name = name;
    this.timeoutMs = config.timeoutMs;
    this.#config = config;
  }

  #open(): Promise<{ conn: amqp.ChannelModel; ch: amqp.ConfirmChannel }> {
    this.#channel ??= (async () => {
      const conn = await amqp.connect(this.#config.url, { timeout: Math.min(this.timeoutMs, 5000), clientProperties: { connection_name: 'outbox-dispatcher' } });
      const reset = (err?: Error) => {
        this.#channel = undefined;
        if (err?.message) this.#lastChannelError = err.message;
      };
      conn.on('error', reset);
      conn.on('close', () => reset());
      const ch = await conn.createConfirmChannel();
      ch.on('error', reset);
      ch.on('close', () => reset());
      return { conn, ch };
    })().catch((err: unknown) => {
      this.#channel = undefined;
      throw err;
    });
    return this.#channel;
  }

  async send(event: OutboxEvent, ctx: SinkContext): Promise<void> {
    if (ctx.signal.aborted) throw new DispatchAbortedError('shutdown before publishing');
    const routingKey = renderTemplate(this.#config.routingKey, event);
    let timer: NodeJS.Timeout | undefined;
    try {
      const { ch } = await this.#open();
      await Promise.race([
        new Promise<void>((resolve, reject) => {
          ch.publish(
            this.#config.exchange,
            routingKey,
            Buffer.from(JSON.stringify(eventBody(event))),
            {
              persistent: true,
              messageId: event.id,
              contentType: 'application/json',
              timestamp: Math.floor(event.createdAt.getTime() / 1000),
              headers: { 'x-outbox-event-type': event.eventType, 'x-restaurant-id': event.restaurantId, 'x-outbox-attempt': event.attempt },
            },
            (err) => (err ? reject(err) : resolve()),
          );
        }),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error(`no publisher confirm within ${this.timeoutMs} ms`)), this.timeoutMs);
        }),
      ]);
    } catch (err) {
      if (ctx.signal.aborted) throw new DispatchAbortedError('shutdown interrupted the publish');
      const why = this.#lastChannelError && /closed/.test((err as Error).message) ? `${(err as Error).message}: ${this.#lastChannelError}` : (err as Error).message;
      this.#lastChannelError = undefined;
      throw new RetryableDispatchError(`RabbitMQ publish to ${this.#config.exchange || '(default exchange)'}/${routingKey} failed: ${why}`, { cause: err });
    } finally {
      clearTimeout(timer);
    }
  }

  async close(): Promise<void> {
    const open = this.#channel;
    this.#channel = undefined;
    const c = await open?.catch(() => undefined);
    await c?.conn.close().catch(() => undefined);
  }
}
