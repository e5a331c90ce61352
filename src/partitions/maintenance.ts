import type { Kysely } from 'kysely';
import type { Database } from '../db/schema.ts';
import { onCron, PeriodicService } from '../kernel/periodic-service.ts';
import type { Logger } from '../kernel/log.ts';
import type { PartitionMetrics } from '../metrics/partition-metrics.ts';
import { PartitionRotator, type RotationReport } from './rotator.ts';
import { observePartitions } from './partition-sampler.ts';

export interface MaintenanceOptions {
  /** node-cron expression, evaluated in UTC. */
  cron: string;
  now?: () => Date;
  /** lock_timeout of each DDL transaction (PARTITION_LOCK_TIMEOUT_MS). */
  lockTimeoutMs?: number;
}

/**
 * Runs partition rotation at start-up and on a cron schedule. Every replica schedules
 * it; the rotator's lease lets one work while the others only refresh metrics.
 */
export class PartitionMaintenance extends PeriodicService<RotationReport> {
  readonly #db: Kysely<Database>;
  readonly #metrics: PartitionMetrics;
  readonly #opts: MaintenanceOptions;
  readonly #rotator: PartitionRotator;

  constructor(db: Kysely<Database>, log: Logger, metrics: PartitionMetrics, opts: MaintenanceOptions) {
    super('partition-maintenance', onCron(opts.cron, 'partition-rotation'), log);
    this.#db = db;
    this.#metrics = metrics;
    this.#opts = opts;
    this.#rotator = new PartitionRotator(db, log, opts.now, { lockTimeoutMs: opts.lockTimeoutMs });
  }

  protected onError(err: unknown): void {
    this.log.error({ err }, 'partition rotation failed');
  }

  /** One rotation, with metrics updated from its outcome. */
  async runOnce(): Promise<RotationReport> {
    let report: RotationReport;
    try {
      report = await this.#rotator.runOnce();
    } catch (err) {
      this.#metrics.rotationRuns.inc({ result: 'failed' });
      throw err;
    }
    if (!report.ran) {
      this.#metrics.rotationRuns.inc({ result: 'skipped' });
      await observePartitions(this.#db, this.#metrics, (this.#opts.now ?? (() => new Date()))());
      return report;
    }
    let failed = false;
    let deferred = false;
    for (const t of report.tables) {
      if (t.errors.length > 0) this.#metrics.rotationFailures.inc({ table: t.table }, t.errors.length);
      else if (t.deferred.length === 0) this.#metrics.recordRotationSuccess(t.table, report.at.getTime() / 1000);
      deferred ||= t.deferred.length > 0;
      this.#metrics.retirementBlocked.set({ table: t.table }, t.blocked.length);
      this.#metrics.defaultRows.set({ table: t.table }, t.defaultRows.reduce((a, d) => a + d.rows, 0));
      this.#metrics.setLastPartitionEnd(t.table, t.lastPartitionEnd);
      failed ||= t.errors.length > 0 || t.blocked.length > 0;
    }
    this.#metrics.rotationRuns.inc({ result: failed ? 'failed' : deferred ? 'deferred' : 'ok' });
    return report;
  }

}
