// Source of dashboards/alerts/outbox.rules.yml (npm run dashboards writes it).
// Every alert carries severity, summary, description and a runbook_url that points at a
// section of runbooks/alerts.md (the tests check the anchors exist). Annotations use
// labels only (no $value), so promtool unit tests can state them exactly.

export interface RuleOptions {
  /** Scrape job of the dispatcher. */
  job?: string;
  /** Rule-group evaluation interval. */
  interval?: string;
  /** Multiplies every time window (`for`, range selectors); the end-to-end test uses 1/60. */
  timeScale?: number;
  runbookBase?: string;
}

export interface AlertRule {
  alert: string;
  expr: string;
  for?: string;
  labels: { severity: 'critical' | 'warning' | 'info' };
  annotations: { summary: string; description: string; runbook_url: string };
}

/**
 * Where runbooks/alerts.md is published for your organisation: a build setting
 * (OUTBOX_RUNBOOK_BASE_URL when running `npm run dashboards`, README "Metrics, alerts,
 * dashboards"). The committed files use this default: the runbook as it sits in this
 * repository, so a link works wherever the repository is browsable.
 */
export const DEFAULT_RUNBOOK_BASE = 'https://github.com/platform/outbox-dispatcher/blob/main/runbooks/alerts.md';

/** Paused longer than this, a sink alerts (OutboxSinkPausedTooLong). */
export const SINK_PAUSED_ALERT_SECONDS = 3600;

/** Seconds -> Prometheus duration, scaled, never below 1s. */
function dur(seconds: number, scale: number): string {
  const s = Math.max(1, Math.round(seconds * scale));
  if (s % 3600 === 0) return `${s / 3600}h`;
  if (s % 60 === 0) return `${s / 60}m`;
  return `${s}s`;
}

export function alertRules(opts: RuleOptions = {}): AlertRule[] {
  const job = opts.job ?? 'outbox-dispatcher';
  const k = opts.timeScale ?? 1;
  const base = opts.runbookBase ?? DEFAULT_RUNBOOK_BASE;
  const sel = `job="${job}"`;
  const w = (s: number) => dur(s, k);
  const rule = (
    alert: string,
    severity: AlertRule['labels']['severity'],
    expr: string,
    forSeconds: number,
    summary: string,
    description: string,
  ): AlertRule => ({
    alert,
    expr,
    ...(forSeconds > 0 ? { for: w(forSeconds) } : {}),
    labels: { severity },
    annotations: { summary, description, runbook_url: `${base}#${alert.toLowerCase()}` },
  });

  return [
    rule('OutboxDispatcherDown', 'critical', `up{${sel}} == 0`, 60,
      'Outbox dispatcher {{ $labels.instance }} is down',
      'Prometheus cannot scrape {{ $labels.instance }}. Events still commit but are not delivered by this replica; if every replica is down, nothing is delivered.'),
    rule('OutboxDispatcherAbsent', 'critical', `absent(up{${sel}})`, 300,
      'No outbox dispatcher is being scraped',
      `No target of job ${job} exists: the dispatcher is not deployed or service discovery lost it. Nothing is being delivered.`),
    rule('OutboxLagObjectiveBreached', 'critical', `max(outbox_oldest_due_event_age_seconds{${sel}}) > 300`, 300,
      'Outbox events wait more than 5 minutes to be dispatched',
      'The oldest due event has waited more than 5 minutes past its next attempt time: dispatchers are down, too slow, or stuck.'),
    rule('OutboxBacklogGrowing', 'warning',
      `max(outbox_backlog_events{${sel},status="pending"}) > 1000 and deriv(max(outbox_backlog_events{${sel},status="pending"})[${w(900)}:${w(60)}]) > 0`, 900,
      'Outbox backlog is growing',
      'More than 1000 events are pending and the number keeps rising: producers outpace dispatch, or a sink is slow.'),
    rule('OutboxDispatchErrorRatioHigh', 'warning',
      `sum(rate(outbox_events_dispatched_total{${sel},outcome!="success"}[${w(300)}])) / sum(rate(outbox_events_dispatched_total{${sel}}[${w(300)}])) > 0.05`, 600,
      'More than 5% of dispatch attempts fail',
      'More than 5% of delivery attempts end in retry or dead-letter: a sink is failing or rejecting events.'),
    rule('OutboxDeadLettersIncreasing', 'warning', `sum(increase(outbox_events_dead_lettered_total{${sel}}[${w(900)}])) > 0`, 0,
      'Events are being dead-lettered',
      'Events went to dead in the last 15 minutes (permanent sink errors, exhausted retries, unrouted or malformed events). They wait for a replay.'),
    rule('OutboxSinkCircuitOpen', 'warning', `max by (sink) (outbox_sink_circuit_state{${sel}}) >= 1`, 300,
      'Sink {{ $labels.sink }} is failing: its circuit breaker is open',
      'The circuit breaker of sink {{ $labels.sink }} has been open or probing for 5 minutes: the sink keeps failing. Its events wait without spending attempts and are delivered when a probe succeeds; other sinks are unaffected.'),
    rule('OutboxClaimLatencyHigh', 'warning',
      `histogram_quantile(0.99, sum by (le) (rate(outbox_claim_duration_seconds_bucket{${sel}}[${w(300)}]))) > 0.01`, 900,
      'Claim query p99 above 10 ms',
      'The claim statement p99 exceeds the 10 ms budget: index bloat, lock contention, or an overloaded database.'),
    rule('OutboxClaimErrors', 'warning', `sum(increase(outbox_claim_errors_total{${sel}}[${w(300)}])) > 3`, 300,
      'Claim statements are failing',
      'Dispatchers cannot claim events (database errors); they back off and retry.'),
    // A replica that found at start-up that notifications cannot arrive (transaction pooler, no
    // OUTBOX_LISTEN_URL) polls by design and said so once; it is not "disconnected".
    rule('OutboxListenerDisconnected', 'warning',
      `outbox_listener_connected{${sel}} == 0 unless on (job, instance) outbox_listener_polling_only{${sel}} == 1`, 300,
      'Dispatcher {{ $labels.instance }} lost its LISTEN connection',
      'Wake-ups have degraded to polling (latency up to OUTBOX_POLL_INTERVAL_MS). Delivery continues.'),
    rule('OutboxLeasesRescuedRepeatedly', 'warning', `sum(increase(outbox_lease_rescued_total{${sel}}[${w(1800)}])) > 5`, 0,
      'Event leases keep expiring',
      'More than 5 leases expired in 30 minutes: workers are crashing or hanging mid-dispatch (OOM kills, a poison event, a sink ignoring timeouts).'),
    rule('OutboxPartitionRunwayLow', 'warning', `min by (table) (outbox_partition_runway_seconds{${sel}}) < 60 * 86400`, 3600,
      'Partition runway of {{ $labels.table }} below 2 months',
      'Less than 2 months of premade partitions are left (premake keeps about 3 months): rotation has not run.'),
    rule('OutboxPartitionRunwayCritical', 'critical', `min by (table) (outbox_partition_runway_seconds{${sel}}) < 14 * 86400`, 600,
      'Partition runway of {{ $labels.table }} below 2 weeks',
      'Soon every insert lands in the default partition. Run partition rotation now.'),
    rule('OutboxPartitionRotationFailing', 'warning', `sum by (table) (increase(outbox_partition_rotation_failures_total{${sel}}[${w(10800)}])) > 0`, 0,
      'Partition rotation of {{ $labels.table }} is failing',
      'A rotation step failed in the last 3 hours; the daemon logs and `partitions rotate` say which.'),
    rule('OutboxPartitionRotationStale', 'warning',
      `time() - max by (table) (outbox_partition_rotation_last_success_timestamp_seconds{${sel}}) > 6 * 3600`, 0,
      'Partition rotation of {{ $labels.table }} has not succeeded for 6 hours',
      'Rotation runs hourly; it is failing, blocked, or not scheduled on any replica.'),
    rule('OutboxDefaultPartitionRows', 'warning', `max by (table) (outbox_partition_default_rows{${sel}}) > 0`, 1800,
      'Rows are landing in the default partition of {{ $labels.table }}',
      'Rows had no monthly partition. Rotation moves them out; find who writes rows for far months.'),
    rule('OutboxRetirementBlocked', 'warning', `max by (table) (outbox_partition_retirement_blocked{${sel}}) > 0`, 3600,
      'Retention of {{ $labels.table }} is blocked by undelivered events',
      'Partitions past retention still hold pending, processing or dead events; nothing is dropped until they are delivered or resolved.'),
    rule('OutboxOrderingKeysBlocked', 'warning', `max(outbox_ordering_blocked_keys{${sel}}) > 0`, 600,
      'Ordering keys are blocked by dead head events',
      'A keyed event was dead-lettered under ordering.onDeadHead = block, and the events queued behind it on its key are held until it is replayed or skipped. Other keys are unaffected. List them with `events blocked`.'),
    rule('OutboxSinkPausedTooLong', 'warning', `max by (sink) (outbox_sink_paused_seconds{${sel}}) > ${Math.max(1, Math.round(SINK_PAUSED_ALERT_SECONDS * k))}`, 0,
      'Sink {{ $labels.sink }} has been paused for over an hour',
      'An operator paused sink {{ $labels.sink }} (`sinks pause`) more than an hour ago and it is still paused: its events are parked, undelivered. `sinks status` says who paused it and why; resume it with `sinks resume` when the reason is gone.'),
  ];
}

/** The rule file as YAML (hand-rolled: the structure is fixed and small). */
export function renderRules(opts: RuleOptions = {}): string {
  const q = (s: string) => JSON.stringify(s);
  const lines = [
    '# Generated by `npm run dashboards` from dashboards/src/alert-rules.ts. Do not edit by hand.',
    'groups:',
    '  - name: outbox-dispatcher',
    `    interval: ${opts.interval ?? '30s'}`,
    '    rules:',
  ];
  for (const r of alertRules(opts)) {
    lines.push(`      - alert: ${r.alert}`, `        expr: ${q(r.expr)}`);
    if (r.for) lines.push(`        for: ${r.for}`);
    lines.push('        labels:', `          severity: ${r.labels.severity}`, '        annotations:');
    for (const [key, value] of Object.entries(r.annotations)) lines.push(`          ${key}: ${q(value)}`);
  }
  return `${lines.join('\n')}\n`;
}
