import type { OutboxEvent } from '../dispatch/event.ts';

/** What every sink delivers as the message body (public contract, see README). */
export interface EventBody {
  id: string;
  eventType: string;
  restaurantId: string;
  payload: Record<string, unknown>;
  createdAt: string;
  attempt: number;
}

export function eventBody(event: OutboxEvent): EventBody {
  return {
    id: event.id,
    eventType: event.eventType,
    restaurantId: event.restaurantId,
    payload: event.payload,
    createdAt: event.createdAt.toISOString(),
    attempt: event.attempt,
  };
}

/** Fills `{restaurantId}`, `{eventType}` and `{eventId}` (validated at start-up: nothing else). */
export function renderTemplate(template: string, event: OutboxEvent): string {
  return template
    .replaceAll('{restaurantId}', event.restaurantId)
    .replaceAll('{eventType}', event.eventType)
    .replaceAll('{eventId}', event.id);
}
