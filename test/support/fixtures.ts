import { test as base } from 'vitest';
import { createTestDatabase, type TestDatabase } from './db.ts';

// Databases as vitest fixtures: a test names what it needs (`async ({ db }) => ...`) and gets
// it cloned from the migrated template; the fixture drops it afterwards, whatever happened.
// No beforeAll/afterAll bookkeeping, and no TRUNCATE between tests that share a database.

export interface DatabaseFixtures {
  /** This test's own database, dropped when the test ends. */
  db: TestDatabase;
  /** One database for the whole file (tests that keep to their own tenants), dropped after it. */
  fileDb: TestDatabase;
}

async function database(use: (db: TestDatabase) => Promise<void>): Promise<void> {
  const db = await createTestDatabase();
  try {
    await use(db);
  } finally {
    await db.drop();
  }
}

export const test = base.extend<DatabaseFixtures>({
  db: async ({}, use) => database(use),
  fileDb: [async ({}, use) => database(use), { scope: 'file' }],
});

export const it = test;
