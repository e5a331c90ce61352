import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Command } from 'commander';
import { describe, expect } from 'vitest';
import { alertRules } from '../dashboards/src/alert-rules.ts';
import { dashboards } from '../dashboards/src/dashboards.ts';
import { generatedFiles, runbookBaseFrom } from '../dashboards/src/generate.ts';
import { buildProgram } from '../src/cli/program.ts';
import { produce, tenantId, waitFor } from './support/db.ts';
import { startDaemon } from './support/daemon.ts';
import { it } from './support/fixtures.ts';

const root = path.resolve(import.meta.dirname, '..');
const read = (f: string) => fs.readFileSync(path.join(root, f), 'utf8');
const hasPromtool = spawnSync('promtool', ['--version']).status === 0;
const requirePromtool = process.env.REQUIRE_PROMTOOL === '1';

describe('generated monitoring artefacts', () => {
  it('are committed up to date (npm run dashboards)', () => {
    for (const [name, content] of Object.entries(generatedFiles())) {
      expect(read(`dashboards/${name}`), `dashboards/${name} is stale: run npm run dashboards`).toBe(content);
    }
  });

  it('take the runbook_url base from OUTBOX_RUNBOOK_BASE_URL (a build setting), refusing what is not an http(s) URL', () => {
    const base = runbookBaseFrom({ OUTBOX_RUNBOOK_BASE_URL: 'https://wiki.example.org/outbox/alerts.md' });
    const files = generatedFiles({ runbookBase: base });
    for (const name of ['alerts/outbox.rules.yml', '../deploy/prometheusrule.yaml']) {
      const urls = [...files[name]!.matchAll(/runbook_url: "?([^"\n]+)"?/g)].map((m) => m[1]!);
      expect(urls.length, name).toBe(alertRules().length);
      for (const u of urls) expect(u, name).toMatch(/^https:\/\/wiki\.example\.org\/outbox\/alerts\.md#outbox[a-z]+$/);
    }
    expect(runbookBaseFrom({})).toBe(alertRules()[0]!.annotations.runbook_url.split('#')[0]);
    for (const bad of ['runbooks/alerts.md', 'ftp://x/alerts.md', 'https://x/alerts.md#top']) {
      expect(() => runbookBaseFrom({ OUTBOX_RUNBOOK_BASE_URL: bad }), bad).toThrow(/OUTBOX_RUNBOOK_BASE_URL/);
    }
  });

  it('give every alert a severity, summary, description and a runbook_url with a real anchor', () => {
    const alerts = read('runbooks/alerts.md');
    for (const r of alertRules()) {
      expect(['critical', 'warning', 'info']).toContain(r.labels.severity);
      expect(r.annotations.summary.length).toBeGreaterThan(10);
      expect(r.annotations.description.length).toBeGreaterThan(20);
      const anchor = new URL(r.annotations.runbook_url).hash.slice(1);
      expect(new URL(r.annotations.runbook_url).pathname).toMatch(/runbooks\/alerts\.md$/);
      expect(alerts, `runbooks/alerts.md lacks #${anchor}`).toContain(`<a id="${anchor}"></a>\n## ${r.alert}`);
    }
  });

  it('has a promtool unit test, firing and quiet, for every alert', () => {
    const tests = read('dashboards/alerts/tests/outbox.rules.test.yml');
    for (const r of alertRules()) {
      expect(tests.match(new RegExp(`alertname: ${r.alert}\\n`, 'g'))?.length, r.alert).toBe(2);
    }
  });

  it.skipIf(!hasPromtool && !requirePromtool)('pass promtool check rules and promtool test rules', () => {
    execFileSync('promtool', ['check', 'rules', path.join(root, 'dashboards/alerts/outbox.rules.yml')]);
    const out = execFileSync('promtool', ['test', 'rules', path.join(root, 'dashboards/alerts/tests/outbox.rules.test.yml')]).toString();
    expect(out).toContain('SUCCESS');
  });

  it('dashboards have a datasource variable and only query metrics in the catalogue', () => {
    const catalogue = read('runbooks/metrics.md');
    for (const d of dashboards) {
      const json = JSON.parse(read(`dashboards/${d.uid}.json`));
      expect(json.templating.list[0]).toMatchObject({ name: 'datasource', type: 'datasource', query: 'prometheus' });
      for (const panel of json.panels) {
        expect(panel.datasource.uid).toBe('${datasource}');
        for (const t of panel.targets) {
          for (const m of t.expr.match(/outbox_[a-z_]+/g) ?? []) {
            const base = m.replace(/_(bucket|sum|count)$/, '');
            expect(catalogue, `${panel.title}: ${m}`).toContain(`\`${base}\``);
          }
        }
      }
    }
  });
});

describe('runbooks', () => {
  /** Every `npm run cli -- …` / `outbox-dispatcher …` in the docs names a real command and real flags. */
  it('only use commands and flags the CLI really has', () => {
    const program = buildProgram();
    const docs = ['README.md', ...fs.readdirSync(path.join(root, 'runbooks')).map((f) => `runbooks/${f}`)];
    let checked = 0;
    for (const doc of docs) {
      for (const m of read(doc).matchAll(/(?:npm run cli --|(?<![\w/-])outbox-dispatcher) ((?:[a-z][a-z-]*)(?: [a-z][a-z-]*)?)((?: +(?:--[a-z-]+|'[^']*'|"[^"]*"|<[^>]+>|[^\s`|;#)]+))*)/g)) {
        const words = m[1]!.split(' ');
        let cmd: Command = program;
        for (const w of words) {
          const sub = cmd.commands.find((c) => c.name() === w);
          if (!sub) break;
          cmd = sub;
        }
        expect(cmd, `${doc}: unknown command "${m[0]}"`).not.toBe(program);
        const flags = [...m[2]!.matchAll(/--([a-z-]+)/g)].map((f) => `--${f[1]}`);
        const known = new Set(['--help', ...cmd.options.map((o) => o.long!)]);
        for (const f of flags) expect(known.has(f), `${doc}: "${m[0].trim()}" uses unknown flag ${f}`).toBe(true);
        checked++;
      }
    }
    expect(checked).toBeGreaterThan(30);
  });
});

describe('the /metrics endpoint', () => {
  it('serves every catalogued metric, passes promtool check metrics, and has no tenant labels', async ({ fileDb: db }) => {
    const daemon = await startDaemon(db, { env: { PARTITION_ROTATION: 'true', OUTBOX_BACKLOG_SAMPLE_MS: '100' } });
    try {
      const tenant = tenantId();
      await produce(db.producerUrl, tenant, [{ type: 'booking.created' }, { type: 'booking.created' }]);
      await waitFor(async () => (await db.query("SELECT 1 FROM capacity_outbox WHERE status = 'done'")).rowCount === 2);
      await waitFor(async () => (await daemon.metrics.registry.metrics()).includes('outbox_partition_runway_seconds{'));
      const text = await (await fetch(`http://127.0.0.1:${daemon.server.port}/metrics`)).text();
      const catalogue = read('runbooks/metrics.md');
      const exported = new Set([...text.matchAll(/^# TYPE (outbox_\w+) /gm)].map((x) => x[1]!));
      const documented = new Set([...catalogue.matchAll(/^\| `(outbox_\w+)` \|/gm)].map((x) => x[1]!));
      expect([...exported].sort()).toEqual([...documented].sort());
      expect(text).not.toContain(tenant);
      expect(text).not.toMatch(/restaurant|tenant/);
      if (hasPromtool || requirePromtool) {
        const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'metrics-')), 'metrics.txt');
        fs.writeFileSync(file, text);
        const r = spawnSync('sh', ['-c', `promtool check metrics < ${file}`]);
        expect(`${r.stdout}${r.stderr}`.trim(), 'promtool check metrics').toBe('');
        expect(r.status).toBe(0);
      }
    } finally {
      await daemon.stop();
    }
  });
});
