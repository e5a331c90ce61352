// Source of the Grafana dashboards under dashboards/*.json (npm run dashboards writes them).
// A small typed model of the dashboard JSON: every panel is a PromQL query on metrics the
// dispatcher exports; the end-to-end test runs each query against a real Prometheus.

export interface Target {
  expr: string;
  legendFormat?: string;
}

export interface Panel {
  title: string;
  type: 'timeseries' | 'stat';
  unit: string;
  targets: Target[];
  description?: string;
  /** Horizontal threshold line (e.g. the 10 ms claim budget). */
  threshold?: number;
  w?: number;
  h?: number;
}

export interface Dashboard {
  uid: string;
  title: string;
  description: string;
  variables: { name: string; label: string; query: string; multi: boolean }[];
  panels: Panel[];
}

const JOB = 'job=~"$job"';

export const overview: Dashboard = {
  uid: 'outbox-overview',
  title: 'Outbox dispatcher: overview',
  description: 'Throughput, lag, backlog, errors, dead letters, claim latency, in-flight work and partition runway.',
  variables: [],
  panels: [
    { title: 'Dispatch throughput by outcome', type: 'timeseries', unit: 'ops', targets: [{ expr: `sum by (outcome) (rate(outbox_events_dispatched_total{${JOB}}[$__rate_interval]))`, legendFormat: '{{outcome}}' }] },
    { title: 'Dispatch lag (oldest due event)', type: 'timeseries', unit: 's', threshold: 300, targets: [{ expr: `max(outbox_oldest_due_event_age_seconds{${JOB}})`, legendFormat: 'oldest due event' }] },
    { title: 'Backlog by status', type: 'timeseries', unit: 'short', targets: [{ expr: `max by (status) (outbox_backlog_events{${JOB}})`, legendFormat: '{{status}}' }] },
    {
      title: 'Dispatch error ratio',
      type: 'timeseries',
      unit: 'percentunit',
      threshold: 0.05,
      targets: [{ expr: `sum(rate(outbox_events_dispatched_total{${JOB},outcome!="success"}[$__rate_interval])) / sum(rate(outbox_events_dispatched_total{${JOB}}[$__rate_interval]))`, legendFormat: 'errors / attempts' }],
    },
    { title: 'Dead letters (current)', type: 'stat', unit: 'short', targets: [{ expr: `max(outbox_backlog_events{${JOB},status="dead"})`, legendFormat: 'dead' }] },
    { title: 'Dead-lettered per minute by reason', type: 'timeseries', unit: 'short', targets: [{ expr: `sum by (reason) (rate(outbox_events_dead_lettered_total{${JOB}}[$__rate_interval])) * 60`, legendFormat: '{{reason}}' }] },
    {
      title: 'Claim latency (p50, p99) vs the 10 ms budget',
      type: 'timeseries',
      unit: 's',
      threshold: 0.01,
      targets: [
        { expr: `histogram_quantile(0.99, sum by (le) (rate(outbox_claim_duration_seconds_bucket{${JOB}}[$__rate_interval])))`, legendFormat: 'p99' },
        { expr: `histogram_quantile(0.5, sum by (le) (rate(outbox_claim_duration_seconds_bucket{${JOB}}[$__rate_interval])))`, legendFormat: 'p50' },
      ],
    },
    { title: 'In-flight events', type: 'timeseries', unit: 'short', targets: [{ expr: `sum by (instance) (outbox_inflight_events{${JOB}})`, legendFormat: '{{instance}}' }] },
    { title: 'Delivery lag p95 (commit to delivery)', type: 'timeseries', unit: 's', targets: [{ expr: `histogram_quantile(0.95, sum by (le) (rate(outbox_event_delivery_lag_seconds_bucket{${JOB}}[$__rate_interval])))`, legendFormat: 'p95' }] },
    { title: 'Partition runway', type: 'stat', unit: 's', threshold: 60 * 86400, targets: [{ expr: `min by (table) (outbox_partition_runway_seconds{${JOB}})`, legendFormat: '{{table}}' }] },
    { title: 'Lease rescues (crashed or hung workers)', type: 'timeseries', unit: 'short', targets: [{ expr: `sum(increase(outbox_lease_rescued_total{${JOB}}[$__rate_interval]))`, legendFormat: 'rescued' }] },
    { title: 'LISTEN connected', type: 'stat', unit: 'short', targets: [{ expr: `min(outbox_listener_connected{${JOB}})`, legendFormat: 'connected' }] },
    { title: 'Replicas up', type: 'stat', unit: 'short', targets: [{ expr: `sum(up{${JOB}})`, legendFormat: 'up' }] },
  ],
};

export const drilldown: Dashboard = {
  uid: 'outbox-drilldown',
  title: 'Outbox dispatcher: by event type and sink',
  description: 'Per event type and per sink: throughput, outcomes, attempts and delivery duration.',
  variables: [
    { name: 'event_type', label: 'Event type', query: `label_values(outbox_events_dispatched_total{${JOB}}, event_type)`, multi: true },
    { name: 'sink', label: 'Sink', query: `label_values(outbox_dispatch_duration_seconds_count{${JOB}}, sink)`, multi: true },
  ],
  panels: [
    { title: 'Throughput by event type', type: 'timeseries', unit: 'ops', targets: [{ expr: `sum by (event_type) (rate(outbox_events_dispatched_total{${JOB},event_type=~"$event_type",outcome="success"}[$__rate_interval]))`, legendFormat: '{{event_type}}' }] },
    { title: 'Retries by event type', type: 'timeseries', unit: 'ops', targets: [{ expr: `sum by (event_type) (rate(outbox_events_dispatched_total{${JOB},event_type=~"$event_type",outcome="retry"}[$__rate_interval]))`, legendFormat: '{{event_type}}' }] },
    { title: 'Dead letters by event type', type: 'timeseries', unit: 'short', targets: [{ expr: `sum by (event_type) (increase(outbox_events_dispatched_total{${JOB},event_type=~"$event_type",outcome="dead"}[$__rate_interval]))`, legendFormat: '{{event_type}}' }] },
    {
      title: 'Error ratio by event type',
      type: 'timeseries',
      unit: 'percentunit',
      targets: [{ expr: `sum by (event_type) (rate(outbox_events_dispatched_total{${JOB},event_type=~"$event_type",outcome!="success"}[$__rate_interval])) / sum by (event_type) (rate(outbox_events_dispatched_total{${JOB},event_type=~"$event_type"}[$__rate_interval]))`, legendFormat: '{{event_type}}' }],
    },
    {
      title: 'Delivery duration by sink (p50, p99)',
      type: 'timeseries',
      unit: 's',
      targets: [
        { expr: `histogram_quantile(0.99, sum by (le, sink) (rate(outbox_dispatch_duration_seconds_bucket{${JOB},sink=~"$sink"}[$__rate_interval])))`, legendFormat: '{{sink}} p99' },
        { expr: `histogram_quantile(0.5, sum by (le, sink) (rate(outbox_dispatch_duration_seconds_bucket{${JOB},sink=~"$sink"}[$__rate_interval])))`, legendFormat: '{{sink}} p50' },
      ],
    },
    { title: 'Attempts per sink', type: 'timeseries', unit: 'ops', targets: [{ expr: `sum by (sink) (rate(outbox_dispatch_duration_seconds_count{${JOB},sink=~"$sink"}[$__rate_interval]))`, legendFormat: '{{sink}}' }] },
    { title: 'Sink circuit state (0 closed, 1 half-open, 2 open)', type: 'timeseries', unit: 'short', threshold: 1, targets: [{ expr: `max by (sink) (outbox_sink_circuit_state{${JOB},sink=~"$sink"})`, legendFormat: '{{sink}}' }] },
    { title: 'Sink paused (seconds; 0 sending)', type: 'timeseries', unit: 's', threshold: 3600, targets: [{ expr: `max by (sink) (outbox_sink_paused_seconds{${JOB},sink=~"$sink"})`, legendFormat: '{{sink}}' }] },
    { title: 'Attempt number at success (p90)', type: 'timeseries', unit: 'short', targets: [{ expr: `histogram_quantile(0.9, sum by (le) (rate(outbox_event_attempts_bucket{${JOB},outcome="success"}[$__rate_interval])))`, legendFormat: 'p90 attempt' }] },
    { title: 'Claim batch size (avg)', type: 'timeseries', unit: 'short', targets: [{ expr: `sum(rate(outbox_claim_batch_size_sum{${JOB}}[$__rate_interval])) / sum(rate(outbox_claim_batch_size_count{${JOB}}[$__rate_interval]))`, legendFormat: 'events per claim' }] },
  ],
};

/** Grafana dashboard JSON (schema 39) with a Prometheus datasource variable. */
export function toGrafana(d: Dashboard): object {
  const ds = { type: 'prometheus', uid: '${datasource}' };
  let x = 0;
  let y = 0;
  const panels = d.panels.map((p, i) => {
    const w = p.w ?? (p.type === 'stat' ? 6 : 12);
    const h = p.h ?? 8;
    if (x + w > 24) {
      x = 0;
      y += h;
    }
    const gridPos = { x, y, w, h };
    x += w;
    return {
      id: i + 1,
      type: p.type,
      title: p.title,
      ...(p.description ? { description: p.description } : {}),
      datasource: ds,
      gridPos,
      fieldConfig: {
        defaults: {
          unit: p.unit,
          thresholds: {
            mode: 'absolute',
            steps: [{ color: 'green', value: null }, ...(p.threshold !== undefined ? [{ color: 'red', value: p.threshold }] : [])],
          },
          ...(p.type === 'timeseries' && p.threshold !== undefined ? { custom: { thresholdsStyle: { mode: 'line' } } } : {}),
        },
        overrides: [],
      },
      options: p.type === 'stat' ? { reduceOptions: { calcs: ['lastNotNull'] }, colorMode: 'value' } : { legend: { displayMode: 'list', placement: 'bottom' } },
      targets: p.targets.map((t, j) => ({ refId: String.fromCharCode(65 + j), datasource: ds, expr: t.expr, legendFormat: t.legendFormat ?? '', range: true })),
    };
  });
  return {
    uid: d.uid,
    title: d.title,
    description: d.description,
    tags: ['outbox-dispatcher'],
    schemaVersion: 39,
    version: 1,
    editable: true,
    time: { from: 'now-6h', to: 'now' },
    refresh: '30s',
    templating: {
      list: [
        { name: 'datasource', label: 'Data source', type: 'datasource', query: 'prometheus', current: {}, hide: 0 },
        {
          name: 'job',
          label: 'Job',
          type: 'query',
          datasource: ds,
          query: { query: 'label_values(outbox_build_info, job)', refId: 'job' },
          definition: 'label_values(outbox_build_info, job)',
          multi: true,
          includeAll: true,
          allValue: '.+',
          refresh: 2,
        },
        ...d.variables.map((v) => ({
          name: v.name,
          label: v.label,
          type: 'query',
          datasource: ds,
          query: { query: v.query, refId: v.name },
          definition: v.query,
          multi: v.multi,
          includeAll: true,
          allValue: '.+',
          refresh: 2,
        })),
      ],
    },
    panels,
  };
}

export const dashboards = [overview, drilldown];
