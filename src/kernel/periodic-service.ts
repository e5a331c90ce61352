import cron from 'node-cron';
import type { Logger } from './log.ts';
import { jitter, sleep, type Service } from './service.ts';

/** Waits until the next run is due; resolves at once when `signal` aborts. */
export type Schedule = (signal: AbortSignal) => Promise<void>;

/** Every `intervalMs`, scaled by a random factor in [1 - spread, 1 + spread] so replicas drift apart. */
export function everyMs(intervalMs: number, spread = 0.2): Schedule {
  return (signal) => sleep(jitter(intervalMs, spread), signal);
}

/**
 * At the next time a node-cron expression names (UTC). A run that outlasts a scheduled time
 * skips it: runs never overlap.
 */
export function onCron(expression: string, name: string): Schedule {
  return (signal) =>
    new Promise<void>((resolve) => {
      if (signal.aborted) return resolve();
      const task = cron.schedule(expression, () => done(), { timezone: 'UTC', name });
      function done() {
        signal.removeEventListener('abort', done);
        void task.destroy();
        resolve();
      }
      signal.addEventListener('abort', done, { once: true });
    });
}

/**
 * A service that calls runOnce() at start and then on its schedule until stopped (the
 * rescuer, the ordering settler, the backlog sampler, partition maintenance). runOnce() is
 * public so tests and commands run one pass directly; a failed pass goes to onError() and
 * the next one runs on schedule. start() and stop() are idempotent; stop() before start()
 * means the service never runs; stop() waits for a running pass to finish.
 */
export abstract class PeriodicService<Report = unknown> implements Service {
  readonly name: string;
  /** The service's logger, its lines tagged with its name as `component`. */
  protected readonly log: Logger;
  readonly #schedule: Schedule;
  readonly #stop = new AbortController();
  #loop: Promise<void> | undefined;

  protected constructor(name: string, schedule: Schedule, log: Logger) {
    this.name = name;
    this.log = log.child({ component: name });
    this.#schedule = schedule;
  }

  /** One pass; what it did, for tests and logs. */
  abstract runOnce(): Promise<Report>;

  /** A pass failed; the service keeps its schedule. */
  protected abstract onError(err: unknown): void;

  async start(): Promise<void> {
    if (this.#stop.signal.aborted) return;
    this.#loop ??= this.#run(this.#stop.signal);
  }

  async stop(): Promise<void> {
    this.#stop.abort();
    await this.#loop;
  }

  async #run(signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      try {
        await this.runOnce();
      } catch (err) {
        this.onError(err);
      }
      await this.#schedule(signal);
    }
  }
}
