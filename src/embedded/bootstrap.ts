import pg from 'pg';
import { migrate } from '../db/migrator.ts';
import { BACKGROUND_ROLE } from '../db/pool.ts';
import { ensureDatabase, ensureLoginRole } from '../db/queries/session.ts';
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
      await ensureDatabase(admin, EMBEDDED_DATABASE);
    } finally {
      await admin.end();
    }

    const owner = new pg.Client({ connectionString: cluster.url({ as: 'superuser' }) });
    await owner.connect();
    try {
      const applied = await migrate(owner);
      if (applied.length > 0) opts.log.info({ applied }, 'embedded database migrated');
      const { dispatcherRole, dispatcherPassword } = cluster.credentials;
      await ensureLoginRole(owner, dispatcherRole, dispatcherPassword, BACKGROUND_ROLE);
    } finally {
      await owner.end();
    }
  } catch (err) {
    await cluster.stop().catch(() => undefined);
    throw err;
  }
  return cluster;
}
