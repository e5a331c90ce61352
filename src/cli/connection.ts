import os from 'node:os';
import type { Kysely } from 'kysely';
import pg from 'pg';
import { loadEnvConfig, type EnvConfig } from '../config/env.ts';
import { ConfigError } from '../config/errors.ts';
import { TRANSACTION_POOLER_HINT } from '../db/migrator.ts';
import { probePooler } from '../db/pooler.ts';
import { inspectLoginRole, poolRole, roleSwitchNeeded } from '../db/login-role.ts';
import { createKysely, createPool } from '../db/pool.ts';
import type { Database } from '../db/schema.ts';
import { connectClient } from '../db/connect.ts';
import type { EmbeddedCluster } from '../embedded/cluster.ts';
import { prepareEmbedded } from '../embedded/bootstrap.ts';
import { createLogger, isDebugLevel, type Logger } from '../kernel/log.ts';
import { ConnectedAsError } from './errors.ts';

export interface Connection {
  /** The URL the command should use. */
  url: string;
  embedded: EmbeddedCluster | undefined;
  /** Stops the embedded cluster if this process started it. */
  release(): Promise<void>;
}

/**
 * DATABASE_URL when set; otherwise the embedded default under OUTBOX_EMBEDDED_DIR
 * (started, migrated and given its login role on first use).
 */
export async function resolveConnection(
  config: EnvConfig,
  log: Logger,
  opts: { as: 'dispatcher' | 'superuser'; url?: string | undefined },
): Promise<Connection> {
  const url = opts.url ?? config.databaseUrl;
  if (url) return { url, embedded: undefined, release: async () => {} };
  const cluster = await prepareEmbedded({ dir: config.embedded.dir, port: config.embedded.port, log });
  return {
    url: cluster.url({ as: opts.as }),
    embedded: cluster,
    release: () => cluster.stop(),
  };
}

/** The login role a URL connects as (what libpq would pick when the URL names none). */
export function loginRoleOf(url: string, env: NodeJS.ProcessEnv = process.env): string {
  let user = '';
  try {
    user = decodeURIComponent(new URL(url).username);
  } catch {
    /* not a URL (a libpq key=value string): fall through */
  }
  return user || env.PGUSER || os.userInfo().username;
}

/** Errors from the database work carry the login they ran as, for the error message. */
async function reportingLogin<T>(url: string, work: () => Promise<T>): Promise<T> {
  try {
    return await work();
  } catch (err) {
    throw new ConnectedAsError(err, loginRoleOf(url));
  }
}

/**
 * The logger of the operator commands: they print their own report (and a failure as one
 * line), so JSON log lines (with error stacks) only appear with LOG_LEVEL=debug or trace.
 */
export function cliLogger(config: EnvConfig): Logger {
  return createLogger(isDebugLevel(config.logLevel) ? config.logLevel : 'silent');
}

/** What every operator command starts from: the validated settings and the quiet logger. */
export function cliSettings(env: NodeJS.ProcessEnv): { config: EnvConfig; log: Logger } {
  const config = loadEnvConfig(env);
  return { config, log: cliLogger(config) };
}

/** Resolves the connection, runs `work` with a client, and cleans up (client, embedded cluster). */
export async function withClient<T>(
  config: EnvConfig,
  log: Logger,
  opts: { as: 'dispatcher' | 'superuser'; url?: string | undefined; applicationName: string },
  work: (client: pg.Client, url: string) => Promise<T>,
): Promise<T> {
  const conn = await resolveConnection(config, log, opts);
  try {
    return await reportingLogin(conn.url, async () => {
      const client = await connectClient(conn.url, opts.applicationName);
      try {
        return await work(client, conn.url);
      } finally {
        await client.end().catch(() => undefined);
      }
    });
  } finally {
    await conn.release();
  }
}

/**
 * Runs `work` with app_background's privileges against DATABASE_URL or the embedded default:
 * the login inherits them (no role switch, so it works through a transaction pooler), or a
 * privileged login switches with a startup option, as the daemon does.
 */
export async function withDatabase<T>(opts: { databaseUrl?: string }, env: NodeJS.ProcessEnv, work: (db: Kysely<Database>) => Promise<T>): Promise<T> {
  const { config, log } = cliSettings(env);
  const conn = await resolveConnection(config, log, { as: 'dispatcher', url: opts.databaseUrl });
  let db: Kysely<Database> | undefined;
  try {
    return await reportingLogin(conn.url, async () => {
      const probe = await connectClient(conn.url, 'outbox-dispatcher-cli');
      // The CLI is run by an operator, who may use a privileged URL on purpose: it switches.
      const roleSwitch = await inspectLoginRole(probe)
        .then((role) => roleSwitchNeeded(role, { allowPrivilegedRole: true }))
        .finally(() => probe.end().catch(() => undefined));
      db = createKysely(createPool({ connectionString: conn.url, max: 2, applicationName: 'outbox-dispatcher-cli', role: poolRole(roleSwitch) }));
      return await work(db);
    });
  } finally {
    await db?.destroy();
    await conn.release();
  }
}

/**
 * Owner work that holds session state (migrate's advisory lock, adopt's session settings) needs
 * a direct or session-mode connection: exit 78 naming the setting the URL came from when it is
 * a transaction-mode pooler, before anything is locked or changed.
 */
export async function assertSessionConnection(client: pg.Client, url: string, opts: { flagUrl: string | undefined; config: EnvConfig }): Promise<void> {
  if (!(await probePooler(client, url)).transactionPooled) return;
  const key = opts.flagUrl ? '--database-url' : opts.config.migrationDatabaseUrl ? 'MIGRATION_DATABASE_URL' : 'DATABASE_URL';
  throw new ConfigError(key, TRANSACTION_POOLER_HINT);
}
