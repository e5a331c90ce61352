import type { Metric } from 'prom-client';

/** Sum of a metric's samples whose labels include `labels`. */
export async function metricTotal(metric: Metric<string>, labels: Record<string, string> = {}): Promise<number> {
  const { values } = await metric.get();
  return values
    .filter((v) => Object.entries(labels).every(([k, want]) => v.labels[k] === want))
    .reduce((sum, v) => sum + v.value, 0);
}
