import type { OutboxEvent } from '../domain/event.ts';

/** What every sink delivers as the message body (public contract, see README). */
export interface EventBody {
  id: string;
  eventType: string;
  restaurantId: string;
  payload: Record<string, unknown>;
  createdAt: string;
  attempt: number;
  /** Only for keyed events (additive: unkeyed bodies are unchanged). */
  orderingKey?: string;
  /** Only for keyed events; per key it never goes backwards (a redelivery repeats it). */
  sequence?: string;
}

/** Sink header carrying EventBody.sequence (HTTP; NATS and AMQP use the same name). */
export const SEQUENCE_HEADER = 'X-Outbox-Sequence';

export function eventBody(event: OutboxEvent): EventBody {
  return {
    id: event.id,
    eventType: event.eventType,
    restaurantId: event.restaurantId,
    payload: event.payload,
    createdAt: event.createdAt.toISOString(),
    attempt: event.attempt,
    ...(event.orderingKey !== null && event.sequence !== null ? { orderingKey: event.orderingKey, sequence: event.sequence } : {}),
  };
}

/** Fills `{restaurantId}`, `{eventType}` and `{eventId}` (validated at start-up: nothing else). */
export function renderTemplate(template: string, event: OutboxEvent): string {
  return template
    .replaceAll('{restaurantId}', event.restaurantId)
    .replaceAll('{eventType}', event.eventType)
    .replaceAll('{eventId}', event.id);
}
