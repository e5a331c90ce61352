import type { Logger } from '../kernel/log.ts';
import type { OutboxEvent } from '../domain/event.ts';
import type { Sink } from './types.ts';

/** Writes one log line per event (never the payload body). For demos and dry runs. */
export class LogSink implements Sink {
  readonly type = 'log';
  readonly timeoutMs = 0;
  readonly name: string;
  readonly #log: Logger;
  readonly #level: 'info' | 'debug' | 'warn';

  constructor(name: string, log: Logger, level: 'info' | 'debug' | 'warn') {
    this.name = name;
    this.#log = log.child({ sink: name });
    this.#level = level;
  }

  async send(event: OutboxEvent): Promise<void> {
    this.#log[this.#level](
      {
        eventId: event.id,
        eventType: event.eventType,
        restaurantId: event.restaurantId,
        attempt: event.attempt,
        payloadBytes: Buffer.byteLength(JSON.stringify(event.payload)),
      },
      'event delivered to log sink',
    );
  }
}
