/**
 * The contract of every long-lived part of the daemon (test/services.test.ts holds each to
 * it): start() and stop() are idempotent and concurrent calls share one run; stop() before
 * start() resolves and the service never runs; stop() while it runs waits for it to finish.
 * The daemon declares the order they stop in (Daemon.stages).
 */
export interface Service {
  readonly name: string;
  start(): Promise<void>;
  stop(): Promise<void>;
}

/**
 * A Service from start and stop steps, with the contract's guarantees: each step runs at
 * most once and concurrent calls share it. stop() waits for a start under way; stop()
 * before start() still runs the stop step (it releases what the constructor opened: a pool,
 * sinks) and start() never runs after it.
 */
export function serviceOf(name: string, steps: { start?: () => Promise<void>; stop?: () => Promise<void> }): Service {
  let started: Promise<void> | undefined;
  let stopped: Promise<void> | undefined;
  return {
    name,
    start: () => (stopped ? Promise.resolve() : (started ??= (steps.start?.() ?? Promise.resolve()))),
    stop: () =>
      (stopped ??= (async () => {
        await started?.catch(() => undefined);
        await steps.stop?.();
      })()),
  };
}

/** Resolves after `ms`, or at once when `signal` aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    }
    signal?.addEventListener('abort', done, { once: true });
  });
}

/** Base delay scaled by a random factor in [1 - spread, 1 + spread]. */
export function jitter(ms: number, spread = 0.2, random: () => number = Math.random): number {
  return Math.max(0, Math.round(ms * (1 - spread + 2 * spread * random())));
}

/** Capped exponential backoff with jitter for reconnect and error loops. */
export function reconnectDelayMs(attempt: number, baseMs = 250, maxMs = 30_000): number {
  return jitter(Math.min(maxMs, baseMs * 2 ** Math.min(attempt, 20)), 0.5);
}
