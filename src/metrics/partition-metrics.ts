import { Counter, Gauge, type Registry } from 'prom-client';

/** Partition maintenance metrics (names are a public contract, see README). */
export class PartitionMetrics {
  readonly rotationRuns: Counter<'result'>;
  readonly rotationFailures: Counter<'table'>;
  readonly lastSuccess: Gauge<'table'>;
  readonly defaultRows: Gauge<'table'>;
  readonly retirementBlocked: Gauge<'table'>;
  /** Newest successful rotation per table, whoever ran it (this daemon or the CLI). */
  readonly #lastSuccessAt = new Map<string, number>();
  /** End of the last premade partition per table; runway is computed at scrape time. */
  readonly #lastPartitionEnd = new Map<string, number>();

  constructor(registry: Registry) {
    const registers = [registry];
    const ends = this.#lastPartitionEnd;
    new Gauge({
      name: 'outbox_partition_runway_seconds',
      help: 'Seconds until the last premade partition ends (inserts then land in the default partition).',
      labelNames: ['table'],
      registers,
      collect() {
        this.reset();
        for (const [table, end] of ends) this.set({ table }, Math.round((end - Date.now()) / 1000));
      },
    });
    this.rotationRuns = new Counter({
      name: 'outbox_partition_rotation_runs_total',
      help: 'Rotation runs by result: ok, failed (a step failed or retirement was blocked), deferred (a DDL step could not take its lock within PARTITION_LOCK_TIMEOUT_MS; retried next run), skipped (another replica held the lock).',
      labelNames: ['result'],
      registers,
    });
    for (const result of ['ok', 'failed', 'deferred', 'skipped']) this.rotationRuns.inc({ result }, 0);
    this.rotationFailures = new Counter({
      name: 'outbox_partition_rotation_failures_total',
      help: 'Rotation steps that failed, by table.',
      labelNames: ['table'],
      registers,
    });
    this.lastSuccess = new Gauge({
      name: 'outbox_partition_rotation_last_success_timestamp_seconds',
      help: 'Unix time of the last rotation of the table with no failed step.',
      labelNames: ['table'],
      registers,
    });
    this.defaultRows = new Gauge({
      name: 'outbox_partition_default_rows',
      help: 'Rows found in the default partition (rows whose month had no partition).',
      labelNames: ['table'],
      registers,
    });
    this.retirementBlocked = new Gauge({
      name: 'outbox_partition_retirement_blocked',
      help: 'Partitions past retention that cannot be retired because they hold undelivered events.',
      labelNames: ['table'],
      registers,
    });
  }

  /** Records a successful rotation of `table` at `seconds` (Unix); the gauge never moves back. */
  recordRotationSuccess(table: string, seconds: number): void {
    if (seconds <= (this.#lastSuccessAt.get(table) ?? 0)) return;
    this.#lastSuccessAt.set(table, seconds);
    this.lastSuccess.set({ table }, seconds);
  }

  setLastPartitionEnd(table: string, end: Date | null): void {
    if (end) this.#lastPartitionEnd.set(table, end.getTime());
  }
}
