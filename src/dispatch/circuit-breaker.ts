import type { CircuitSettings } from '../config/env.ts';
import { DispatchAbortedError, PermanentDispatchError, RetryableDispatchError } from '../domain/dispatch-errors.ts';

// A circuit breaker per sink, so a sink outage turns into waiting, not into spent
// attempts and dead letters (ADR 0007). It lives in one process: each replica learns
// about an outage from its own sends.
//
// Trip rule: within the last `windowMs`, at least `failureThreshold` retryable failures
// AND at least `failureRatio` of all results failures. The ratio keeps a flaky but
// working sink (half its calls failing) closed; the minimum keeps a handful of failures
// of a quiet sink from tripping it.

export type CircuitState = 'closed' | 'half_open' | 'open';

/** The gauge value of each state (outbox_sink_circuit_state). */
export const CIRCUIT_STATE_VALUE: Record<CircuitState, number> = { closed: 0, half_open: 1, open: 2 };

export type Admission =
  /** Send it; `probe` when it is one of the half-open trial sends. */
  | { send: true; probe: boolean }
  /** Do not send: release the event unattempted, due again in `retryInMs`. */
  | { send: false; retryInMs: number };

/** How a send ended, as far as the sink's health is concerned. */
export type SendResult =
  /** Delivered, or refused for the event's own sake (e.g. HTTP 400): the sink answered. */
  | { ok: true }
  /** The sink failed (5xx, 429, timeout, network); `retryAfterMs` when it asked for a pause. */
  | { ok: false; retryAfterMs?: number | undefined }
  /** Cut short by shutdown: says nothing about the sink. */
  | { aborted: true };

/** What a failed send says about its sink's health. */
export function sendResultOf(err: unknown): SendResult {
  if (err instanceof DispatchAbortedError) return { aborted: true };
  // The sink answered and rejected this event (e.g. HTTP 400): it is up.
  if (err instanceof PermanentDispatchError) return { ok: true };
  return { ok: false, retryAfterMs: err instanceof RetryableDispatchError ? err.retryAfterMs : undefined };
}

/** Resolution of the sliding window. */
const WINDOW_BUCKETS = 10;

/** A Retry-After longer than this does not hold a whole sink (the event's own delay obeys it). */
const MAX_RETRY_AFTER_OPEN_MS = 600_000;

export class CircuitBreaker {
  readonly sink: string;
  readonly #settings: CircuitSettings;
  readonly #onChange: (state: CircuitState) => void;
  readonly #now: () => number;
  readonly #random: () => number;
  readonly #probeTimeoutMs: number;
  #state: CircuitState = 'closed';
  #openUntil = 0;
  /** Start times of the half-open probes not yet recorded. */
  #probes: number[] = [];
  /** Results per time bucket over the window (a ring of WINDOW_BUCKETS buckets). */
  readonly #ok = new Array<number>(WINDOW_BUCKETS).fill(0);
  readonly #failed = new Array<number>(WINDOW_BUCKETS).fill(0);
  #bucket = 0;

  constructor(
    sink: string,
    settings: CircuitSettings,
    opts: { onChange?: (state: CircuitState) => void; now?: () => number; random?: () => number; sendTimeoutMs?: number } = {},
  ) {
    this.sink = sink;
    this.#settings = settings;
    this.#onChange = opts.onChange ?? (() => {});
    this.#now = opts.now ?? Date.now;
    this.#random = opts.random ?? Math.random;
    this.#probeTimeoutMs = (opts.sendTimeoutMs ?? 60_000) + settings.openMs;
  }

  /**
   * Read after the open period has ended, the circuit is half-open (its next send probes), even
   * when no event has come along to try it: `sinks status` and the state gauge (updated by the
   * replica status reporter's reads) otherwise said `open` for a sink that nothing was holding.
   */
  get state(): CircuitState {
    if (this.#state === 'open' && this.#openUntil <= this.#now()) this.#enter('half_open');
    return this.#state;
  }

  /** Asked before each send. Every `{ send: true }` must be followed by one record(). */
  admit(): Admission {
    if (this.#settings.failureThreshold === 0) return { send: true, probe: false };
    if (this.#state === 'open') {
      const remaining = this.#openUntil - this.#now();
      // Held events come back spread over one open interval after the next probe, so a
      // large backlog is claimed about once per interval, not in a hot claim/release loop.
      if (remaining > 0) return { send: false, retryInMs: remaining + this.#spread() };
      this.#enter('half_open');
    }
    if (this.#state === 'half_open') {
      // A probe that never reports back (a send that outlived its own timeout, or lost to
      // a bug) must not leave the circuit half-open with no probe slot forever.
      const stale = this.#now() - this.#probeTimeoutMs;
      this.#probes = this.#probes.filter((t) => t > stale);
      if (this.#probes.length >= this.#settings.halfOpenProbes) return { send: false, retryInMs: this.#spread() };
      this.#probes.push(this.#now());
      return { send: true, probe: true };
    }
    return { send: true, probe: false };
  }

  record(result: SendResult, probe: boolean): void {
    if (this.#settings.failureThreshold === 0) return;
    // Only the number of probes in flight matters, not which one finished.
    if (probe) this.#probes.shift();
    if ('aborted' in result) return;
    const slot = this.#advance();
    if (result.ok) {
      this.#ok[slot]!++;
      // A success that started before the circuit opened proves little; a probe's does.
      if (probe && this.#state === 'half_open') this.#enter('closed');
      return;
    }
    this.#failed[slot]!++;
    const pause = Math.max(this.#settings.openMs, Math.min(result.retryAfterMs ?? 0, MAX_RETRY_AFTER_OPEN_MS));
    if (probe && this.#state === 'half_open') {
      this.#open(pause);
    } else if (this.#state === 'closed' && this.#tripped()) {
      this.#open(pause);
    }
  }

  #tripped(): boolean {
    let failed = 0;
    let total = 0;
    for (let i = 0; i < WINDOW_BUCKETS; i++) {
      failed += this.#failed[i]!;
      total += this.#failed[i]! + this.#ok[i]!;
    }
    return failed >= this.#settings.failureThreshold && failed >= this.#settings.failureRatio * total;
  }

  /** Moves the ring to the current bucket, clearing buckets that fell out of the window. */
  #advance(): number {
    const now = Math.floor(this.#now() / (this.#settings.windowMs / WINDOW_BUCKETS));
    const stale = Math.min(WINDOW_BUCKETS, Math.max(0, now - this.#bucket));
    for (let i = 1; i <= stale; i++) {
      const slot = (this.#bucket + i) % WINDOW_BUCKETS;
      this.#ok[slot] = 0;
      this.#failed[slot] = 0;
    }
    if (now > this.#bucket) this.#bucket = now;
    return this.#bucket % WINDOW_BUCKETS;
  }

  #clearWindow(): void {
    this.#ok.fill(0);
    this.#failed.fill(0);
  }

  #open(forMs: number): void {
    this.#openUntil = this.#now() + forMs;
    this.#enter('open');
  }

  #spread(): number {
    return Math.floor(this.#random() * this.#settings.openMs);
  }

  #enter(state: CircuitState): void {
    if (state === this.#state) return;
    this.#state = state;
    // A closed circuit starts counting afresh: the failures that opened it are history.
    if (state === 'closed') this.#clearWindow();
    this.#onChange(state);
  }
}

/** One breaker per sink name, created on first use, reporting state changes. */
export class SinkCircuits {
  readonly #settings: CircuitSettings;
  readonly #onChange: (sink: string, state: CircuitState) => void;
  readonly #breakers = new Map<string, CircuitBreaker>();

  constructor(settings: CircuitSettings, onChange: (sink: string, state: CircuitState) => void = () => {}) {
    this.#settings = settings;
    this.#onChange = onChange;
  }

  /** The state of `sink`'s breaker; closed before its first send. */
  state(sink: string): CircuitState {
    return this.#breakers.get(sink)?.state ?? 'closed';
  }

  /** The breaker of `sink`; `sendTimeoutMs` bounds how long a probe may go unreported. */
  for(sink: string, sendTimeoutMs?: number): CircuitBreaker {
    let b = this.#breakers.get(sink);
    if (!b) {
      b = new CircuitBreaker(sink, this.#settings, { onChange: (state) => this.#onChange(sink, state), sendTimeoutMs });
      this.#breakers.set(sink, b);
    }
    return b;
  }
}
