/**
 * Producer headers (capacity_outbox.headers): validation and the forwarding rule every sink
 * applies (README "Producer contract"). W3C Trace Context passes through under its own names
 * when valid; every other entry travels as `x-outbox-header-<name>`, a namespace no sink uses
 * for its own headers, so a producer can never set Content-Type, Idempotency-Key, a signature
 * or any other header the sink or the route sets.
 */

export const MAX_HEADERS_BYTES = 8192;
export const MAX_HEADER_ENTRIES = 32;
export const FORWARDED_PREFIX = 'x-outbox-header-';

const NAME = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/;
// Printable: no CR/LF or other control characters that could split a header.
const VALUE = /^[^\x00-\x1f\x7f]{0,4096}$/;
const TRACEPARENT = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-[^\s]*)?$/;
const TRACESTATE_MAX = 512;

export type HeadersCheck = { ok: true; headers: Record<string, string> } | { ok: false; reason: string };

/** Validates the column's value; null means no headers. Names are compared case-insensitively. */
export function checkHeaders(raw: unknown, textBytes: number | undefined): HeadersCheck {
  if (raw === null || raw === undefined) return { ok: true, headers: {} };
  if (typeof raw !== 'object' || Array.isArray(raw)) {
    return { ok: false, reason: `malformed: headers must be a JSON object of strings, got ${Array.isArray(raw) ? 'array' : typeof raw}` };
  }
  const size = textBytes ?? Buffer.byteLength(JSON.stringify(raw));
  if (size > MAX_HEADERS_BYTES) return { ok: false, reason: `malformed: headers are ${size} bytes, over ${MAX_HEADERS_BYTES}` };
  const entries = Object.entries(raw as Record<string, unknown>);
  if (entries.length > MAX_HEADER_ENTRIES) return { ok: false, reason: `malformed: ${entries.length} headers, over ${MAX_HEADER_ENTRIES}` };
  const headers: Record<string, string> = {};
  for (const [name, value] of entries) {
    if (!NAME.test(name)) return { ok: false, reason: `malformed: header name ${JSON.stringify(name.slice(0, 80))} is not letters, digits, - and _ (max 64)` };
    if (typeof value !== 'string' || !VALUE.test(value)) {
      return { ok: false, reason: `malformed: header ${name} must be a string of printable characters (max 4096)` };
    }
    const key = name.toLowerCase();
    if (key in headers) return { ok: false, reason: `malformed: header ${name} appears twice (names are case-insensitive)` };
    headers[key] = value;
  }
  return { ok: true, headers };
}

/** A W3C traceparent this daemon forwards (version 00 exactly, or a future version's prefix). */
export function validTraceparent(value: string | undefined): boolean {
  const m = value === undefined ? null : TRACEPARENT.exec(value);
  if (!m) return false;
  const [, version, traceId, parentId, , rest] = m;
  if (version === 'ff') return false;
  if (version === '00' && rest !== undefined) return false;
  return !/^0+$/.test(traceId!) && !/^0+$/.test(parentId!);
}

/**
 * What sinks add to a message for these (validated, lower-cased) headers. An invalid
 * traceparent is dropped, and tracestate with it (W3C: tracestate means nothing without it);
 * never fatal.
 */
export function forwardedHeaders(headers: Readonly<Record<string, string>>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, value] of Object.entries(headers)) {
    if (name === 'traceparent' || name === 'tracestate') continue;
    out[`${FORWARDED_PREFIX}${name}`] = value;
  }
  if (validTraceparent(headers.traceparent)) {
    out.traceparent = headers.traceparent!;
    const state = headers.tracestate;
    if (state !== undefined && state.length <= TRACESTATE_MAX) out.tracestate = state;
  }
  return out;
}
