import { describe, expect } from 'vitest';
import { it } from './support/fixtures.ts';

// The fixtures themselves: a per-test database is fresh and gone afterwards; the file's
// database is shared by the file's tests.

const seen: { name: string; adminUrl: string }[] = [];
let fileDbName: string | undefined;

describe('database fixtures', () => {
  it('hands a test a migrated database of its own', async ({ db }) => {
    await db.query("INSERT INTO capacity_outbox (restaurant_id, event_type) VALUES (gen_random_uuid(), 'x')");
    expect((await db.query<{ n: string }>('SELECT count(*) AS n FROM capacity_outbox')).rows[0]!.n).toBe('1');
    seen.push({ name: db.name, adminUrl: db.adminUrl });
  });

  it('gives the next test another, empty one and has dropped the last', async ({ db }) => {
    expect(db.name).not.toBe(seen[0]!.name);
    expect((await db.query<{ n: string }>('SELECT count(*) AS n FROM capacity_outbox')).rows[0]!.n).toBe('0');
    const gone = await db.query('SELECT 1 FROM pg_database WHERE datname = $1', [seen[0]!.name]);
    expect(gone.rowCount).toBe(0);
  });

  it('shares one file database between the tests that ask for it', async ({ fileDb }) => {
    fileDbName = fileDb.name;
    expect((await fileDb.query('SELECT 1 FROM pg_database WHERE datname = $1', [fileDb.name])).rowCount).toBe(1);
  });

  it('(the same file database)', async ({ fileDb }) => {
    expect(fileDb.name).toBe(fileDbName);
  });
});
