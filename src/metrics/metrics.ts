import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { EVENT_TYPE_PATTERN } from '../domain/event.ts';
import { DEAD_REASONS } from '../domain/outcome.ts';
import { VERSION } from '../kernel/version.ts';

// Metric names are a public contract (alerts and dashboards use them): rename never,
// add freely. The catalogue with meanings lives in runbooks/metrics.md.

const MAX_EVENT_TYPE_LABELS = 200;

export class DispatcherMetrics {
  readonly registry: Registry;
  readonly eventsDispatched: Counter<'outcome' | 'event_type'>;
  readonly eventsReleased: Counter<'reason'>;
  readonly claimDuration: Histogram;
  readonly claimBatchSize: Histogram;
  readonly claimErrors: Counter;
  readonly dispatchDuration: Histogram<'sink'>;
  readonly inflight: Gauge;
  readonly leaseRescued: Counter<'result'>;
  readonly leaseLost: Counter;
  readonly completionFlushErrors: Counter;
  readonly completionsRefused: Counter<'result'>;
  readonly circuitState: Gauge<'sink'>;
  readonly circuitTransitions: Counter<'sink' | 'state'>;
  readonly listenerConnected: Gauge;
  readonly listenerReconnects: Counter;
  readonly listenerPollingOnly: Gauge;
  readonly backlog: Gauge<'status'>;
  readonly oldestDueAge: Gauge;
  readonly orderingBlockedKeys: Gauge;
  readonly orderingOldestBlocked: Gauge;
  readonly backlogSampleErrors: Counter;
  readonly deliveryLag: Histogram;
  readonly attempts: Histogram<'outcome'>;
  readonly shutdownDrains: Counter<'result'>;
  readonly deadLettered: Counter<'reason'>;
  readonly #eventTypes = new Set<string>();

  constructor(registry: Registry = new Registry()) {
    this.registry = registry;
    collectDefaultMetrics({ register: registry });
    // prom-client names these gauges *_total, which Prometheus reserves for counters
    // (promtool check metrics rejects them); the per-type nodejs_active_* gauges remain.
    for (const name of ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total']) {
      registry.removeSingleMetric(name);
    }
    const r = [registry];
    new Gauge({
      name: 'outbox_build_info',
      help: 'Build information; always 1.',
      labelNames: ['version', 'node_version'],
      registers: r,
    }).set({ version: VERSION, node_version: process.version }, 1);
    this.eventsDispatched = new Counter({
      name: 'outbox_events_dispatched_total',
      help: 'Dispatch attempts finished, by outcome (success, retry, dead) and event type.',
      labelNames: ['outcome', 'event_type'],
      registers: r,
    });
    this.eventsReleased = new Counter({
      name: 'outbox_events_released_total',
      help: 'Claimed events handed back to pending unattempted, by reason (shutdown, lease_at_risk, circuit_open, sink_paused).',
      labelNames: ['reason'],
      registers: r,
    });
    this.claimDuration = new Histogram({
      name: 'outbox_claim_duration_seconds',
      help: 'Duration of the claim statement (plan budget: 10 ms).',
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers: r,
    });
    this.claimBatchSize = new Histogram({
      name: 'outbox_claim_batch_size',
      help: 'Events returned per claim statement.',
      buckets: [0, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000],
      registers: r,
    });
    this.claimErrors = new Counter({
      name: 'outbox_claim_errors_total',
      help: 'Claim statements that failed (the loop backs off and retries).',
      registers: r,
    });
    this.dispatchDuration = new Histogram({
      name: 'outbox_dispatch_duration_seconds',
      help: 'Duration of one delivery attempt, by sink.',
      labelNames: ['sink'],
      buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers: r,
    });
    this.inflight = new Gauge({
      name: 'outbox_inflight_events',
      help: 'Events claimed by this worker and not yet finished.',
      registers: r,
    });
    this.leaseRescued = new Counter({
      name: 'outbox_lease_rescued_total',
      help: 'Events whose lease expired (their worker died or hung), by result (requeued, dead).',
      labelNames: ['result'],
      registers: r,
    });
    this.leaseLost = new Counter({
      name: 'outbox_completion_lease_lost_total',
      help: 'Outcomes not written because the lease had expired and the event was re-claimed.',
      registers: r,
    });
    this.completionFlushErrors = new Counter({
      name: 'outbox_completion_flush_errors_total',
      help: 'Failed writes of a batch of outcomes (retried; the batch is kept).',
      registers: r,
    });
    this.completionsRefused = new Counter({
      name: 'outbox_completions_refused_total',
      help: 'Outcomes the database refused for their data (SQLSTATE class 22/23), by result: rewritten with a safe error, or dropped (redelivered after the lease).',
      labelNames: ['result'],
      registers: r,
    });
    this.circuitState = new Gauge({
      name: 'outbox_sink_circuit_state',
      help: "Each sink's circuit breaker: 0 closed (sending), 1 half-open (probing), 2 open (not sending; its events wait without spending attempts).",
      labelNames: ['sink'],
      registers: r,
    });
    this.circuitTransitions = new Counter({
      name: 'outbox_sink_circuit_transitions_total',
      help: "Circuit breaker state changes per sink, by the state entered (closed, half_open, open).",
      labelNames: ['sink', 'state'],
      registers: r,
    });
    this.listenerConnected = new Gauge({
      name: 'outbox_listener_connected',
      help: '1 while the LISTEN connection is up; at 0, wake-ups fall back to polling.',
      registers: r,
    });
    this.listenerReconnects = new Counter({
      name: 'outbox_listener_reconnects_total',
      help: 'Reconnection attempts of the LISTEN connection.',
      registers: r,
    });
    this.listenerPollingOnly = new Gauge({
      name: 'outbox_listener_polling_only',
      help: '1 when the start-up self-test found that notifications do not arrive (LISTEN through a transaction pooler; set OUTBOX_LISTEN_URL): wake-ups rely on polling alone.',
      registers: r,
    });
    this.listenerPollingOnly.set(0);
    this.backlog = new Gauge({
      name: 'outbox_backlog_events',
      help: 'Events by status (pending, processing, dead), counted up to OUTBOX_BACKLOG_COUNT_CAP (a value at the cap means at least that many).',
      labelNames: ['status'],
      registers: r,
    });
    this.oldestDueAge = new Gauge({
      name: 'outbox_oldest_due_event_age_seconds',
      help: 'How long the oldest due pending event has waited past its next_attempt_at (dispatch lag); 0 when none is due.',
      registers: r,
    });
    this.orderingBlockedKeys = new Gauge({
      name: 'outbox_ordering_blocked_keys',
      help: 'Ordering keys held up by a dead head event (route ordering.onDeadHead = block), counted up to OUTBOX_BACKLOG_COUNT_CAP; see `events blocked`.',
      registers: r,
    });
    this.orderingOldestBlocked = new Gauge({
      name: 'outbox_ordering_oldest_blocked_seconds',
      help: 'How long the longest-blocked ordering key has been blocked; 0 when none is.',
      registers: r,
    });
    this.backlogSampleErrors = new Counter({
      name: 'outbox_backlog_sample_errors_total',
      help: 'Failed backlog samples.',
      registers: r,
    });
    this.deliveryLag = new Histogram({
      name: 'outbox_event_delivery_lag_seconds',
      help: 'From the event being committed (created_at) to its successful delivery.',
      buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600],
      registers: r,
    });
    this.attempts = new Histogram({
      name: 'outbox_event_attempts',
      help: 'Attempt number at which an event finished, by outcome (success, dead).',
      labelNames: ['outcome'],
      buckets: [1, 2, 3, 4, 5, 7, 10, 15, 20, 50],
      registers: r,
    });
    this.shutdownDrains = new Counter({
      name: 'outbox_shutdown_drains_total',
      help: 'Graceful shutdowns by result: clean (everything finished or was released), aborted (sends cut at the grace period).',
      labelNames: ['result'],
      registers: r,
    });
    this.deadLettered = new Counter({
      name: 'outbox_events_dead_lettered_total',
      help: 'Events moved to dead, by reason (permanent, exhausted, unrouted, malformed, lease_expired).',
      labelNames: ['reason'],
      registers: r,
    });
    this.#initialiseSeries();
  }

  /**
   * Series for every value of a bounded label exist from the start (at 0), so rate() and
   * increase() in alerts and panels see them before the first event.
   */
  #initialiseSeries(): void {
    for (const reason of ['shutdown', 'lease_at_risk']) this.eventsReleased.inc({ reason }, 0);
    for (const result of ['requeued', 'dead']) this.leaseRescued.inc({ result }, 0);
    for (const result of ['clean', 'aborted']) this.shutdownDrains.inc({ result }, 0);
    for (const reason of DEAD_REASONS) this.deadLettered.inc({ reason }, 0);
  }

  /** Event types as labels, bounded: unknown shapes and overflow collapse to "other". */
  eventTypeLabel(eventType: string): string {
    if (this.#eventTypes.has(eventType)) return eventType;
    if (!EVENT_TYPE_PATTERN.test(eventType) || this.#eventTypes.size >= MAX_EVENT_TYPE_LABELS) return 'other';
    this.#eventTypes.add(eventType);
    return eventType;
  }
}
