import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import type { TestProject } from 'vitest/node';
import { migrate } from '../../src/db/migrator.ts';
import { ensureEmbeddedCluster } from '../../src/embedded/cluster.ts';
import { createLogger } from '../../src/kernel/log.ts';
import { testRolesFor } from './roles.ts';
import { freePort } from './ports.ts';

declare module 'vitest' {
  export interface ProvidedContext {
    adminUrl: string;
    templateDb: string;
    /** Prefix of the per-file databases of this run. */
    runId: string;
  }
}

// Where the tests' PostgreSQL comes from, in order: TEST_DATABASE_URL; a
// testcontainers PostgreSQL when a Docker engine answers; the embedded binaries.
async function startPostgres(): Promise<{ adminUrl: string; stop: () => Promise<void> }> {
  if (process.env.TEST_DATABASE_URL) return { adminUrl: process.env.TEST_DATABASE_URL, stop: async () => {} };
  if (process.env.DOCKER_HOST || fs.existsSync('/var/run/docker.sock')) {
    try {
      const { GenericContainer, Wait } = await import('testcontainers');
      const container = await new GenericContainer('postgres:15-alpine')
        .withEnvironment({ POSTGRES_PASSWORD: 'postgres' })
        .withExposedPorts(5432)
        .withWaitStrategy(Wait.forLogMessage(/database system is ready to accept connections/, 2))
        .start();
      const url = `postgres://postgres:postgres@${container.getHost()}:${container.getMappedPort(5432)}/postgres`;
      return { adminUrl: url, stop: async () => void (await container.stop()) };
    } catch (err) {
      console.warn(`testcontainers unavailable (${(err as Error).message}); using embedded PostgreSQL`);
    }
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'outbox-test-pg-'));
  fs.chmodSync(dir, 0o755);
  const port = await freePort();
  const cluster = await ensureEmbeddedCluster({ dir: path.join(dir, 'data'), port, log: createLogger('warn') });
  return {
    adminUrl: cluster.url({ database: 'postgres', as: 'superuser' }),
    stop: async () => {
      await cluster.stop();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

export default async function setup(project: TestProject) {
  const { adminUrl, stop } = await startPostgres();
  const runTag = `${process.pid}_${Date.now().toString(36)}`;
  const templateDb = `outbox_tpl_${runTag}`;
  const roles = testRolesFor(runTag, crypto.randomBytes(12).toString('hex'));
  const admin = new pg.Client({ connectionString: adminUrl });
  await admin.connect();
  await admin.query(`CREATE DATABASE ${templateDb}`);
  const tplUrl = new URL(adminUrl);
  tplUrl.pathname = `/${templateDb}`;
  const tpl = new pg.Client({ connectionString: tplUrl.toString() });
  await tpl.connect();
  await migrate(tpl);
  // This run's login roles (cluster-wide, so named per run and dropped below): never superusers.
  for (const [role, group] of [
    [roles.worker, 'app_background'],
    [roles.producer, 'app_producer'],
  ] as const) {
    await tpl.query(`CREATE ROLE ${role} LOGIN NOSUPERUSER NOBYPASSRLS PASSWORD '${roles.password}' IN ROLE ${group}`);
  }
  await tpl.end();
  project.provide('adminUrl', adminUrl);
  project.provide('templateDb', templateDb);
  project.provide('runId', String(process.pid));
  project.provide('testRoles', roles);

  return async () => {
    await admin.query(`DROP DATABASE IF EXISTS ${templateDb} WITH (FORCE)`).catch(() => undefined);
    // Databases of files that failed before their own cleanup.
    const { rows } = await admin.query<{ datname: string }>(
      "SELECT datname FROM pg_database WHERE datname LIKE $1",
      [`t\\_${process.pid}\\_%`],
    );
    for (const r of rows) await admin.query(`DROP DATABASE IF EXISTS "${r.datname}" WITH (FORCE)`).catch(() => undefined);
    // Owner roles of test/support/owned-db.ts whose files failed before their own cleanup.
    const owners = await admin.query<{ rolname: string }>('SELECT rolname FROM pg_roles WHERE rolname LIKE $1', [`t\\_owner\\_${process.pid}\\_%`]);
    for (const r of owners.rows) await admin.query(`DROP ROLE IF EXISTS "${r.rolname}"`).catch(() => undefined);
    // Every database of the run is gone, so nothing depends on the run's login roles any more.
    for (const role of [roles.worker, roles.producer]) {
      await admin.query(`DROP ROLE IF EXISTS ${role}`).catch((err: Error) => console.warn(`could not drop test role ${role}: ${err.message}`));
    }
    await admin.end();
    await stop();
  };
}
