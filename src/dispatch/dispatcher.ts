import type { Kysely } from 'kysely';
import type { DispatchSettings } from '../config/env.ts';
import { findRoute, type Route } from '../config/routes.ts';
import { claimBatch, type ClaimedRow } from '../db/queries/outbox.ts';
import type { Outcome } from '../domain/outcome.ts';
import type { Database } from '../db/schema.ts';
import type { Heartbeat } from '../kernel/heartbeat.ts';
import { jitter, reconnectDelayMs, sleep, type Service } from '../kernel/service.ts';
import type { Logger } from '../kernel/log.ts';
import type { DispatcherMetrics } from '../metrics/metrics.ts';
import type { Sink } from '../sinks/types.ts';
import type { DispatchTracer } from '../tracing/tracer.ts';
import type { TenantScope } from '../tenancy/scope.ts';
import type { Completer } from './completer.ts';
import { ClaimCursor } from './claim-cursor.ts';
import { checkEvent } from './check-event.ts';
import { sendResultOf, type SinkCircuits } from './circuit-breaker.ts';
import { sendFitsInLease } from '../config/lease.ts';
import { outcomeForFailure } from './retry-policy.ts';
import { TenantQueue } from './tenant-queue.ts';
import { Wakeup } from './wakeup.ts';
import type { SinkPauseWatcher } from './sink-pauses.ts';
import { parkEvent } from '../db/queries/sink-pauses.ts';

export interface DispatcherDeps {
  db: Kysely<Database>;
  log: Logger;
  metrics: DispatcherMetrics;
  completer: Completer;
  routes: readonly Route[];
  sinks: ReadonlyMap<string, Sink>;
  tenantScope: TenantScope;
  settings: DispatchSettings;
  /** Beaten once per loop round; progress only while claims succeed (/healthz). */
  heartbeat?: Heartbeat;
  /** Per-sink circuit breakers; without it every event is sent. */
  circuits?: SinkCircuits;
  /** Sinks paused by an operator (`sinks pause`); without it no sink is paused. */
  pauses?: SinkPauseWatcher;
}

export type DispatcherState = 'idle' | 'running' | 'draining' | 'stopped';

/**
 * The claim loop. Claims due events in batches (one statement each), dispatches
 * them with bounded concurrency, and hands outcomes to the completer. A NOTIFY
 * pokes it; a jittered poll is the source of truth.
 */
export class Dispatcher implements Service {
  readonly name = 'dispatcher';
  readonly #d: DispatcherDeps;
  readonly #log: Logger;
  readonly #limit: TenantQueue;
  readonly #wakeup = new Wakeup();
  readonly #stopLoop = new AbortController();
  /** Aborts sends still running when the shutdown grace period ends. */
  readonly #abortSends = new AbortController();
  readonly #tasks = new Set<Promise<void>>();
  readonly #maxHeld: number;
  readonly #cursor = new ClaimCursor({ headScanIntervalMs: 1000, slackMs: 1000 });
  /** Where the next claim's fair lane starts: the last tenant the previous one visited (ADR 0012). */
  #tenantCursor: string | null = null;
  readonly #fair: { rows: number; perTenant: number; tenants: number };
  #held = 0;
  /**
   * A poke (NOTIFY, rescue, a settled key) arrived since the last claim began: events may be
   * due that no claim has seen yet. While the window is too full for a whole batch, this is
   * what lets a fair top-up claim run (ADR 0012, "Between full claims").
   */
  #eventsArrived = false;
  #lastClaimAt = 0;
  /** When a claim last ran the fair lane (see FAIR_LANE_INTERVAL_MS). */
  #lastFairAt = Number.NEGATIVE_INFINITY;
  /**
   * How far behind real time the last full claim's oldest-first walk was: its start against the
   * newest due time its head lane reached (0 after a claim that took everything due).
   */
  #headLagMs = Number.POSITIVE_INFINITY;
  /** Sends running now, by sink (`sinks status` through the replica status reporter). */
  readonly #sending = new Map<string, number>();
  #waitingForSlot = false;
  /** While waiting for slots: the free slots that would let the loop claim (see #run). */
  #wakeAtFree = 0;
  #state: DispatcherState = 'idle';
  #loop: Promise<void> | undefined;
  #stopping: Promise<void> | undefined;
  /** Undefined while tracing is off (README "Tracing"). */
  #tracer: DispatchTracer | undefined;

  constructor(deps: DispatcherDeps) {
    this.#d = deps;
    this.#log = deps.log.child({ component: 'dispatcher' });
    this.#limit = new TenantQueue(deps.settings.concurrency);
    // Claimed-but-unfinished events are bounded: memory stays flat however deep the backlog.
    // The window holds the sends in flight, the batch queued behind them and room for the
    // next full claim.
    this.#maxHeld = deps.settings.concurrency + 2 * deps.settings.batchSize;
    this.#fair = fairLane(deps.settings.batchSize, deps.settings.fairSharePercent);
    deps.completer.onWritten(() => {
      if (this.#waitingForSlot) this.#wakeup.poke();
    });
  }

  get state(): DispatcherState {
    return this.#state;
  }

  /** Sends to `sink` running now (claimed events waiting for a send slot are not counted). */
  sendingTo(sink: string): number {
    return this.#sending.get(sink) ?? 0;
  }

  /** Events claimed and not yet finished. */
  get held(): number {
    return this.#held;
  }

  async start(): Promise<void> {
    if (this.#state !== 'idle') return;
    this.#state = 'running';
    this.#loop = this.#run();
  }

  /** Dispatch spans from now on; set before start (the SDK loads asynchronously). */
  traceWith(tracer: DispatchTracer | undefined): void {
    this.#tracer = tracer;
  }

  /** A hint that events may be due (NOTIFY, rescue, reconnect). */
  poke(): void {
    this.#eventsArrived = true;
    this.#wakeup.poke();
  }

  /**
   * Claims only full batches (when a whole batch fits in the window) and keeps one batch
   * queued behind the sends in flight, so a send slot never waits for a claim round trip
   * while events are due. Claims run one at a time on this loop; completions are written
   * by the completer on their own connection, so neither queues behind the other.
   *
   * Between full claims, when events have arrived (a NOTIFY) and the window has room for the
   * fair lane's share, a top-up claim of that share is made, all of it tenant by tenant: a
   * deep backlog makes full claims come only every batch / drain rate (about 150 ms at 3.5k/s),
   * and without the top-up another tenant's new event waited up to two of those gaps.
   */
  async #run(): Promise<void> {
    const { settings, metrics } = this.#d;
    let failures = 0;
    while (!this.#stopLoop.signal.aborted) {
      this.#d.heartbeat?.beat(failures === 0);
      // Outcomes not yet written count too: if completions fall behind, claiming slows down
      // instead of buffering outcomes without bound.
      const free = this.#free();
      let limit = settings.batchSize;
      let fairRows = this.#fair.rows;
      let topUpClaim = false;
      if (free < settings.batchSize) {
        const topUp = this.#topUpWaitMs(free);
        if (topUp !== 0) {
          // What a finished send must free to be worth a wake-up (a poke wakes the loop anyway).
          this.#wakeAtFree = this.#eventsArrived && this.#fair.rows > 0 ? this.#fair.rows : settings.batchSize;
          this.#waitingForSlot = true;
          await this.#wakeup.wait(topUp ?? settings.pollIntervalMs);
          this.#waitingForSlot = false;
          continue;
        }
        limit = fairRows = this.#fair.rows;
        topUpClaim = true;
      }
      const after = this.#cursor.next();
      const claimedAt = Date.now();
      // The fair lane serves events the oldest-first walk would reach only behind a backlog, so
      // it runs only while the walk is behind (FAIR_LAG_MS), and then for events that arrived
      // since the last claim (a producer's NOTIFY, a settled key, a rescue) and, at least every
      // FAIR_LANE_INTERVAL_MS, for anything else (retries coming due, events committed while
      // notifications were lost). Its tenant probes cost about 13 µs of PostgreSQL CPU per event
      // when run on every claim; a top-up is always fair.
      const behind = this.#headLagMs > FAIR_LAG_MS;
      const fairDue = this.#eventsArrived || claimedAt - this.#lastFairAt >= FAIR_LANE_INTERVAL_MS;
      if (!topUpClaim && !(behind && fairDue)) fairRows = 0;
      if (fairRows > 0) this.#lastFairAt = claimedAt;
      // Cleared before the claim's snapshot: a NOTIFY during the claim sets it again.
      this.#eventsArrived = false;
      this.#lastClaimAt = claimedAt;
      let rows: ClaimedRow[];
      const endTimer = metrics.claimDuration.startTimer();
      try {
        rows = await claimBatch(this.#d.db, {
          workerId: settings.workerId,
          limit,
          leaseMs: settings.leaseMs,
          maxPayloadBytes: settings.maxPayloadBytes,
          after,
          tenantAfter: this.#tenantCursor,
          fairRows,
          fairPerTenant: this.#fair.perTenant,
          fairTenants: this.#fair.tenants,
        });
        endTimer();
        failures = 0;
      } catch (err) {
        failures++;
        metrics.claimErrors.inc();
        // Whatever arrived before this claim is still unseen.
        this.#eventsArrived = true;
        const delay = reconnectDelayMs(failures, 250, 15_000);
        this.#log.error({ err, failures, retryInMs: delay }, 'claiming events failed');
        await sleep(delay, this.#stopLoop.signal);
        continue;
      }
      metrics.claimBatchSize.observe(rows.length);
      // Only the head lane walks the due range in order; a fair-lane row (another tenant's event
      // due just now) says nothing about how far that walk got. Advancing past it made the next
      // claims start a second before now and skip the rest of an old backlog until the next
      // walk from the head: behind a 100k backlog the backlog drained at half its rate.
      const headDue = rows.filter((r) => !r.fair).map((r) => r.due_at);
      this.#cursor.advance(headDue, after);
      if (rows.length < limit) this.#headLagMs = 0;
      else if (headDue.length > 0) this.#headLagMs = claimedAt - Math.max(...headDue.map((d) => d.getTime()));
      if (rows.length > 0) this.#tenantCursor = rows[0]!.tenant_cursor;
      for (const row of rows) this.#schedule(row, claimedAt + settings.leaseMs);
      if (rows.length < limit && !this.#stopLoop.signal.aborted) {
        await this.#wakeup.wait(jitter(settings.pollIntervalMs));
      }
    }
  }

  /**
   * With `free` slots, less than a batch: 0 to make a top-up claim now, a wait in ms until one
   * may be made, or undefined when none is due (wait for slots or a poke). Top-ups are at
   * least TOP_UP_GAP_MS apart, so a producer notifying continuously cannot turn every claim
   * into a small one.
   */
  #topUpWaitMs(free: number): number | undefined {
    if (!this.#eventsArrived || this.#fair.rows === 0 || free < this.#fair.rows) return undefined;
    return Math.max(0, this.#lastClaimAt + TOP_UP_GAP_MS - Date.now());
  }

  /** Window slots free: claimed events not finished and outcomes not written both count. */
  #free(): number {
    return this.#maxHeld - this.#held - this.#d.completer.pending;
  }

  #schedule(row: ClaimedRow, leaseDeadline: number): void {
    this.#held++;
    this.#d.metrics.inflight.inc();
    const task = this.#limit.run(row.restaurant_id, () => this.#handle(row, leaseDeadline))
      .catch((err: unknown) => this.#log.error({ err, eventId: row.id }, 'unexpected error handling event'))
      .finally(() => {
        this.#held--;
        this.#d.metrics.inflight.dec();
        this.#tasks.delete(task);
        // A finished event's outcome usually takes its slot in the completer's buffer, leaving
        // the window as full as before: waking the loop for each of them cost a loop round per
        // event for nothing. The completer's written batches wake it (onWritten); this wakes it
        // when an event left without an outcome to write (parked) and freed enough.
        if (this.#waitingForSlot && this.#free() >= this.#wakeAtFree) this.#wakeup.poke();
      });
    this.#tasks.add(task);
  }

  async #handle(row: ClaimedRow, leaseDeadline: number): Promise<void> {
    const { settings, metrics, routes, sinks } = this.#d;
    const attempt = row.attempts;
    const route = findRoute(routes, row.event_type);
    const finish = (outcome: Outcome, sink?: string) => {
      this.#d.completer.add({
        id: row.id,
        createdAtKey: row.created_at_key,
        attempt,
        outcome,
        skipKeyIfDead: row.ordering_key !== null && route?.onDeadHead === 'skip',
        keyed: row.ordering_key !== null,
      });
      this.#record(row, outcome, sink);
    };

    if (this.#state !== 'running') {
      metrics.eventsReleased.inc({ reason: 'shutdown' });
      return finish({ kind: 'release' }, undefined);
    }

    const checked = checkEvent(row, settings.maxPayloadBytes);
    if (!checked.ok) return finish({ kind: 'dead', error: checked.reason, reason: 'malformed' });
    if (!route) return finish({ kind: 'dead', error: `unrouted: no route in OUTBOX_ROUTES matches event type ${row.event_type}`, reason: 'unrouted' });
    const sink = sinks.get(route.sinkName)!;

    // A paused sink's event goes back unattempted and parked: it is not claimed again until
    // `sinks resume` (ADR 0014). false: the pause ended meanwhile; send it.
    if (this.#d.pauses?.isPaused(sink.name)) {
      try {
        if (await parkEvent(this.#d.db, { sink: sink.name, workerId: settings.workerId, id: row.id, createdAtKey: row.created_at_key, attempt })) {
          metrics.eventsReleased.inc({ reason: 'sink_paused' });
          return;
        }
      } catch (err) {
        this.#log.warn({ err, eventId: row.id, sink: sink.name }, 'parking an event of a paused sink failed; released instead');
        metrics.eventsReleased.inc({ reason: 'sink_paused' });
        return finish({ kind: 'release', delayMs: 1000 }, sink.name);
      }
    }

    // Never start a call the lease cannot cover: another worker could claim the event
    // mid-call. The same rule validated the sink's timeout at startup (config/lease.ts).
    if (!sendFitsInLease(sink.timeoutMs, settings.leaseMs, Date.now() - (leaseDeadline - settings.leaseMs))) {
      metrics.eventsReleased.inc({ reason: 'lease_at_risk' });
      return finish({ kind: 'release' }, sink.name);
    }

    // While the sink's circuit is open its events wait, unattempted (the claim's attempt
    // is given back), instead of spending their retry budget on a sink that is down.
    const breaker = this.#d.circuits?.for(sink.name, sink.timeoutMs);
    const admission = breaker?.admit() ?? { send: true as const, probe: false };
    if (!admission.send) {
      metrics.eventsReleased.inc({ reason: 'circuit_open' });
      return finish({ kind: 'release', delayMs: admission.retryInMs }, sink.name);
    }

    const endTimer = metrics.dispatchDuration.startTimer({ sink: sink.name });
    let outcome: Outcome;
    const span = this.#tracer?.startAttempt({
      eventId: row.id,
      eventType: row.event_type,
      attempt,
      headers: checked.event.headers,
      sinkName: sink.name,
      sinkType: sink.type,
      destination: sink.destination?.(checked.event) ?? sink.name,
    });
    this.#sending.set(sink.name, this.sendingTo(sink.name) + 1);
    try {
      await sink.send(span ? { ...checked.event, headers: span.headers } : checked.event, {
        signal: this.#abortSends.signal,
        withTenant: (work) => this.#d.tenantScope.run(row.restaurant_id, work),
      });
      outcome = { kind: 'done' };
      breaker?.record({ ok: true }, admission.probe);
    } catch (err) {
      outcome = outcomeForFailure(err, { attempt, ageMs: Date.now() - row.created_at.getTime() }, settings);
      if (outcome.kind === 'release') metrics.eventsReleased.inc({ reason: 'shutdown' });
      breaker?.record(sendResultOf(err), admission.probe);
    } finally {
      this.#sending.set(sink.name, this.sendingTo(sink.name) - 1);
    }
    endTimer();
    span?.end({ kind: outcome.kind, error: 'error' in outcome ? outcome.error : undefined });
    finish(outcome, sink.name);
  }

  #record(row: ClaimedRow, outcome: Outcome, sink: string | undefined): void {
    // Built lazily: on the success path at info level no log line is written.
    const fields = () => ({
      eventId: row.id,
      eventType: row.event_type,
      restaurantId: row.restaurant_id,
      attempt: row.attempts,
      sink,
      outcome: outcome.kind,
    });
    const eventType = this.#d.metrics.eventTypeLabel(row.event_type);
    switch (outcome.kind) {
      case 'done':
        this.#d.metrics.eventsDispatched.inc({ outcome: 'success', event_type: eventType });
        this.#d.metrics.attempts.observe({ outcome: 'success' }, row.attempts);
        this.#d.metrics.deliveryLag.observe(Math.max(0, (Date.now() - row.created_at.getTime()) / 1000));
        if (this.#log.isLevelEnabled('debug')) this.#log.debug(fields(), 'event dispatched');
        break;
      case 'retry':
        this.#d.metrics.eventsDispatched.inc({ outcome: 'retry', event_type: eventType });
        this.#log.warn({ ...fields(), retryInMs: outcome.delayMs, error: outcome.error }, 'dispatch failed; will retry');
        break;
      case 'dead':
        this.#d.metrics.eventsDispatched.inc({ outcome: 'dead', event_type: eventType });
        this.#d.metrics.deadLettered.inc({ reason: outcome.reason });
        this.#d.metrics.attempts.observe({ outcome: 'dead' }, row.attempts);
        this.#log.error({ ...fields(), error: outcome.error }, 'event dead-lettered');
        break;
      case 'release':
        if (this.#log.isLevelEnabled('debug')) this.#log.debug(fields(), 'event released unattempted');
        break;
    }
  }

  /**
   * Stops claiming, releases events not yet started, lets running sends finish
   * within graceMs, then aborts the rest (released back to pending).
   */
  stop(graceMs = this.#d.settings.shutdownGraceMs): Promise<void> {
    this.#stopping ??= this.#drain(graceMs);
    return this.#stopping;
  }

  async #drain(graceMs: number): Promise<void> {
    if (this.#state === 'idle') {
      this.#state = 'stopped';
      return;
    }
    this.#state = 'draining';
    this.#stopLoop.abort();
    this.#wakeup.poke();
    await this.#loop;
    this.#log.info({ inFlight: this.#held, graceMs }, 'draining in-flight events');
    const settled = Promise.allSettled([...this.#tasks]);
    const timedOut = await Promise.race([settled.then(() => false), sleep(graceMs).then(() => true)]);
    if (timedOut && this.#tasks.size > 0) {
      this.#log.warn({ aborting: this.#tasks.size }, 'grace period over; aborting running sends');
      this.#abortSends.abort();
      // A sink that ignores its abort signal is bounded by its own timeout; its events'
      // leases expire and the rescuer returns them.
      await Promise.race([Promise.allSettled([...this.#tasks]), sleep(5000)]);
    }
    this.#state = 'stopped';
    this.#d.metrics.shutdownDrains.inc({ result: timedOut ? 'aborted' : 'clean' });
    if (this.#tasks.size > 0) this.#log.error({ stuck: this.#tasks.size }, 'sends still running after abort; their leases will expire');
    else this.#log.info('dispatcher drained');
  }
}


/**
 * The least time between a claim and a top-up claim after it: bounds how long another tenant's
 * new event waits behind a backlog (about this plus one claim) and how many small claims a
 * busy producer can cause (at most 1000 / TOP_UP_GAP_MS a second).
 */
export const TOP_UP_GAP_MS = 50;

/**
 * Without a poke, the longest a claim goes without the fair lane: bounds how long an event that
 * came due silently (a retry, an event whose NOTIFY was lost, polling behind a transaction
 * pooler) can wait behind another tenant's backlog.
 */
export const FAIR_LANE_INTERVAL_MS = 1000;

/**
 * The fair lane runs only while the oldest-first walk is more than this behind real time: a
 * worker that keeps up reaches every tenant's events within this anyway, and in a drain that
 * keeps up (every keyed event's successor is due the moment its predecessor is done) the lane
 * is pure cost. Well under the 200 ms that fairness promises another tenant behind a backlog.
 */
export const FAIR_LAG_MS = 100;

/**
 * The fair lane's share of a claim (docs/adr/0012-tenant-fairness.md): `percent` of the batch,
 * at most a fifth of that from one tenant (so one claim serves at least five tenants when that
 * many have due events), and at most 32 tenants visited, which bounds the claim's index reads
 * whatever the number of tenants.
 */
export function fairLane(batchSize: number, percent: number): { rows: number; perTenant: number; tenants: number } {
  const rows = Math.floor((batchSize * percent) / 100);
  if (rows === 0) return { rows: 0, perTenant: 1, tenants: 0 };
  return { rows, perTenant: Math.max(1, Math.ceil(rows / 5)), tenants: Math.min(32, rows) };
}
