import fs from 'node:fs';
import path from 'node:path';
import YAML from 'yaml';
import { describe, expect, it } from 'vitest';
import { alertRules } from '../dashboards/src/alert-rules.ts';
import { loadEnvConfig } from '../src/config/env.ts';
import { compileRoutes, parseRoutes } from '../src/config/routes.ts';

// Offline checks of deploy/ (no cluster, no kustomize binary here): every manifest parses,
// the kustomization lists them, and the values agree with the daemon and the alert rules.

const dir = path.resolve(import.meta.dirname, '../deploy');
const load = (f: string) => YAML.parse(fs.readFileSync(path.join(dir, f), 'utf8'));

describe('deploy/ Kubernetes example', () => {
  it('lists every manifest in the kustomization, and each parses', () => {
    const k = load('kustomization.yaml');
    const files = fs.readdirSync(dir).filter((f) => f.endsWith('.yaml') && f !== 'kustomization.yaml').sort();
    expect([...k.resources].sort()).toEqual(files);
    for (const f of files) expect(load(f).kind, f).toBeTruthy();
  });

  it('gives SIGTERM more time than the drain, probes /readyz and /healthz, and runs as non-root', () => {
    const d = load('deployment.yaml');
    const pod = d.spec.template.spec;
    const c = pod.containers[0];
    const env = Object.fromEntries(c.env.filter((e: { value?: string }) => e.value !== undefined).map((e: { name: string; value: string }) => [e.name, e.value]));
    const config = loadEnvConfig({ ...env, OUTBOX_ROUTES: undefined });
    expect(pod.terminationGracePeriodSeconds * 1000).toBeGreaterThan(config.dispatch.shutdownGraceMs + 5000);
    expect(c.readinessProbe.httpGet.path).toBe('/readyz');
    expect(c.livenessProbe.httpGet.path).toBe('/healthz');
    expect(c.ports[0].containerPort).toBe(config.metrics.port);
    expect(pod.securityContext.runAsNonRoot).toBe(true);
  });

  it('ships a routes file the daemon accepts', () => {
    const cm = load('routes-configmap.yaml');
    const routes = compileRoutes(parseRoutes(YAML.parse(cm.data['routes.yaml'])), 30_000);
    expect(routes.map((r) => r.sink.type)).toEqual(['http', 'nats']);
  });

  it('wraps exactly the tested alert rules in the PrometheusRule, and KEDA scales on exported metrics', () => {
    const rule = load('prometheusrule.yaml');
    expect(rule.spec.groups[0].rules.map((r: { alert: string; expr: string }) => [r.alert, r.expr])).toEqual(alertRules().map((r) => [r.alert, r.expr]));
    const keda = load('keda-scaledobject.yaml');
    for (const t of keda.spec.triggers) expect(t.metadata.query).toMatch(/outbox_(backlog_events|oldest_due_event_age_seconds)\{job="outbox-dispatcher"/);
    expect(load('podmonitor.yaml').spec.podMetricsEndpoints[0].relabelings[0].replacement).toBe('outbox-dispatcher');
  });
});
