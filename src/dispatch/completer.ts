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
  /** At most this many batches written at once, each on its own connection (see Completer). */
  maxWriters?: number;
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
 *
 * A second batch is written beside the first when a whole one is waiting (maxWriters, default
 * 2). A keyed batch spends most of its write settling keys (migration 0017: about 45 ms per 500
 * events against 16 ms unkeyed), and with one writer the completion connection was busy the
 * whole of a keyed drain while a quarter of the machine's CPU sat idle; the window counts
 * unwritten outcomes, so claims waited on it (docs/performance.md, "Per-key ordering"). Two
 * batches never hold the same event, and a key is settled by whichever batch finished its head
 * (the key lock is taken SKIP LOCKED, so two writers never wait on each other for a key).
 */
export class Completer implements Service {
  readonly name = 'completer';
  readonly #db: Kysely<Database>;
  readonly #log: Logger;
  readonly #metrics: DispatcherMetrics;
  readonly #workerId: string;
  readonly #maxBatch: number;
  readonly #flushIntervalMs: number;
  readonly #maxWriters: number;
  readonly #stopTimeoutMs: number;
  readonly #heartbeat: Heartbeat | undefined;
  /** Outcomes not yet taken by a writer. */
  #buffer: Completion[] = [];
  /** Outcomes taken by a writer and not yet written. */
  #writing = 0;
  readonly #writers = new Set<Promise<void>>();
  #timer: NodeJS.Timeout | undefined;
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
    this.#maxWriters = Math.max(1, opts.maxWriters ?? 2);
    this.#stopTimeoutMs = opts.stopTimeoutMs ?? 10_000;
    this.#heartbeat = opts.heartbeat;
  }

  async start(): Promise<void> {}

  /** Outcomes not yet written, buffered or being written. */
  get pending(): number {
    return this.#buffer.length + this.#writing;
  }

  /** Called after each written batch: the dispatcher counts unwritten outcomes against its window. */
  onWritten(listener: () => void): void {
    this.#drainedListeners.add(listener);
  }

  add(item: Completion): void {
    // The clock for "outcomes waiting to be written" starts with the first one.
    if (this.pending === 0) this.#heartbeat?.beat();
    this.#buffer.push(item);
    if (this.#buffer.length >= this.#maxBatch) this.#kick(0);
    else this.#kick(this.#flushIntervalMs);
  }

  #kick(delayMs: number): void {
    // A full batch starts a writer at once if one is free; otherwise a running writer takes the
    // buffer when it finishes its batch.
    if (delayMs === 0 && this.#failures === 0 && this.#writers.size < this.#maxWriters) {
      clearTimeout(this.#timer);
      this.#timer = undefined;
      void this.flush();
      return;
    }
    if (this.#writers.size > 0 || this.#timer) return;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      void this.flush();
    }, delayMs);
  }

  /**
   * Writes everything buffered now; resolves when the buffer is empty or a write failed.
   * Starts a writer if none runs, and a second beside it when a whole batch is waiting.
   */
  flush(): Promise<void> {
    while (
      this.#buffer.length > 0 &&
      this.#writers.size < this.#maxWriters &&
      (this.#writers.size === 0 || (this.#buffer.length >= this.#maxBatch && this.#failures === 0))
    ) {
      const writer: Promise<void> = this.#writeBuffered().finally(() => {
        this.#writers.delete(writer);
        if (this.#writers.size === 0 && this.#buffer.length > 0 && !this.#stopped) {
          this.#kick(this.#failures > 0 ? reconnectDelayMs(this.#failures, 100, 5000) : 0);
        }
      });
      this.#writers.add(writer);
    }
    return Promise.all([...this.#writers]).then(() => undefined);
  }

  /**
   * One writer: takes a batch at a time until the buffer is empty. Beside another writer it
   * takes only whole batches, so two writers do not split a trickle into small writes.
   */
  async #writeBuffered(): Promise<void> {
    while (this.#buffer.length >= (this.#writers.size > 1 ? this.#maxBatch : 1)) {
      const batch = this.#buffer.splice(0, this.#maxBatch);
      const unwritten = new Set(batch);
      this.#writing += batch.length;
      let failed = false;
      try {
        await this.#write(batch, unwritten);
        this.#failures = 0;
        this.#heartbeat?.beat();
      } catch (err) {
        // Back to the front of the buffer, retried with backoff; the part of a split batch
        // already written is not written again.
        this.#buffer.unshift(...batch.filter((c) => unwritten.has(c)));
        this.#failures++;
        failed = true;
        this.#metrics.completionFlushErrors.inc();
        this.#log.error({ err, buffered: this.#buffer.length, failures: this.#failures }, 'writing outcomes failed; will retry');
      } finally {
        this.#writing -= batch.length;
      }
      // Whatever was written left the window (a split batch may have written part of itself
      // before failing): the dispatcher hears of it now, not at its next poll.
      if (unwritten.size < batch.length) this.#notifyWritten();
      if (failed) return;
    }
  }

  #notifyWritten(): void {
    for (const l of this.#drainedListeners) {
      // A listener's error is not a failed write (the outcomes are written).
      try {
        l();
      } catch (err) {
        this.#log.error({ err }, 'a listener of written outcomes failed');
      }
    }
  }

  /**
   * Writes `batch`. A statement refused for its values (a data error) is never sent again
   * as is: the batch is split in halves until the refused outcome is alone, which is then
   * written with a safe error text instead. Any other failure (connection, timeout) is
   * thrown; what was written is deleted from `unwritten` as it goes, and the caller puts the
   * rest back to be retried with backoff.
   */
  async #write(batch: Completion[], unwritten: Set<Completion>): Promise<void> {
    let applied: Set<string>;
    try {
      applied = await completeBatch(this.#db, this.#workerId, batch);
    } catch (err) {
      if (!isDataError(err)) throw err;
      if (batch.length > 1) {
        const mid = Math.ceil(batch.length / 2);
        await this.#write(batch.slice(0, mid), unwritten);
        await this.#write(batch.slice(mid), unwritten);
        return;
      }
      await this.#writeRefused(batch[0]!, err);
      unwritten.delete(batch[0]!);
      return;
    }
    for (const c of batch) unwritten.delete(c);
    this.#reportLost(batch, applied);
  }

  async #writeRefused(item: Completion, err: unknown): Promise<void> {
    const state = sqlState(err);
    const fallback: Completion = { ...item, outcome: withSafeError(item.outcome, state) };
    this.#log.error({ err, eventId: item.id, outcome: item.outcome.kind }, 'the database refused an outcome; writing it with a safe error text');
    try {
      this.#reportLost([item], await completeBatch(this.#db, this.#workerId, [fallback]));
      this.#metrics.completionsRefused.inc({ result: 'rewritten' });
    } catch (err2) {
      if (!isDataError(err2)) throw err2;
      // Nothing left to change: drop it. Its lease expires and the rescuer returns the
      // event to pending, so it is delivered again, never lost and never wedging the rest.
      this.#metrics.completionsRefused.inc({ result: 'dropped' });
      this.#log.error({ err: err2, eventId: item.id }, 'outcome dropped: refused even with a safe error; the event is redelivered after its lease');
    }
  }

  /** Reports the outcomes of a written batch whose lease was lost (not applied). */
  #reportLost(batch: Completion[], applied: Set<string>): void {
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
    while (this.pending > 0 && Date.now() < deadline) {
      await this.flush();
      if (this.pending > 0) await sleep(Math.min(reconnectDelayMs(this.#failures, 100, 2000), Math.max(0, deadline - Date.now())));
    }
    this.#stopped = true;
    clearTimeout(this.#timer);
    // A writer a finishing writer started may still run: let it end before the pool closes.
    await Promise.all([...this.#writers]);
    if (this.pending > 0) {
      this.#log.error(
        { unwritten: this.pending },
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
