import crypto from 'node:crypto';
import http from 'node:http';
import https from 'node:https';
import type { HttpSinkConfig } from '../config/routes.ts';
import type { OutboxEvent } from '../domain/event.ts';
import { DispatchAbortedError, PermanentDispatchError, RetryableDispatchError } from '../domain/dispatch-errors.ts';
import type { Sink, SinkContext } from './types.ts';
import { VERSION } from '../kernel/version.ts';

import { SEQUENCE_HEADER, eventBody } from './event-body.ts';

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

interface HttpAnswer {
  status: number;
  retryAfter: string | undefined;
  /** The start of the body, kept only for errors. */
  snippet: string;
}

class TimeoutError extends Error {}

/**
 * POSTs with node:http and a keep-alive agent (several times cheaper per request than
 * fetch). Redirects are not followed: a 3xx is a misconfigured URL, i.e. permanent.
 */
export class HttpSink implements Sink {
  readonly type = 'http';
  readonly name: string;
  readonly timeoutMs: number;
  readonly #url: URL;
  readonly #headers: Record<string, string>;
  readonly #secret: string | undefined;
  readonly #agent: http.Agent;
  readonly #request: typeof http.request;
  readonly #retryStatuses: ReadonlySet<number>;

  constructor(name: string, config: HttpSinkConfig, secret: string | undefined) {
    this.name = name;
    this.timeoutMs = config.timeoutMs;
    this.#url = new URL(config.url);
    this.#headers = config.headers;
    this.#secret = secret;
    this.#retryStatuses = new Set(config.retryStatuses ?? []);
    const secure = this.#url.protocol === 'https:';
    const agentOptions = { keepAlive: true, keepAliveMsecs: 1000, maxSockets: 256, maxFreeSockets: 64, scheduling: 'lifo' as const };
    this.#agent = secure ? new https.Agent(agentOptions) : new http.Agent(agentOptions);
    this.#request = secure ? https.request : http.request;
  }

  /** The endpoint without credentials, query or fragment: spans must not carry secrets. */
  destination(): string {
    return `${this.#url.origin}${this.#url.pathname}`;
  }

  async send(event: OutboxEvent, ctx: SinkContext): Promise<void> {
    const text = JSON.stringify(eventBody(event));
    // Forwarded producer headers first: the route's and the sink's own headers always win.
    const headers: Record<string, string> = {
      ...event.headers,
      ...this.#headers,
      'content-type': 'application/json',
      'content-length': String(Buffer.byteLength(text)),
      'user-agent': `outbox-dispatcher/${VERSION}`,
      'idempotency-key': event.id,
      'x-outbox-event-type': event.eventType,
      'x-restaurant-id': event.restaurantId,
      'x-outbox-attempt': String(event.attempt),
    };
    if (event.sequence !== null) headers[SEQUENCE_HEADER.toLowerCase()] = event.sequence;
    if (this.#secret !== undefined) {
      const timestamp = String(Math.floor(Date.now() / 1000));
      headers[TIMESTAMP_HEADER.toLowerCase()] = timestamp;
      headers[SIGNATURE_HEADER.toLowerCase()] = signBody(this.#secret, timestamp, text);
    }

    let answer: HttpAnswer;
    try {
      answer = await this.#post(text, headers, ctx.signal);
    } catch (err) {
      if (ctx.signal.aborted) throw new DispatchAbortedError('shutdown interrupted the HTTP call');
      if (err instanceof TimeoutError) throw new RetryableDispatchError(`timeout after ${this.timeoutMs} ms`, { cause: err });
      const e = err as NodeJS.ErrnoException;
      throw new RetryableDispatchError(`network error: ${e.code ?? e.message}`, { cause: err });
    }
    if (answer.status >= 200 && answer.status < 300) return;
    const message = `HTTP ${answer.status}${answer.snippet ? `: ${answer.snippet}` : ''}`;
    if (isRetryableStatus(answer.status) || this.#retryStatuses.has(answer.status)) {
      throw new RetryableDispatchError(message, { retryAfterMs: parseRetryAfter(answer.retryAfter ?? null) });
    }
    throw new PermanentDispatchError(message);
  }

  #post(text: string, headers: Record<string, string>, signal: AbortSignal): Promise<HttpAnswer> {
    return new Promise((resolve, reject) => {
      if (signal.aborted) return reject(new Error('aborted'));
      const req = this.#request(this.#url, { method: 'POST', agent: this.#agent, headers }, (res) => {
        const ok = res.statusCode! >= 200 && res.statusCode! < 300;
        let snippet = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => {
          if (!ok && snippet.length < 200) snippet += chunk;
        });
        res.on('end', () => {
          cleanup();
          const retryAfter = res.headers['retry-after'];
          resolve({ status: res.statusCode!, retryAfter: Array.isArray(retryAfter) ? retryAfter[0] : retryAfter, snippet: snippet.slice(0, 200).replace(/\s+/g, ' ').trim() });
        });
        res.on('error', fail);
      });
      const timer = setTimeout(() => req.destroy(new TimeoutError('timeout')), this.timeoutMs);
      const onAbort = () => req.destroy(new Error('aborted'));
      signal.addEventListener('abort', onAbort, { once: true });
      function cleanup() {
        clearTimeout(timer);
        signal.removeEventListener('abort', onAbort);
      }
      function fail(err: Error) {
        cleanup();
        reject(err);
      }
      req.on('error', fail);
      req.end(text);
    });
  }

  async close(): Promise<void> {
    this.#agent.destroy();
  }
}
