import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { dispatcherDrain, type DrainResult } from './drain.ts';

/**
 * A stand-in OpenTelemetry Collector: accepts OTLP/HTTP JSON on /v1/traces and counts the
 * spans, so the "tracing on" run states how many of its spans were actually exported.
 */
async function startCollector(): Promise<{ base: string; spans: () => number; close: () => Promise<void> }> {
  let spans = 0;
  const server = http.createServer((req, res) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (c: string) => (body += c));
    req.on('end', () => {
      try {
        const parsed = JSON.parse(body) as { resourceSpans?: { scopeSpans?: { spans?: unknown[] }[] }[] };
        for (const rs of parsed.resourceSpans ?? []) for (const ss of rs.scopeSpans ?? []) spans += ss.spans?.length ?? 0;
      } catch {
        // counted as nothing
      }
      res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    base: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    spans: () => spans,
    close: () => new Promise<void>((r) => { server.closeAllConnections(); server.close(() => r()); }),
  };
}

/**
 * Drain throughput with tracing off or on (1 worker, noop sink: the sink costs nothing, so
 * the span's cost is as visible as it can be). On, the batch processor is sized so that spans
 * are exported rather than dropped at this rate; the default 2048-span queue would drop most
 * of them and understate the cost.
 */
export async function tracingDrain(url: string, events: number, tuning: Record<string, string>, on: boolean): Promise<DrainResult> {
  if (!on) return dispatcherDrain(url, events, 1, 'noop', tuning, { label: 'tracing off' });
  const collector = await startCollector();
  try {
    const env = { ...tuning, OTEL_EXPORTER_OTLP_ENDPOINT: collector.base, OTEL_BSP_SCHEDULE_DELAY: '200', OTEL_BSP_MAX_QUEUE_SIZE: '65536', OTEL_BSP_MAX_EXPORT_BATCH_SIZE: '2048' };
    const result = await dispatcherDrain(url, events, 1, 'noop', env, { label: 'tracing on' });
    return { ...result, name: `${result.name}, ${collector.spans().toLocaleString()} spans exported` };
  } finally {
    await collector.close();
  }
}
