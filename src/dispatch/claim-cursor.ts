/**
 * Where the next claim starts its walk of the due range (docs/adr/0006-backlog-proof-claim.md).
 *
 * Every claimed and completed event leaves a dead entry at the head of the pending range
 * of the dispatch index. While any snapshot holds the xmin horizon back, those entries can
 * be neither vacuumed nor marked dead, and a claim that starts at the head reads all of
 * them: claim cost grows with throughput times the age of the oldest snapshot. The cursor
 * starts each claim just behind what the previous one reached instead, and walks from the
 * head at most every `headScanIntervalMs`, which picks up events that became due behind
 * the cursor (a producer transaction that committed late, a lease rescued to an old
 * position). Those wait at most one interval longer; every other event is found at once.
 */
export interface ClaimCursorOptions {
  /** How often a claim walks from the head of the due range. */
  headScanIntervalMs: number;
  /** How far behind the last claimed position the walk starts. */
  slackMs: number;
  now?: () => number;
}

export class ClaimCursor {
  readonly #opts: Required<ClaimCursorOptions>;
  #reached: number | undefined;
  #lastHeadScan = Number.NEGATIVE_INFINITY;

  constructor(opts: ClaimCursorOptions) {
    this.#opts = { now: Date.now, ...opts };
  }

  /** The lower bound for the next claim, or null to walk from the head. */
  next(): Date | null {
    const now = this.#opts.now();
    if (this.#reached === undefined || now - this.#lastHeadScan >= this.#opts.headScanIntervalMs) {
      this.#lastHeadScan = now;
      return null;
    }
    return new Date(this.#reached - this.#opts.slackMs);
  }

  /** Records how far a claim reached (the largest due time it returned). */
  advance(dueAts: readonly Date[], from: Date | null): void {
    let max = from === null ? Number.NEGATIVE_INFINITY : from.getTime() + this.#opts.slackMs;
    if (from === null) this.#reached = undefined;
    for (const d of dueAts) max = Math.max(max, d.getTime());
    if (Number.isFinite(max)) this.#reached = max;
  }
}
