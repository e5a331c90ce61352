import pg from 'pg';
import { EXIT, StartupError } from '../kernel/exit-codes.ts';
import { databaseFailure } from './errors.ts';

/**
 * A connected client, or a StartupError (exit 69) that says the database is unreachable.
 * A server that answers but rejects the login keeps its own error (SQLSTATE 28xxx, 42501,
 * 3D000 ...), which the CLI's error mapping turns into the matching exit code.
 */
export async function connectClient(connectionString: string, applicationName: string): Promise<pg.Client> {
  const client = new pg.Client({ connectionString, application_name: applicationName, connectionTimeoutMillis: 10_000 });
  try {
    await client.connect();
  } catch (err) {
    const failure = databaseFailure(err);
    if (failure?.kind === 'unreachable') {
      throw new StartupError(`cannot connect to the database: ${failure.message}`, EXIT.DATABASE_UNAVAILABLE, { cause: err });
    }
    throw err;
  }
  return client;
}
