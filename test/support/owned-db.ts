import crypto from 'node:crypto';
import pg from 'pg';
import { inject } from 'vitest';
import { migrate } from '../../src/db/migrator.ts';
import { TEST_ROLES } from './roles.ts';

/**
 * A database owned by a fresh, plain login role (NOSUPERUSER NOBYPASSRLS NOCREATEDB
 * NOCREATEROLE) that ran the migrations itself: how a platform team usually deploys. The
 * cluster-wide roles app_background/app_producer already exist (the template's migration
 * created them), as they would when another database of the cluster was migrated first.
 */
export interface OwnedDatabase {
  name: string;
  ownerRole: string;
  /** The owner's login (ran the migrations, owns every object). */
  ownerUrl: string;
  /** Superuser, for inspecting rows regardless of RLS. */
  adminUrl: string;
  workerUrl: string;
  producerUrl: string;
  /** Runs a query as the superuser. */
  query<R extends pg.QueryResultRow = pg.QueryResultRow>(text: string, values?: unknown[]): Promise<pg.QueryResult<R>>;
  /** Runs a query as the owner. */
  ownerQuery<R extends pg.QueryResultRow = pg.QueryResultRow>(text: string, values?: unknown[]): Promise<pg.QueryResult<R>>;
  drop(): Promise<void>;
}

function urlFor(root: string, database: string, user?: string): string {
  const u = new URL(root);
  u.pathname = `/${database}`;
  if (user) {
    u.username = user;
    u.password = TEST_ROLES.password;
  }
  return u.toString();
}

export async function createOwnedDatabase(opts: {
  /** Runs as the owner on the empty database before migrating (e.g. a team's existing plain outbox). */
  beforeMigrate?: (owner: pg.Client) => Promise<void>;
  /** Default true. */
  migrate?: boolean;
} = {}): Promise<OwnedDatabase> {
  const root = inject('adminUrl');
  const suffix = `${inject('runId')}_${crypto.randomBytes(5).toString('hex')}`;
  const name = `t_${suffix}`;
  const ownerRole = `t_owner_${suffix}`;
  const server = new pg.Client({ connectionString: root });
  await server.connect();
  try {
    await server.query(
      `CREATE ROLE ${ownerRole} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE PASSWORD '${TEST_ROLES.password}'`,
    );
    await server.query(`CREATE DATABASE ${name} OWNER ${ownerRole}`);
  } finally {
    await server.end();
  }
  const ownerUrl = urlFor(root, name, ownerRole);
  const owner = new pg.Client({ connectionString: ownerUrl });
  await owner.connect();
  try {
    // PostgreSQL 15 gives the public schema to the database owner; older servers need it said.
    await owner.query('CREATE SCHEMA IF NOT EXISTS public');
    await opts.beforeMigrate?.(owner);
    if (opts.migrate !== false) await migrate(owner);
  } finally {
    await owner.end();
  }
  const pools: pg.Pool[] = [];
  const pool = (url: string) => {
    const p = new pg.Pool({ connectionString: url, max: 3 });
    p.on('error', () => undefined);
    p.on('connect', (c) => c.on('error', () => undefined));
    pools.push(p);
    return p;
  };
  const admin = pool(urlFor(root, name));
  const ownerPool = pool(ownerUrl);
  return {
    name,
    ownerRole,
    ownerUrl,
    adminUrl: urlFor(root, name),
    workerUrl: urlFor(root, name, TEST_ROLES.worker),
    producerUrl: urlFor(root, name, TEST_ROLES.producer),
    query: (text, values) => admin.query(text, values),
    ownerQuery: (text, values) => ownerPool.query(text, values),
    async drop() {
      await Promise.all(pools.map((p) => p.end().catch(() => undefined)));
      const c = new pg.Client({ connectionString: root });
      await c.connect();
      try {
        await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
        await c.query(`DROP ROLE IF EXISTS ${ownerRole}`);
      } finally {
        await c.end();
      }
    },
  };
}
