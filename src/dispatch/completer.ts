import type { Kysely } from 'kysely';
import { isDataError, sqlState } from '../db/errors.ts';
import { completeBatch, type Completion } from '../db/queries/outbox.ts';
import type { Outcome } from '../domain/outcome.ts';
import type { Database } from '../db/schema.ts';
import type { Logger } from '../kernel/log.ts';
import type { DispatcherMetrics } from '../metrics/metrics.ts';
import type { Heartbeat } from '../kernel/heartbeat.ts';
import { reconnectDelayMs, sleep, type Service } from '../kernel/service.ts';

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
 * one per event. A write that fails for a transient reason keeps the batch and retries
 * with backoff; one refused for its data is split so a single bad outcome cannot wedge
 * the rest (see #write). If the process dies first, the leases expire and the events
 * are delivered again (at-least-once), never lost.
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
  readonly #drainedListeners = new Set<() => void>();

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

  /** Called after each written batch: the dispatcher counts unwritten outcomes against its window. */
  onWritten(listener: () => void): void {
    this.#drainedListeners.add(listener);
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
        await this.#write(batch);
        this.#failures = 0;
        this.#heartbeat?.beat();
        for (const l of this.#drainedListeners) l();
      } catch (err) {
        this.#failures++;
        this.#metrics.completionFlushErrors.inc();
        this.#log.error({ err, buffered: this.#buffer.length, failures: this.#failures }, 'writing outcomes failed; will retry');
        return;
      }
    }
  }

  /**
   * Writes `batch`. A statement refused for its values (a data error) is never sent again
   * as is: the batch is split in halves until the refused outcome is alone, which is then
   * written with a safe error text instead. Any other failure (connection, timeout) is
   * thrown with the unwritten outcomes still buffered, to be retried with backoff.
   */
  async #write(batch: Completion[]): Promise<void> {
    let applied: Set<string>;
    try {
      applied = await completeBatch(this.#db, this.#workerId, batch);
    } catch (err) {
      if (!isDataError(err)) throw err;
      if (batch.length > 1) {
        const mid = Math.ceil(batch.length / 2);
        await this.#write(batch.slice(0, mid));
        await this.#write(batch.slice(mid));
        return;
      }
      await this.#writeRefused(batch[0]!, err);
      return;
    }
    this.#settle(batch, applied);
  }

  async #writeRefused(item: Completion, err: unknown): Promise<void> {
    const state = sqlState(err);
    const fallback: Completion = { ...item, outcome: withSafeError(item.outcome, state) };
    this.#log.error({ err, eventId: item.id, outcome: item.outcome.kind }, 'the database refused an outcome; writing it with a safe error text');
    try {
      this.#settle([item], await completeBatch(this.#db, this.#workerId, [fallback]));
      this.#metrics.completionsRefused.inc({ result: 'rewritten' });
    } catch (err2) {
      if (!isDataError(err2)) throw err2;
      // Nothing left to change: drop it. Its lease expires and the rescuer returns the
      // event to pending, so it is delivered again, never lost and never wedging the rest.
      this.#settle([item], new Set([item.id]));
      this.#metrics.completionsRefused.inc({ result: 'dropped' });
      this.#log.error({ err: err2, eventId: item.id }, 'outcome dropped: refused even with a safe error; the event is redelivered after its lease');
    }
  }

  /** Removes written outcomes from the buffer and reports those whose lease was lost. */
  #settle(batch: Completion[], applied: Set<string>): void {
    const head = this.#buffer.length >= batch.length && batch.every((c, i) => this.#buffer[i] === c);
    if (head) this.#buffer.splice(0, batch.length);
    else {
      const done = new Set(batch);
      this.#buffer = this.#buffer.filter((c) => !done.has(c));
    }
    const lost = batch.filter((c) => !applied.has(c.id));
    if (lost.length > 0) {
      this.#metrics.leaseLost.inc(lost.length);
      this.#log.warn(
        { lost: lost.length, ids: lost.map((c) => c.id).slice(0, 20) },
        'outcomes not written: lease expired and the events were re-claimed (they will be delivered again)',
      );
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

/** A retry delay beyond this in a refused outcome is taken as the cause and cut to it. */
const MAX_SAFE_DELAY_MS = 86_400_000;

/** The same outcome with nothing from outside in it: a fixed ASCII error text, a bounded delay. */
function withSafeError(outcome: Outcome, state: string | undefined): Outcome {
  const error = `the outcome (${outcome.kind}) was refused by the database (SQLSTATE ${state ?? 'unknown'}); its error text was dropped`;
  switch (outcome.kind) {
    case 'retry':
      return { kind: 'retry', error, delayMs: Math.min(Math.max(0, outcome.delayMs) || 0, MAX_SAFE_DELAY_MS) };
    case 'dead':
      return { kind: 'dead', error, reason: outcome.reason };
    case 'release':
      return { kind: 'release', delayMs: Math.min(Math.max(0, outcome.delayMs ?? 0) || 0, MAX_SAFE_DELAY_MS) };
    case 'done':
      return outcome;
  }
}
