import type { Kysely } from 'kysely';
import { reportReplicaSinkStatus, type ReplicaSinkReport } from '../db/queries/replica-status.ts';
import type { Database } from '../db/schema.ts';
import { everyMs, PeriodicService } from '../kernel/periodic-service.ts';
import type { Logger } from '../kernel/log.ts';
import type { SinkCircuits } from './circuit-breaker.ts';

/** Where the reporter reads this replica's state. */
export interface ReplicaSinkSource {
  sinkNames: readonly string[];
  circuits: Pick<SinkCircuits, 'state'>;
  sendingTo(sink: string): number;
}

/**
 * Writes this replica's circuit state and sends in flight per sink to
 * outbox_dispatcher.replica_sink_status every OUTBOX_STATUS_REPORT_MS (migration 0016), so
 * `sinks status` shows every replica's, not only what one replica's /metrics says. On stop it
 * removes its rows: a stopped replica is not shown as a live one.
 */
export class ReplicaStatusReporter extends PeriodicService<number> {
  readonly #db: Kysely<Database>;
  readonly #workerId: string;
  readonly #intervalMs: number;
  readonly #source: ReplicaSinkSource;
  #started = false;

  constructor(db: Kysely<Database>, log: Logger, opts: { workerId: string; intervalMs: number; source: ReplicaSinkSource }) {
    super('replica-status', everyMs(opts.intervalMs, 0.1), log);
    this.#db = db;
    this.#workerId = opts.workerId;
    this.#intervalMs = opts.intervalMs;
    this.#source = opts.source;
  }

  /** The rows this replica reports now. */
  snapshot(): ReplicaSinkReport[] {
    return this.#source.sinkNames.map((sink) => ({ sink, circuit: this.#source.circuits.state(sink), in_flight: this.#source.sendingTo(sink) }));
  }

  async runOnce(): Promise<number> {
    return reportReplicaSinkStatus(this.#db, this.#workerId, this.#intervalMs, this.snapshot());
  }

  protected onError(err: unknown): void {
    this.log.warn({ err }, 'reporting sink status failed; `sinks status` shows this replica again after the next report');
  }

  override async start(): Promise<void> {
    this.#started = true;
    await super.start();
  }

  override async stop(): Promise<void> {
    await super.stop();
    if (!this.#started) return;
    this.#started = false;
    // Rows left behind stop counting after three report intervals anyway; this just makes it
    // immediate on a clean shutdown.
    await reportReplicaSinkStatus(this.#db, this.#workerId, this.#intervalMs, []).catch((err: unknown) => this.onError(err));
  }
}
