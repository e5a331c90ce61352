// Writes the generated monitoring artefacts: alert rules and Grafana dashboards.
// `npm run dashboards` (and a test that fails when the committed files are stale).
import fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import { renderRules } from './alert-rules.ts';
import { renderAlertTests } from './alert-tests.ts';
import { dashboards, toGrafana } from './dashboards.ts';

const root = fileURLToPath(new URL('..', import.meta.url));

export function generatedFiles(): Record<string, string> {
  const files: Record<string, string> = {
    'alerts/outbox.rules.yml': renderRules(),
    'alerts/tests/outbox.rules.test.yml': renderAlertTests(),
  };
  for (const d of dashboards) files[`${d.uid}.json`] = `${JSON.stringify(toGrafana(d), null, 2)}\n`;
  return files;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  for (const [name, content] of Object.entries(generatedFiles())) {
    fs.writeFileSync(`${root}${name}`, content);
    process.stdout.write(`wrote dashboards/${name}\n`);
  }
}
