import crypto from 'node:crypto';
import type { HttpSinkConfig } from '../config/routes.ts';
import type { OutboxEvent } from '../dispatch/event.ts';
import { DispatchAbortedError, PermanentDispatchError, RetryableDispatchError } from '../dispatch/errors.ts';
import type { Sink, SinkContext } from './types.ts';
import { VERSION } from '../version.ts';

/** The JSON body POSTed for every event (public contract, see README). */
export interface HttpEventBody {
  id: string;
  eventType: string;
  restaurantId: string;
  payload: Record<string, unknown>;
  createdAt: string;
  attempt: number;
}

export const SIGNATURE_HEADER = 'X-Outbox-Signature';
export const TIMESTAMP_HEADER = 'X-Outbox-Timestamp';

/** sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">, as receivers should recompute it. */
export function signBody(secret: string, timestamp: string, body: string): string {
  return `sha256=${crypto.createHmac('sha256', secret).update(`${timestamp}.${body}`).digest('hex')}`;
}

/** 408, 429 and 5xx are worth retrying; any other non-2xx is the event's fault. */
export function isRetryableStatus(status: number): boolean {
  return status === 408 || status === 429 || status >= 500;
}

/** Retry-After as delta-seconds or an HTTP date; undefined when absent or unreadable. */
export function parseRetryAfter(value: string | null, now = Date.now()): number | undefined {
  if (!value) return undefined;
  const trimmed = value.trim();
  if (/^\d+$/.test(trimmed)) return Number(trimmed) * 1000;
  const at = Date.parse(trimmed);
  return Number.isNaN(at) ? undefined : Math.max(0, at - now);
}

export class HttpSink implements Sink {
  readonly type = 'http';
  readonly name: string;
  readonly timeoutMs: number;
  readonly #url: string;
  readonly #headers: Record<string, string>;
  readonly #secret: string | undefined;

  constructor(name: string, config: HttpSinkConfig, secret: string | undefined) {
    this.name = name;
    this.timeoutMs = config.timeoutMs;
    this.#url = config.url;
    this.#headers = config.headers;
    this.#secret = secret;
  }

  async send(event: OutboxEvent, ctx: SinkContext): Promise<void> {
    const body: HttpEventBody = {
      id: event.id,
      eventType: event.eventType,
      restaurantId: event.restaurantId,
      payload: event.payload,
      createdAt: event.createdAt.toISOString(),
      attempt: event.attempt,
    };
    const text = JSON.stringify(body);
    const headers: Record<string, string> = {
      ...this.#headers,
      'content-type': 'application/json',
      'user-agent': `outbox-dispatcher/${VERSION}`,
      'idempotency-key': event.id,
      'x-outbox-event-type': event.eventType,
      'x-restaurant-id': event.restaurantId,
      'x-outbox-attempt': String(event.attempt),
    };
    if (this.#secret !== undefined) {
      const timestamp = String(Math.floor(Date.now() / 1000));
      headers[TIMESTAMP_HEADER.toLowerCase()] = timestamp;
      headers[SIGNATURE_HEADER.toLowerCase()] = signBody(this.#secret, timestamp, text);
    }

    const timeout = AbortSignal.timeout(this.timeoutMs);
    let res: Response;
    try {
      res = await fetch(this.#url, {
        method: 'POST',
        headers,
        body: text,
        redirect: 'manual',
        signal: AbortSignal.any([ctx.signal, timeout]),
      });
    } catch (err) {
      if (ctx.signal.aborted) throw new DispatchAbortedError('shutdown interrupted the HTTP call');
      if (timeout.aborted) throw new RetryableDispatchError(`timeout after ${this.timeoutMs} ms`, { cause: err });
      const cause = (err as { cause?: { code?: string; message?: string } }).cause;
      throw new RetryableDispatchError(`network error: ${cause?.code ?? cause?.message ?? (err as Error).message}`, { cause: err });
    }

    if (res.status >= 200 && res.status < 300) {
      await res.body?.cancel().catch(() => undefined);
      return;
    }
    const snippet = (await res.text().catch(() => '')).slice(0, 200).replace(/\s+/g, ' ').trim();
    const message = `HTTP ${res.status}${snippet ? `: ${snippet}` : ''}`;
    if (isRetryableStatus(res.status)) {
      throw new RetryableDispatchError(message, { retryAfterMs: parseRetryAfter(res.headers.get('retry-after')) });
    }
    throw new PermanentDispatchError(message);
  }
}
