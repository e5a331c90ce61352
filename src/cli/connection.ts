import os from 'node:os';
import type { Kysely } from 'kysely';
import pg from 'pg';
import { loadEnvConfig, type EnvConfig } from '../config/env.ts';
import { BACKGROUND_ROLE, createKysely, createPool } from '../db/pool.ts';
import type { Database } from '../db/schema.ts';
import { connectClient } from '../db/connect.ts';
import type { EmbeddedCluster } from '../embedded/cluster.ts';
import { prepareEmbedded } from '../embedded/bootstrap.ts';
import { createLogger, type Logger } from '../log.ts';
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
  return createLogger(config.logLevel === 'debug' || config.logLevel === 'trace' ? config.logLevel : 'silent');
}

/** Resolves the connection, runs `work` with a client, and cleans up (client, embedded cluster). */
export async function withClient<T>(
  config: EnvConfig,
  log: Logger,
  opts: { as: 'dispatcher' | 'superuser'; url?: string | undefined; applicationName: string },
  work: (client: pg.Client) => Promise<T>,
): Promise<T> {
  const conn = await resolveConnection(config, log, opts);
  try {
    return await reportingLogin(conn.url, async () => {
      const client = await connectClient(conn.url, opts.applicationName);
      try {
        return await work(client);
      } finally {
        await client.end().catch(() => undefined);
      }
    });
  } finally {
    await conn.release();
  }
}

/** Runs `work` as app_background against DATABASE_URL or the embedded default. */
export async function withDatabase<T>(opts: { databaseUrl?: string }, env: NodeJS.ProcessEnv, work: (db: Kysely<Database>) => Promise<T>): Promise<T> {
  const config = loadEnvConfig(env);
  const log = cliLogger(config);
  const conn = await resolveConnection(config, log, { as: 'dispatcher', url: opts.databaseUrl });
  const db = createKysely(createPool({ connectionString: conn.url, max: 2, applicationName: 'outbox-dispatcher-cli', role: BACKGROUND_ROLE }));
  try {
    return await reportingLogin(conn.url, () => work(db));
  } finally {
    await db.destroy();
    await conn.release();
  }
}
