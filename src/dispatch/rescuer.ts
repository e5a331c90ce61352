import type { Kysely } from 'kysely';
import { rescueExpiredLeases, type RescueResult } from '../db/queries/outbox.ts';
import type { Database } from '../db/schema.ts';
import { everyMs, PeriodicService } from '../kernel/periodic-service.ts';
import type { Logger } from '../kernel/log.ts';
import type { DispatcherMetrics } from '../metrics/metrics.ts';

export interface RescuerOptions {
  intervalMs: number;
  maxAttempts: number;
  /** ADR 0007: with maxAttempts, when an expired last attempt dead-letters the event. */
  retryHorizonMs: number;
  batchSize?: number;
  /** True when a dead keyed event of this type should let its key move on (route ordering.onDeadHead = skip). */
  skipKeyOnDead?: (eventType: string) => boolean;
  /** Called after events went back to pending, so the claim loop looks at once. */
  onRequeued?: () => void;
}

/**
 * Returns events whose lease expired to pending (their worker was killed or hung).
 * Every replica runs it: the statement uses SKIP LOCKED and re-checks the lease,
 * so concurrent rescuers never double-handle an event and need no leader.
 */
export class LeaseRescuer extends PeriodicService<RescueResult> {
  readonly #db: Kysely<Database>;
  readonly #metrics: DispatcherMetrics;
  readonly #opts: RescuerOptions;

  constructor(db: Kysely<Database>, log: Logger, metrics: DispatcherMetrics, opts: RescuerOptions) {
    super('lease-rescuer', everyMs(opts.intervalMs), log);
    this.#db = db;
    this.#metrics = metrics;
    this.#opts = opts;
  }

  /** One pass: rescues every expired lease (in batches) and reports counts. */
  async runOnce(): Promise<RescueResult> {
    const total: RescueResult = { requeued: 0, deadLettered: 0 };
    const limit = this.#opts.batchSize ?? 1000;
    for (;;) {
      const r = await rescueExpiredLeases(this.#db, {
        limit,
        maxAttempts: this.#opts.maxAttempts,
        retryHorizonMs: this.#opts.retryHorizonMs,
        skipKeyOnDead: this.#opts.skipKeyOnDead,
      });
      total.requeued += r.requeued;
      total.deadLettered += r.deadLettered;
      if (r.requeued + r.deadLettered < limit) break;
    }
    if (total.requeued > 0) this.#metrics.leaseRescued.inc({ result: 'requeued' }, total.requeued);
    if (total.deadLettered > 0) {
      this.#metrics.leaseRescued.inc({ result: 'dead' }, total.deadLettered);
      this.#metrics.deadLettered.inc({ reason: 'lease_expired' }, total.deadLettered);
    }
    if (total.requeued + total.deadLettered > 0) {
      this.log.warn(total, 'rescued events with expired leases (a worker died or hung)');
      if (total.requeued > 0) this.#opts.onRequeued?.();
    }
    return total;
  }

  protected onError(err: unknown): void {
    this.log.error({ err }, 'lease rescue failed; retrying next interval');
  }
}
