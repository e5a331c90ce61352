import { EVENT_TYPE_MATCH_PATTERN, EVENT_TYPE_MATCH_RULE } from '../domain/event.ts';

/** A command-line argument is wrong; exit 64 with this message. */
export class UsageError extends Error {
  override name = 'UsageError';
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export function parseUuid(flag: string, value: string): string {
  if (!UUID.test(value)) throw new UsageError(`${flag} must be a UUID (got ${JSON.stringify(value)})`);
  return value.toLowerCase();
}

export function parseJsonObject(flag: string, value: string): Record<string, unknown> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(value);
  } catch (err) {
    throw new UsageError(`${flag} is not valid JSON: ${(err as Error).message}`);
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) throw new UsageError(`${flag} must be a JSON object`);
  return parsed as Record<string, unknown>;
}

export function parseTime(flag: string, value: string): Date {
  const d = new Date(value);
  if (Number.isNaN(d.getTime())) throw new UsageError(`${flag} must be an ISO-8601 time such as 2026-11-01T00:00:00Z (got ${JSON.stringify(value)})`);
  return d;
}

export function parsePositiveInt(flag: string, value: string, max: number): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1 || n > max) throw new UsageError(`${flag} must be a whole number between 1 and ${max}`);
  return n;
}

/** Event type patterns on the command line: the routes file's alphabet, nothing else. */
export function parseTypePattern(flag: string, value: string): string {
  if (!EVENT_TYPE_MATCH_PATTERN.test(value)) throw new UsageError(`${flag} ${EVENT_TYPE_MATCH_RULE}`);
  return value;
}
