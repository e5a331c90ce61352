import crypto from 'node:crypto';
import { Kysely } from 'kysely';
import pg from 'pg';
import { inject } from 'vitest';
import { createKysely, createPool } from '../../src/db/pool.ts';
import { asProducer, insertEvents } from '../../src/db/queries/producer.ts';
import type { Database } from '../../src/db/schema.ts';
import { TEST_ROLES } from './roles.ts';

export interface TestDatabase {
  name: string;
  /** Superuser: for setup and for inspecting rows regardless of RLS. */
  adminUrl: string;
  /** A login role in app_background (what the daemon connects as). */
  workerUrl: string;
  /** A login role in app_producer (what the platform's writers connect as). */
  producerUrl: string;
  /** Runs a query as the superuser. */
  query<R extends pg.QueryResultRow = pg.QueryResultRow>(text: string, values?: unknown[]): Promise<pg.QueryResult<R>>;
  /**
   * A Kysely over a pool of the worker login (which inherits app_background, as the daemon's
   * does: no role switch), closed by drop(). `url` replaces the worker URL (e.g. via PgBouncer).
   */
  workerDb(url?: string): Kysely<Database>;
  drop(): Promise<void>;
}

function withUser(url: string, database: string, user?: string): string {
  const u = new URL(url);
  u.pathname = `/${database}`;
  if (user) {
    u.username = user;
    u.password = TEST_ROLES.password;
  }
  return u.toString();
}

/** A fresh database for one test file, cloned from the migrated template. */
export async function createTestDatabase(): Promise<TestDatabase> {
  const root = inject('adminUrl');
  const name = `t_${inject('runId')}_${crypto.randomBytes(5).toString('hex')}`;
  const server = new pg.Client({ connectionString: root });
  await server.connect();
  try {
    await server.query(`CREATE DATABASE ${name} TEMPLATE ${inject('templateDb')}`);
  } finally {
    await server.end();
  }
  const adminUrl = withUser(root, name);
  const admin = new pg.Pool({ connectionString: adminUrl, max: 4 });
  // DROP DATABASE ... WITH (FORCE) terminates whatever is still connected: never a crash.
  admin.on('error', () => undefined);
  admin.on('connect', (client) => client.on('error', () => undefined));
  const dbs: Kysely<Database>[] = [];
  return {
    name,
    adminUrl,
    workerUrl: withUser(root, name, TEST_ROLES.worker),
    producerUrl: withUser(root, name, TEST_ROLES.producer),
    query: (text, values) => admin.query(text, values),
    workerDb(url?: string) {
      const db = createKysely(createPool({ connectionString: url ?? withUser(root, name, TEST_ROLES.worker), max: 6, applicationName: 'test' }));
      dbs.push(db);
      return db;
    },
    async drop() {
      await Promise.all(dbs.map((d) => d.destroy()));
      await admin.end();
      const c = new pg.Client({ connectionString: root });
      await c.connect();
      await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      await c.end();
    },
  };
}

export interface ProducedEvent {
  type: string;
  payload?: object;
  dedupeKey?: string | null;
  idempotencyKey?: string | null;
  /** The headers column (any JSON, to test validation); omitted: NULL. */
  headers?: unknown;
  orderingKey?: string | null;
}

/**
 * Inserts events per the producer contract: as a producer role, tenant context
 * set, one transaction. Returns the ids the INSERTs returned (duplicates return none).
 */
export async function produce(url: string, tenant: string, events: ProducedEvent[]): Promise<string[]> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    return await asProducer(c, tenant, () => insertEvents(c, tenant, events));
  } finally {
    await c.end();
  }
}

export function tenantId(): string {
  return crypto.randomUUID();
}

/** Polls `check` until it returns a truthy value (never a fixed sleep). */
export async function waitFor<T>(check: () => Promise<T> | T, opts: { timeoutMs?: number; intervalMs?: number; what?: string } = {}): Promise<NonNullable<T>> {
  const deadline = Date.now() + (opts.timeoutMs ?? 30_000);
  let last: unknown;
  for (;;) {
    try {
      const v = await check();
      if (v) return v as NonNullable<T>;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out waiting for ${opts.what ?? 'condition'}${last ? `: ${(last as Error).message}` : ''}`);
    }
    await new Promise((r) => setTimeout(r, opts.intervalMs ?? 50));
  }
}

export async function statusCounts(db: TestDatabase): Promise<Record<string, number>> {
  const { rows } = await db.query<{ status: string; n: string }>('SELECT status, count(*) AS n FROM capacity_outbox GROUP BY status');
  return Object.fromEntries(rows.map((r) => [r.status, Number(r.n)]));
}

/** An empty database (no migrations) for tests of the migrations themselves. */
export async function createEmptyDatabase(): Promise<{ url: string; drop: () => Promise<void> }> {
  const root = inject('adminUrl');
  const name = `t_${inject('runId')}_${crypto.randomBytes(5).toString('hex')}`;
  const c = new pg.Client({ connectionString: root });
  await c.connect();
  await c.query(`CREATE DATABASE ${name}`);
  await c.end();
  return {
    url: withUser(root, name),
    drop: async () => {
      const d = new pg.Client({ connectionString: root });
      await d.connect();
      await d.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      await d.end();
    },
  };
}

/** The URL of `url`'s database for a test login role. */
export function asRole(url: string, role: 'worker' | 'producer'): string {
  const u = new URL(url);
  return withUser(url, u.pathname.slice(1), role === 'worker' ? TEST_ROLES.worker : TEST_ROLES.producer);
}

/** Turns autovacuum off on every partition, so "never analyzed" stays true while a test runs. */
export async function keepNeverAnalyzed(db: TestDatabase): Promise<void> {
  const { rows } = await db.query<{ part: string }>(
    "SELECT inhrelid::regclass::text AS part FROM pg_inherits WHERE inhparent = 'public.capacity_outbox'::regclass",
  );
  for (const r of rows) await db.query(`ALTER TABLE ${r.part} SET (autovacuum_enabled = off)`);
}
