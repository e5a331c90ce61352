import { EVENT_TYPE_PATTERN, type OutboxEvent } from '../domain/event.ts';
import { jsonbTextBytes } from '../db/pool.ts';
import type { ClaimedRow } from '../db/queries/outbox.ts';
import { checkHeaders, forwardedHeaders } from './headers.ts';

export type EventCheck = { ok: true; event: OutboxEvent } | { ok: false; reason: string };

/**
 * Rejects events no sink should see. The database accepts them so a producer's
 * transaction never fails on them; the dispatcher dead-letters them with the reason.
 */
export function checkEvent(row: ClaimedRow, maxPayloadBytes: number): EventCheck {
  if (!EVENT_TYPE_PATTERN.test(row.event_type)) {
    return { ok: false, reason: `malformed: event_type ${JSON.stringify(row.event_type.slice(0, 80))} is not letters, digits and . _ : - (max 200)` };
  }
  // Measured by the claim in SQL; an oversized payload was never sent to this process.
  if (row.payload_bytes !== null && row.payload_bytes > maxPayloadBytes) {
    return { ok: false, reason: `malformed: payload is ${row.payload_bytes} bytes, over OUTBOX_MAX_PAYLOAD_BYTES (${maxPayloadBytes})` };
  }
  const payload = row.payload;
  if (payload === null || typeof payload !== 'object' || Array.isArray(payload)) {
    return { ok: false, reason: `malformed: payload must be a JSON object, got ${Array.isArray(payload) ? 'array' : payload === null ? 'null' : typeof payload}` };
  }
  const size = jsonbTextBytes(payload) ?? Buffer.byteLength(JSON.stringify(payload));
  if (size > maxPayloadBytes) {
    return { ok: false, reason: `malformed: payload is ${size} bytes, over OUTBOX_MAX_PAYLOAD_BYTES (${maxPayloadBytes})` };
  }
  const headers = checkHeaders(row.headers, row.headers !== null && typeof row.headers === 'object' ? jsonbTextBytes(row.headers) : undefined);
  if (!headers.ok) return headers;
  return {
    ok: true,
    event: {
      id: row.id,
      restaurantId: row.restaurant_id,
      eventType: row.event_type,
      payload: payload as Record<string, unknown>,
      createdAt: row.created_at,
      attempt: row.attempts,
      dedupeKey: row.dedupe_key,
      idempotencyKey: row.idempotency_key,
      headers: forwardedHeaders(headers.headers),
      orderingKey: row.ordering_key,
      sequence: row.ordering_seq,
    },
  };
}
