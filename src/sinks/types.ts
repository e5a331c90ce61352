import type { OutboxEvent } from '../domain/event.ts';
import type { TenantTransaction } from '../tenancy/scope.ts';

export interface SinkContext {
  /** Aborted when the daemon shuts down mid-attempt. */
  signal: AbortSignal;
  /** Database work on the event's behalf, scoped to its tenant by RLS. */
  withTenant<T>(work: (trx: TenantTransaction) => Promise<T>): Promise<T>;
}

/**
 * Delivers one event. Resolve on acknowledgement; throw PermanentDispatchError to
 * dead-letter, RetryableDispatchError (or anything else) to retry.
 */
export interface Sink {
  readonly name: string;
  readonly type: string;
  /** Longest a send may take; the dispatcher will not start one its lease cannot cover. */
  readonly timeoutMs: number;
  send(event: OutboxEvent, ctx: SinkContext): Promise<void>;
  /** Where this event goes (subject, exchange, endpoint without query), for trace spans. */
  destination?(event: OutboxEvent): string;
  close?(): Promise<void>;
}
