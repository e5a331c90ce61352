import pg from 'pg';
import { migrate } from '../db/migrator.ts';
import { BACKGROUND_ROLE } from '../db/pool.ts';
import type { Logger } from '../kernel/log.ts';
import { ensureEmbeddedCluster, type EmbeddedCluster } from './cluster.ts';

export const EMBEDDED_DATABASE = 'outbox';

/**
 * Brings the embedded default to a runnable state: cluster up, database created,
 * migrations applied, and a least-privilege login role for the daemon (the daemon
 * never runs as the cluster's superuser, even here).
 */
export async function prepareEmbedded(opts: { dir: string; port: number; log: Logger }): Promise<EmbeddedCluster> {
  const cluster = await ensureEmbeddedCluster(opts);
  try {
    const admin = new pg.Client({ connectionString: cluster.url({ database: 'postgres', as: 'superuser' }) });
    await admin.connect();
    try {
      const exists = await admin.query('SELECT 1 FROM pg_database WHERE datname = $1', [EMBEDDED_DATABASE]);
      if (exists.rowCount === 0) await admin.query(`CREATE DATABASE ${pg.escapeIdentifier(EMBEDDED_DATABASE)}`);
    } finally {
      await admin.end();
    }

    const owner = new pg.Client({ connectionString: cluster.url({ as: 'superuser' }) });
    await owner.connect();
    try {
      const applied = await migrate(owner);
      if (applied.length > 0) opts.log.info({ applied }, 'embedded database migrated');
      const { dispatcherRole, dispatcherPassword } = cluster.credentials;
      const role = pg.escapeIdentifier(dispatcherRole);
      const found = await owner.query('SELECT 1 FROM pg_roles WHERE rolname = $1', [dispatcherRole]);
      if (found.rowCount === 0) await owner.query(`CREATE ROLE ${role} LOGIN NOSUPERUSER NOBYPASSRLS`);
      await owner.query(`ALTER ROLE ${role} PASSWORD ${pg.escapeLiteral(dispatcherPassword)}`);
      await owner.query(`GRANT ${BACKGROUND_ROLE} TO ${role}`);
    } finally {
      await owner.end();
    }
  } catch (err) {
    await cluster.stop().catch(() => undefined);
    throw err;
  }
  return cluster;
}
