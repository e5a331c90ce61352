import type { Kysely } from 'kysely';
import { settlePendingKeys } from '../db/queries/ordering.ts';
import type { Database } from '../db/schema.ts';
import { everyMs, PeriodicService } from '../kernel/periodic-service.ts';
import type { Logger } from '../kernel/log.ts';

/**
 * Per-key ordering (ADR 0011): a head's completion never waits for a producer that holds its
 * key's lock; it leaves the key to be settled. This loop promotes those keys' next events once
 * the producers have committed. Idle, it costs one probe of a near-empty table per interval.
 */
export class OrderingSettler extends PeriodicService<number> {
  readonly #db: Kysely<Database>;
  readonly #onSettled: () => void;

  constructor(db: Kysely<Database>, log: Logger, opts: { intervalMs: number; onSettled: () => void }) {
    super('ordering-settler', everyMs(opts.intervalMs), log);
    this.#db = db;
    this.#onSettled = opts.onSettled;
  }

  /** Settles what it can now; returns how many keys moved on. */
  async runOnce(): Promise<number> {
    const n = await settlePendingKeys(this.#db, 500);
    if (n > 0) this.#onSettled();
    return n;
  }

  protected onError(err: unknown): void {
    this.log.warn({ err }, 'settling ordering keys failed; retrying next interval');
  }
}
