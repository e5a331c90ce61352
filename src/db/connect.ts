import pg from 'pg';
import { EXIT, StartupError } from '../lifecycle/errors.ts';

/** A connected client, or a StartupError (exit 69) that says the database is unreachable. */
export async function connectClient(connectionString: string, applicationName: string): Promise<pg.Client> {
  const client = new pg.Client({ connectionString, application_name: applicationName, connectionTimeoutMillis: 10_000 });
  try {
    await client.connect();
  } catch (err) {
    throw new StartupError(`cannot connect to the database: ${(err as Error).message}`, EXIT.DATABASE_UNAVAILABLE, { cause: err });
  }
  return client;
}
