import type { Kysely } from 'kysely';
import { settlePendingKeys } from '../db/queries/ordering.ts';
import type { Database } from '../db/schema.ts';
import { runPeriodically, type Service } from '../kernel/service.ts';
import type { Logger } from '../kernel/log.ts';

/**
 * Per-key ordering (ADR 0011): a head's completion never waits for a producer that holds its
 * key's lock; it leaves the key to be settled. This loop promotes those keys' next events once
 * the producers have committed. Idle, it costs one probe of a near-empty table per interval.
 */
export class OrderingSettler implements Service {
  readonly name = 'ordering-settler';
  readonly #db: Kysely<Database>;
  readonly #log: Logger;
  readonly #intervalMs: number;
  readonly #onSettled: () => void;
  readonly #stop = new AbortController();
  #loop: Promise<void> | undefined;

  constructor(db: Kysely<Database>, log: Logger, opts: { intervalMs: number; onSettled: () => void }) {
    this.#db = db;
    this.#log = log.child({ component: 'ordering-settler' });
    this.#intervalMs = opts.intervalMs;
    this.#onSettled = opts.onSettled;
  }

  async start(): Promise<void> {
    this.#loop ??= this.#run();
  }

  /** Settles what it can now; returns how many keys moved on. */
  async runOnce(): Promise<number> {
    const n = await settlePendingKeys(this.#db, 500);
    if (n > 0) this.#onSettled();
    return n;
  }

  #run(): Promise<void> {
    return runPeriodically(this.#stop.signal, this.#intervalMs, () => this.runOnce(), (err) =>
      this.#log.warn({ err }, 'settling ordering keys failed; retrying next interval'),
    );
  }

  async stop(): Promise<void> {
    this.#stop.abort();
    await this.#loop;
  }
}
