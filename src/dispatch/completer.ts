import type { Kysely } from 'kysely';
import { completeBatch, type Completion } from '../db/queries/outbox.ts';
import type { Database } from '../db/schema.ts';
import type { Logger } from '../log.ts';
import type { DispatcherMetrics } from '../metrics/metrics.ts';
import type { Heartbeat } from '../lifecycle/heartbeat.ts';
import { reconnectDelayMs, sleep, type Service } from '../lifecycle/service.ts';

export interface CompleterOptions {
  workerId: string;
  /** Flush when this many outcomes are buffered... */
  maxBatch?: number;
  /** ...or this long after the first one arrived. */
  flushIntervalMs?: number;
  /** How long stop() keeps retrying a failing final flush before giving up. */
  stopTimeoutMs?: number;
  /** Beaten when outcomes start waiting and on every successful write (/healthz). */
  heartbeat?: Heartbeat;
}

/**
 * Buffers outcomes and writes them in batches: one UPDATE per batch instead of
 * one per event. A failed write keeps the batch and retries with backoff; if the
 * process dies first, the leases expire and the events are delivered again
 * (at-least-once), never lost.
 */
export class Completer implements Service {
  readonly name = 'completer';
  readonly #db: Kysely<Database>;
  readonly #log: Logger;
  readonly #metrics: DispatcherMetrics;
  readonly #workerId: string;
  readonly #maxBatch: number;
  readonly #flushIntervalMs: number;
  readonly #stopTimeoutMs: number;
  readonly #heartbeat: Heartbeat | undefined;
  #buffer: Completion[] = [];
  #timer: NodeJS.Timeout | undefined;
  #flushing: Promise<void> | undefined;
  #failures = 0;
  #stopped = false;

  constructor(db: Kysely<Database>, log: Logger, metrics: DispatcherMetrics, opts: CompleterOptions) {
    this.#db = db;
    this.#log = log.child({ component: 'completer' });
    this.#metrics = metrics;
    this.#workerId = opts.workerId;
    this.#maxBatch = opts.maxBatch ?? 500;
    this.#flushIntervalMs = opts.flushIntervalMs ?? 20;
    this.#stopTimeoutMs = opts.stopTimeoutMs ?? 10_000;
    this.#heartbeat = opts.heartbeat;
  }

  async start(): Promise<void> {}

  get pending(): number {
    return this.#buffer.length;
  }

  add(item: Completion): void {
    // The clock for "outcomes waiting to be written" starts with the first one.
    if (this.#buffer.length === 0) this.#heartbeat?.beat();
    this.#buffer.push(item);
    if (this.#buffer.length >= this.#maxBatch) this.#kick(0);
    else this.#kick(this.#flushIntervalMs);
  }

  #kick(delayMs: number): void {
    if (this.#flushing) return; // the running flush reschedules itself
    if (this.#timer && delayMs > 0) return;
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      void this.flush();
    }, delayMs);
  }

  /** Writes everything buffered now; resolves when the buffer is empty or a write failed. */
  flush(): Promise<void> {
    this.#flushing ??= this.#drain().finally(() => {
      this.#flushing = undefined;
      if (this.#buffer.length > 0 && !this.#stopped) {
        this.#kick(this.#failures > 0 ? reconnectDelayMs(this.#failures, 100, 5000) : 0);
      }
    });
    return this.#flushing;
  }

  async #drain(): Promise<void> {
    while (this.#buffer.length > 0) {
      const batch = this.#buffer.slice(0, this.#maxBatch);
      try {
        const applied = await completeBatch(this.#db, this.#workerId, batch);
        this.#buffer.splice(0, batch.length);
        this.#failures = 0;
        this.#heartbeat?.beat();
        const lost = batch.length - applied.size;
        if (lost > 0) {
          this.#metrics.leaseLost.inc(lost);
          this.#log.warn(
            { lost, ids: batch.filter((c) => !applied.has(c.id)).map((c) => c.id).slice(0, 20) },
            'outcomes not written: lease expired and the events were re-claimed (they will be delivered again)',
          );
        }
      } catch (err) {
        this.#failures++;
        this.#metrics.completionFlushErrors.inc();
        this.#log.error({ err, buffered: this.#buffer.length, failures: this.#failures }, 'writing outcomes failed; will retry');
        return;
      }
    }
  }

  /** Final flush: retries until written or stopTimeoutMs passes. */
  async stop(): Promise<void> {
    if (this.#stopped) return;
    clearTimeout(this.#timer);
    const deadline = Date.now() + this.#stopTimeoutMs;
    while (this.#buffer.length > 0 && Date.now() < deadline) {
      await this.flush();
      if (this.#buffer.length > 0) await sleep(Math.min(reconnectDelayMs(this.#failures, 100, 2000), Math.max(0, deadline - Date.now())));
    }
    this.#stopped = true;
    clearTimeout(this.#timer);
    if (this.#buffer.length > 0) {
      this.#log.error(
        { unwritten: this.#buffer.length },
        'could not write all outcomes before exit; those events stay leased and are redelivered when their lease expires',
      );
    }
  }
}
