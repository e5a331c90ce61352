// Source of dashboards/alerts/tests/outbox.rules.test.yml: a promtool unit test per alert,
// each with an evaluation where it must stay quiet and one where it must fire.
import { alertRules, type AlertRule, type RuleOptions } from './alert-rules.ts';

interface AlertCase {
  alert: string;
  /** promtool input series (1 minute apart). */
  series: Record<string, string>;
  quietAt: string;
  firingAt: string;
  /** Labels the firing alert carries besides alertname and severity. */
  labels: Record<string, string>;
}

const J = 'job="outbox-dispatcher"';
const I = 'instance="worker-1:9464"';
const T = 'table="public.capacity_outbox"';
const bucket = (le: string, values: string) => [`outbox_claim_duration_seconds_bucket{${J},${I},le="${le}"}`, values];

export const alertCases: AlertCase[] = [
  { alert: 'OutboxDispatcherDown', series: { [`up{${J},${I}}`]: '1 1 1 0x10' }, quietAt: '2m', firingAt: '6m', labels: { job: 'outbox-dispatcher', instance: 'worker-1:9464' } },
  { alert: 'OutboxDispatcherAbsent', series: { [`up{${J},${I}}`]: '1 1 1 _x30' }, quietAt: '4m', firingAt: '15m', labels: { job: 'outbox-dispatcher' } },
  { alert: 'OutboxLagObjectiveBreached', series: { [`outbox_oldest_due_event_age_seconds{${J},${I}}`]: '0 0 400x10' }, quietAt: '4m', firingAt: '9m', labels: {} },
  { alert: 'OutboxBacklogGrowing', series: { [`outbox_backlog_events{${J},${I},status="pending"}`]: '500+100x60' }, quietAt: '3m', firingAt: '40m', labels: {} },
  {
    alert: 'OutboxDispatchErrorRatioHigh',
    series: {
      [`outbox_events_dispatched_total{${J},${I},outcome="success",event_type="booking.created"}`]: '0+100x40',
      [`outbox_events_dispatched_total{${J},${I},outcome="retry",event_type="booking.created"}`]: '0x10 0+20x30',
    },
    quietAt: '9m',
    firingAt: '30m',
    labels: {},
  },
  { alert: 'OutboxDeadLettersIncreasing', series: { [`outbox_events_dead_lettered_total{${J},${I},reason="permanent"}`]: '0x10 1 2 3 3 3 3' }, quietAt: '8m', firingAt: '13m', labels: {} },
  { alert: 'OutboxSinkCircuitOpen', series: { [`outbox_sink_circuit_state{${J},${I},sink="orders"}`]: '0 0 2 0 2 2 1 2x10', [`outbox_sink_circuit_state{${J},${I},sink="audit"}`]: '0x20' }, quietAt: '5m', firingAt: '12m', labels: { sink: 'orders' } },
  {
    alert: 'OutboxClaimLatencyHigh',
    series: Object.fromEntries([
      bucket('0.005', '0+100x10 1000x40'),
      bucket('0.01', '0+100x10 1000x40'),
      bucket('0.025', '0+100x50'),
      bucket('+Inf', '0+100x50'),
    ]),
    quietAt: '9m',
    firingAt: '40m',
    labels: {},
  },
  { alert: 'OutboxClaimErrors', series: { [`outbox_claim_errors_total{${J},${I}}`]: '0x5 0+2x20' }, quietAt: '4m', firingAt: '16m', labels: {} },
  { alert: 'OutboxListenerDisconnected', series: { [`outbox_listener_connected{${J},${I}}`]: '1 1 0x10', [`outbox_listener_polling_only{${J},${I}}`]: '0x12' }, quietAt: '4m', firingAt: '9m', labels: { job: 'outbox-dispatcher', instance: 'worker-1:9464' } },
  { alert: 'OutboxLeasesRescuedRepeatedly', series: { [`outbox_lease_rescued_total{${J},${I},result="requeued"}`]: '0x5 0+1x30' }, quietAt: '4m', firingAt: '20m', labels: {} },
  { alert: 'OutboxPartitionRunwayLow', series: { [`outbox_partition_runway_seconds{${J},${I},${T}}`]: '8000000x5 4000000x100' }, quietAt: '30m', firingAt: '70m', labels: { table: 'public.capacity_outbox' } },
  { alert: 'OutboxPartitionRunwayCritical', series: { [`outbox_partition_runway_seconds{${J},${I},${T}}`]: '8000000x3 1000000x20' }, quietAt: '8m', firingAt: '16m', labels: { table: 'public.capacity_outbox' } },
  { alert: 'OutboxPartitionRotationFailing', series: { [`outbox_partition_rotation_failures_total{${J},${I},${T}}`]: '0x5 1x20' }, quietAt: '4m', firingAt: '7m', labels: { table: 'public.capacity_outbox' } },
  { alert: 'OutboxPartitionRotationStale', series: { [`outbox_partition_rotation_last_success_timestamp_seconds{${J},${I},${T}}`]: '0x420' }, quietAt: '60m', firingAt: '400m', labels: { table: 'public.capacity_outbox' } },
  { alert: 'OutboxDefaultPartitionRows', series: { [`outbox_partition_default_rows{${J},${I},${T}}`]: '0x5 3x60' }, quietAt: '30m', firingAt: '40m', labels: { table: 'public.capacity_outbox' } },
  { alert: 'OutboxOrderingKeysBlocked', series: { [`outbox_ordering_blocked_keys{${J},${I}}`]: '0x5 2x30' }, quietAt: '10m', firingAt: '20m', labels: {} },
  { alert: 'OutboxSinkPausedTooLong', series: { [`outbox_sink_paused_seconds{${J},${I},sink="orders"}`]: '0x5 60+60x70', [`outbox_sink_paused_seconds{${J},${I},sink="audit"}`]: '0x80' }, quietAt: '60m', firingAt: '70m', labels: { sink: 'orders' } },
  { alert: 'OutboxRetirementBlocked', series: { [`outbox_partition_retirement_blocked{${J},${I},${T}}`]: '0x5 1x100' }, quietAt: '60m', firingAt: '70m', labels: { table: 'public.capacity_outbox' } },
];

function expectedAnnotations(rule: AlertRule, labels: Record<string, string>): Record<string, string> {
  const fill = (s: string) => s.replace(/\{\{ \$labels\.(\w+) \}\}/g, (_, k: string) => labels[k] ?? '');
  return Object.fromEntries(Object.entries(rule.annotations).map(([k, v]) => [k, fill(v)]));
}

export function renderAlertTests(opts: Pick<RuleOptions, 'runbookBase'> = {}): string {
  const rules = new Map(alertRules(opts).map((r) => [r.alert, r]));
  const q = (s: string) => JSON.stringify(s);
  const lines = ['# Generated by `npm run dashboards` from dashboards/src/alert-tests.ts. Run: promtool test rules <this file>', 'rule_files:', '  - ../outbox.rules.yml', 'evaluation_interval: 30s', 'tests:'];
  for (const c of alertCases) {
    const rule = rules.get(c.alert);
    if (!rule) throw new Error(`no rule named ${c.alert}`);
    lines.push(`  # ${c.alert}`, '  - interval: 1m', '    input_series:');
    for (const [series, values] of Object.entries(c.series)) lines.push(`      - series: ${q(series)}`, `        values: ${q(values)}`);
    lines.push('    alert_rule_test:', `      - eval_time: ${c.quietAt}`, `        alertname: ${c.alert}`, '        exp_alerts: []');
    lines.push(`      - eval_time: ${c.firingAt}`, `        alertname: ${c.alert}`, '        exp_alerts:', '          - exp_labels:');
    for (const [k, v] of Object.entries({ severity: rule.labels.severity, ...c.labels })) lines.push(`              ${k}: ${q(v)}`);
    lines.push('            exp_annotations:');
    for (const [k, v] of Object.entries(expectedAnnotations(rule, c.labels))) lines.push(`              ${k}: ${q(v)}`);
  }
  return `${lines.join('\n')}\n`;
}
