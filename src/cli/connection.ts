import pg from 'pg';
import type { EnvConfig } from '../config/env.ts';
import { connectClient } from '../db/connect.ts';
import type { EmbeddedCluster } from '../embedded/cluster.ts';
import { prepareEmbedded } from '../embedded/bootstrap.ts';
import type { Logger } from '../log.ts';

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

/** Resolves the connection, runs `work` with a client, and cleans up (client, embedded cluster). */
export async function withClient<T>(
  config: EnvConfig,
  log: Logger,
  opts: { as: 'dispatcher' | 'superuser'; url?: string | undefined; applicationName: string },
  work: (client: pg.Client) => Promise<T>,
): Promise<T> {
  const conn = await resolveConnection(config, log, opts);
  try {
    const client = await connectClient(conn.url, opts.applicationName);
    try {
      return await work(client);
    } finally {
      await client.end().catch(() => undefined);
    }
  } finally {
    await conn.release();
  }
}
