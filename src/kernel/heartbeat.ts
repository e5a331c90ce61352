/**
 * Liveness from progress, not from the process answering HTTP: each loop that must keep
 * moving (the claim loop, the completer) beats when it makes progress, and /healthz turns
 * unhealthy when one has been silent for longer than its bound while it had work to do.
 * A loop blocked on a database that never answers stops beating; restarting the process
 * gets it fresh connections. See docs/adr/0009-database-timeouts-and-health.md.
 */
export class Heartbeat {
  readonly name: string;
  readonly boundMs: number;
  readonly #now: () => number;
  readonly #idle: () => boolean;
  #last: number;

  constructor(name: string, boundMs: number, opts: { now?: () => number; idle?: () => boolean } = {}) {
    this.name = name;
    this.boundMs = boundMs;
    this.#now = opts.now ?? Date.now;
    this.#idle = opts.idle ?? (() => false);
    this.#last = this.#now();
  }

  /** Records progress; `progressed = false` (the last round failed) leaves the clock running. */
  beat(progressed = true): void {
    if (progressed) this.#last = this.#now();
  }

  /** Milliseconds since the last progress, or 0 while there is nothing to do. */
  silentMs(): number {
    return this.#idle() ? 0 : Math.max(0, this.#now() - this.#last);
  }

  get stalled(): boolean {
    return this.silentMs() > this.boundMs;
  }
}

export interface LivenessReport {
  live: boolean;
  /** Loops silent for longer than their bound. */
  stalled: { loop: string; silentMs: number; boundMs: number }[];
}

/** The heartbeats /healthz checks. */
export class Watchdog {
  readonly #beats: Heartbeat[] = [];

  add(beat: Heartbeat): Heartbeat {
    this.#beats.push(beat);
    return beat;
  }

  check(): LivenessReport {
    const stalled = this.#beats
      .filter((b) => b.stalled)
      .map((b) => ({ loop: b.name, silentMs: b.silentMs(), boundMs: b.boundMs }));
    return { live: stalled.length === 0, stalled };
  }
}

/**
 * How long the claim loop may go without a successful claim round: two rounds of an idle
 * poll (with its jitter) whose claim ran into the client-side query timeout, plus slack for a
 * short backoff after a transient error.
 */
export function claimLoopBoundMs(pollIntervalMs: number, queryTimeoutMs: number): number {
  return 2 * (Math.ceil(pollIntervalMs * 1.2) + queryTimeoutMs) + 5000;
}

/** How long buffered outcomes may wait for a successful write: one timed-out write, the retry backoff cap, slack. */
export function completerBoundMs(queryTimeoutMs: number): number {
  return 2 * queryTimeoutMs + 5000 + 5000;
}
