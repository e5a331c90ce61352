import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { renderRules } from '../dashboards/src/alert-rules.ts';
import { dashboards } from '../dashboards/src/dashboards.ts';
import { createTestDatabase, produce, tenantId, waitFor, type TestDatabase } from './support/db.ts';
import { runCli, startWorkerProcess, type WorkerProcess } from './support/cli.ts';
import { startReceiver } from './support/http-receiver.ts';
import { freePort } from './support/ports.ts';

// End to end: a real worker process, a real Prometheus (Debian's package) scraping it with
// the project's rule file, synthetic incidents, and alerts asserted through the Prometheus
// API. Only time windows are shortened (timeScale 1/60, 1 s scrape and evaluation): the
// rules' expressions and thresholds are the shipped ones.

const hasPrometheus = spawnSync('prometheus', ['--version']).status === 0;
const required = process.env.REQUIRE_PROMETHEUS === '1';

describe.skipIf(!hasPrometheus && !required)('alerts fire on synthetic incidents against a real Prometheus', () => {
  let db: TestDatabase;
  let receiver: Awaited<ReturnType<typeof startReceiver>>;
  let worker: WorkerProcess;
  let prometheus: ChildProcess;
  let promUrl: string;
  let dir: string;

  beforeAll(async () => {
    db = await createTestDatabase();
    receiver = await startReceiver((r) => {
      const type = String(r.headers['x-outbox-event-type']);
      if (type.startsWith('outage.')) return { status: 503, body: 'synthetic outage' };
      if (type.startsWith('slow.')) return { status: 200, delayMs: 20_000 };
      return { status: 200 };
    });
    const metricsPort = await freePort();
    worker = startWorkerProcess({
      DATABASE_URL: db.workerUrl,
      // The failing route has its own sink, so its circuit breaker holds only its events.
      OUTBOX_ROUTES: JSON.stringify({
        routes: [
          { match: 'outage.*', sink: { type: 'http', name: 'outage', url: receiver.url, timeoutMs: 25_000 } },
          { match: '*', sink: { type: 'http', name: 'main', url: receiver.url, timeoutMs: 25_000 } },
        ],
      }),
      // Probes every 200 ms keep failed attempts (the error ratio's input) flowing at test speed.
      OUTBOX_CIRCUIT_OPEN_MS: '200',
      METRICS_PORT: String(metricsPort),
      METRICS_HOST: '127.0.0.1',
      OUTBOX_BATCH_SIZE: '1',
      OUTBOX_CONCURRENCY: '4',
      OUTBOX_BACKOFF_BASE_MS: '100',
      OUTBOX_BACKOFF_MAX_MS: '300',
      OUTBOX_MAX_ATTEMPTS: '1000',
      OUTBOX_BACKLOG_SAMPLE_MS: '500',
      OUTBOX_POLL_INTERVAL_MS: '100',
      LOG_LEVEL: 'warn',
    });
    await waitFor(() => fetch(`http://127.0.0.1:${metricsPort}/readyz`).then((r) => r.ok), { what: 'worker ready' });

    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'outbox-prom-'));
    fs.writeFileSync(path.join(dir, 'rules.yml'), renderRules({ timeScale: 1 / 60, interval: '1s' }));
    fs.writeFileSync(
      path.join(dir, 'prometheus.yml'),
      [
        'global: { scrape_interval: 1s, evaluation_interval: 1s }',
        'rule_files: [rules.yml]',
        'scrape_configs:',
        '  - job_name: outbox-dispatcher',
        `    static_configs: [{ targets: ["127.0.0.1:${metricsPort}"] }]`,
        '',
      ].join('\n'),
    );
    const promPort = await freePort();
    promUrl = `http://127.0.0.1:${promPort}`;
    prometheus = spawn('prometheus', [
      `--config.file=${path.join(dir, 'prometheus.yml')}`,
      `--storage.tsdb.path=${path.join(dir, 'data')}`,
      `--web.listen-address=127.0.0.1:${promPort}`,
      '--storage.tsdb.retention.time=1h',
    ], { stdio: 'ignore' });
    await waitFor(() => fetch(`${promUrl}/-/ready`).then((r) => r.ok), { what: 'prometheus ready' });
    // Counters must be seen at their starting value before the incidents move them.
    await waitFor(
      async () => {
        const r = (await (await fetch(`${promUrl}/api/v1/query?query=${encodeURIComponent('up{job="outbox-dispatcher"} == 1')}`)).json()) as { data: { result: unknown[] } };
        return r.data.result.length === 1;
      },
      { what: 'first scrape of the worker', timeoutMs: 60_000, intervalMs: 250 },
    );
  }, 120_000);

  afterAll(async () => {
    prometheus?.kill('SIGTERM');
    worker?.child.kill('SIGKILL');
    await receiver?.close();
    await db?.drop();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  const firing = async () => {
    const body = (await (await fetch(`${promUrl}/api/v1/alerts`)).json()) as { data: { alerts: { labels: Record<string, string>; state: string }[] } };
    return new Set(body.data.alerts.filter((a) => a.state === 'firing').map((a) => a.labels.alertname!));
  };
  const untilFiring = (alert: string, timeoutMs = 60_000) =>
    waitFor(async () => (await firing()).has(alert), { what: `${alert} firing`, timeoutMs, intervalMs: 500 }).catch(async (err: Error) => {
      const rules = (await (await fetch(`${promUrl}/api/v1/rules`)).json()) as { data: { groups: { rules: { name: string; query: string }[] }[] } };
      const rule = rules.data.groups[0]!.rules.find((r) => r.name === alert)!;
      const q = async (e: string) => JSON.stringify(((await (await fetch(`${promUrl}/api/v1/query?query=${encodeURIComponent(e)}`)).json()) as { data: unknown }).data);
      throw new Error(`${err.message}; firing: ${[...(await firing())].join(', ')}; ${rule.query} => ${await q(rule.query.replace(/ > 0$/, ''))}; raw: ${await q('outbox_events_dead_lettered_total')}`);
    });

  it('sink outage fires OutboxDispatchErrorRatioHigh and OutboxSinkCircuitOpen; poison events fire OutboxDeadLettersIncreasing', async () => {
    await produce(db.producerUrl, tenantId(), Array.from({ length: 5 }, () => ({ type: 'outage.sink' })));
    const poison = await runCli(['incident', 'poison', '--count', '5', '--type', 'booking.poison'], { DATABASE_URL: db.producerUrl });
    expect(poison.code, poison.stderr).toBe(0);
    expect(poison.stdout).toContain('inserted 5 poison events');
    await Promise.all([untilFiring('OutboxDispatchErrorRatioHigh'), untilFiring('OutboxSinkCircuitOpen'), untilFiring('OutboxDeadLettersIncreasing')]);
    const alerts = (await (await fetch(`${promUrl}/api/v1/alerts`)).json()) as { data: { alerts: { labels: Record<string, string>; state: string }[] } };
    const circuit = alerts.data.alerts.filter((a) => a.labels.alertname === 'OutboxSinkCircuitOpen' && a.state === 'firing').map((a) => a.labels.sink);
    expect(circuit).toEqual(['outage']);
  }, 90_000);

  it('every dashboard panel query parses and returns data from the scraped worker', async () => {
    const t = tenantId();
    await produce(db.producerUrl, t, Array.from({ length: 10 }, (_, i) => ({ type: `booking.e${i % 2}` })));
    await produce(db.producerUrl, t, [{ type: 'outage.warmup' }]);
    await waitFor(async () => (await db.query("SELECT 1 FROM capacity_outbox WHERE event_type LIKE 'booking.%' AND status = 'done'")).rowCount === 10);
    // Until Prometheus has scraped the worker after that traffic.
    await waitFor(
      async () => {
        const r = (await (await fetch(`${promUrl}/api/v1/query?query=${encodeURIComponent('sum(outbox_events_dispatched_total{outcome="success"})')}`)).json()) as { data: { result: { value: [number, string] }[] } };
        return Number(r.data.result[0]?.value[1] ?? 0) >= 10;
      },
      { what: 'scraped traffic', timeoutMs: 60_000, intervalMs: 500 },
    );
    await new Promise((r) => setTimeout(r, 3000)); // rate() needs a few samples
    const empty: string[] = [];
    for (const d of dashboards) {
      for (const p of d.panels) {
        for (const target of p.targets) {
          const expr = target.expr.replaceAll('$__rate_interval', '10s').replaceAll('$job', '.+').replaceAll('$event_type', '.+').replaceAll('$sink', '.+');
          const res = await fetch(`${promUrl}/api/v1/query?query=${encodeURIComponent(expr)}`);
          const body = (await res.json()) as { status: string; error?: string; data?: { result: unknown[] } };
          expect(body.status, `${d.uid} / ${p.title}: ${body.error}`).toBe('success');
          if (!body.data?.result.length) empty.push(`${d.uid} / ${p.title}: ${expr}`);
        }
      }
    }
    expect(empty).toEqual([]);
  });

  it('a backlog surge fires OutboxLagObjectiveBreached', async () => {
    const r = await runCli(['incident', 'backlog', '--count', '30', '--type', 'slow.backlog', '--age', '3600', '--database-url', db.adminUrl], {});
    expect(r.code, r.stderr).toBe(0);
    await untilFiring('OutboxLagObjectiveBreached');
  }, 90_000);

  it('a dead dispatcher fires OutboxDispatcherDown', async () => {
    expect(await firing()).not.toContain('OutboxDispatcherDown');
    worker.child.kill('SIGKILL');
    await untilFiring('OutboxDispatcherDown');
  }, 90_000);
});
