import { loadMigrations, migrate, migrationStatus } from '../db/migrator.ts';
import { EXIT } from '../kernel/exit-codes.ts';
import { assertSessionConnection, cliSettings, withClient } from './connection.ts';
import { printJson, table } from './output.ts';

export interface MigrateOptions {
  status?: boolean;
  json?: boolean;
  databaseUrl?: string;
}

/** Applies pending migrations (or reports them with --status; exit 79 when behind). */
export async function migrateCommand(opts: MigrateOptions, env: NodeJS.ProcessEnv = process.env): Promise<number> {
  const { config, log } = cliSettings(env);
  const url = opts.databaseUrl ?? config.migrationDatabaseUrl;
  return withClient(config, log, { as: 'superuser', url, applicationName: 'outbox-dispatcher-migrate' }, async (client, connectionString) => {
    const migrations = loadMigrations();
    if (opts.status) {
      const status = await migrationStatus(client, migrations);
      const rows = migrations.map((m) => ({ migration: m.name, state: status.applied.includes(m.version) ? 'applied' : 'pending' }));
      if (opts.json) printJson({ migrations: rows, unknown: status.unknown });
      else process.stdout.write(`${table(rows)}\n`);
      if (status.pending.length === 0) return EXIT.OK;
      process.stderr.write(
        `outbox-dispatcher: migrate: the database schema is behind: ${status.pending.length} migration(s) pending; run "outbox-dispatcher migrate" as the schema owner\n`,
      );
      return EXIT.SCHEMA_BEHIND;
    }
    // Refuse before taking the session lock a transaction pooler would strand on some server session.
    await assertSessionConnection(client, connectionString, { flagUrl: opts.databaseUrl, config });
    const applied = await migrate(client, { migrations });
    if (opts.json) printJson({ applied });
    else process.stdout.write(applied.length ? `applied: ${applied.join(', ')}\n` : 'schema is up to date\n');
    return EXIT.OK;
  });
}
