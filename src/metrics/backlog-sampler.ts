import type { Kysely } from 'kysely';
import { sampleBacklog } from '../db/queries/backlog.ts';
import { sampleBlockedKeys } from '../db/queries/ordering.ts';
import type { Database } from '../db/schema.ts';
import { everyMs, PeriodicService } from '../kernel/periodic-service.ts';
import type { Logger } from '../kernel/log.ts';
import type { DispatcherMetrics } from './metrics.ts';

/** Refreshes the backlog and lag gauges every `intervalMs` (bounded, index-only work). */
export class BacklogSampler extends PeriodicService<void> {
  readonly #db: Kysely<Database>;
  readonly #metrics: DispatcherMetrics;
  readonly #cap: number;

  constructor(db: Kysely<Database>, log: Logger, metrics: DispatcherMetrics, opts: { intervalMs: number; cap: number }) {
    super('backlog-sampler', everyMs(opts.intervalMs, 0.1), log);
    this.#db = db;
    this.#metrics = metrics;
    this.#cap = opts.cap;
  }

  async runOnce(): Promise<void> {
    const s = await sampleBacklog(this.#db, this.#cap);
    for (const [status, n] of Object.entries(s.counts)) this.#metrics.backlog.set({ status }, n);
    this.#metrics.oldestDueAge.set(s.oldestDueAgeSeconds);
    const blocked = await sampleBlockedKeys(this.#db, this.#cap);
    this.#metrics.orderingBlockedKeys.set(blocked.count);
    this.#metrics.orderingOldestBlocked.set(blocked.oldestSeconds);
  }

  protected onError(err: unknown): void {
    this.#metrics.backlogSampleErrors.inc();
    this.log.warn({ err }, 'sampling the backlog failed');
  }
}
