/** Event types: letters, digits and . _ : - (max 200; route match patterns add *). */
export const EVENT_TYPE_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,199}$/;

/** Patterns that select event types (routes file `match`, CLI `--type`): the same alphabet plus *. */
export const EVENT_TYPE_MATCH_PATTERN = /^[A-Za-z0-9._:*-]{1,200}$/;
export const EVENT_TYPE_MATCH_RULE = 'must be an event type pattern: letters, digits, . _ : - and * only';

/** What a sink is given: one event, already validated. */
export interface OutboxEvent {
  id: string;
  restaurantId: string;
  eventType: string;
  payload: Record<string, unknown>;
  createdAt: Date;
  /** 1 on the first attempt. */
  attempt: number;
  dedupeKey: string | null;
  idempotencyKey: string | null;
  /**
   * What sinks add to the message from the producer's headers column: traceparent and
   * tracestate when valid, everything else as x-outbox-header-<name> (src/dispatch/headers.ts).
   */
  headers: Readonly<Record<string, string>>;
  /** Present for keyed events: same tenant and key are delivered one at a time, in order. */
  orderingKey: string | null;
  /** Per key, strictly increasing in commit order (decimal string: a bigint). */
  sequence: string | null;
}
