import type { Kysely } from 'kysely';
import type { Database } from '../db/schema.ts';
import { everyMs, PeriodicService } from '../kernel/periodic-service.ts';
import type { Logger } from '../kernel/log.ts';
import { lastCliRotations } from '../db/queries/audit.ts';
import { partitionStatus } from './status.ts';
import type { PartitionMetrics } from '../metrics/partition-metrics.ts';

/**
 * Refreshes the partition gauges alerts depend on (default-partition rows, runway, blocked
 * retirements) from what is in the database, on its own schedule (PARTITION_SAMPLE_MS). They
 * used to change only when this daemon's rotation ran, so a default partition filled between
 * runs, or emptied by `partitions rotate` from the CLI, read stale for up to an hour (issue 13).
 */
export class PartitionSampler extends PeriodicService<void> {
  readonly #db: Kysely<Database>;
  readonly #metrics: PartitionMetrics;
  readonly #now: () => Date;

  constructor(db: Kysely<Database>, log: Logger, metrics: PartitionMetrics, opts: { intervalMs: number; now?: () => Date }) {
    super('partition-sampler', everyMs(opts.intervalMs, 0.1), log);
    this.#db = db;
    this.#metrics = metrics;
    this.#now = opts.now ?? (() => new Date());
  }

  protected onError(err: unknown): void {
    this.log.warn({ err }, 'sampling partition gauges failed');
  }

  async runOnce(): Promise<void> {
    await observePartitions(this.#db, this.#metrics, this.#now());
  }
}

/**
 * Sets runway, default-partition rows and blocked retirements of every registered table from the
 * database, and the last successful rotation where `partitions rotate` (audited) ran one later
 * than this daemon did.
 */
export async function observePartitions(db: Kysely<Database>, metrics: PartitionMetrics, now: Date): Promise<void> {
  const statuses = await partitionStatus(db, now);
  for (const s of statuses) {
    metrics.setLastPartitionEnd(s.table, s.lastPartitionEnd);
    metrics.defaultRows.set({ table: s.table }, s.defaultRows);
    metrics.retirementBlocked.set({ table: s.table }, s.partitions.filter((p) => p.retention === 'blocked').length);
  }
  for (const r of await lastCliRotations(db)) {
    for (const s of statuses) {
      if (r.table === null || r.table === s.table || s.table.endsWith(`.${r.table}`)) metrics.recordRotationSuccess(s.table, r.at.getTime() / 1000);
    }
  }
}
