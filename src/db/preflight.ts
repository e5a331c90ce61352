import pg from 'pg';
import { EXIT, StartupError } from '../kernel/exit-codes.ts';
import type { Logger } from '../kernel/log.ts';
import { connectClient } from './connect.ts';
import { inspectLoginRole, roleSwitchNeeded } from './login-role.ts';
import { migrationStatus } from './migrator.ts';
import { BACKGROUND_ROLE } from './pool.ts';
import { readOnlyAsRole } from './queries/session.ts';

export interface PreflightResult {
  /** Pooled sessions must switch to app_background (privileged login allowed by override). */
  roleSwitch: boolean;
}

/**
 * Checks, before anything is claimed, that the database is reachable, the schema is
 * migrated, and the login role is a non-privileged member of app_background that inherits
 * its privileges. Uses no session state, so it runs unchanged through a transaction pooler.
 */
export async function preflight(
  connectionString: string,
  opts: { allowPrivilegedRole: boolean; log: Logger },
): Promise<PreflightResult> {
  const client = await connectClient(connectionString, 'outbox-dispatcher-preflight');
  try {
    const role = await inspectLoginRole(client);
    const roleSwitch = roleSwitchNeeded(role, opts);
    if (roleSwitch) {
      opts.log.warn(
        { loginRole: role.loginRole },
        `SECURITY: running with ${role.superuser ? 'a superuser' : 'a BYPASSRLS role'} login because OUTBOX_ALLOW_PRIVILEGED_ROLE=true; queries still run as ${BACKGROUND_ROLE}, but the credential is far more powerful than needed`,
      );
      await assertStartupRoleAccepted(connectionString);
    }
    // As app_background itself, transaction-locally: it must be able to read the migrations.
    await readOnlyAsRole(client, BACKGROUND_ROLE, async () => {
      const status = await migrationStatus(client);
      if (status.pending.length > 0) {
        throw new StartupError(
          `database schema is behind: ${status.pending.length} migration(s) pending (${status.pending.map((m) => m.name).join(', ')}); run "outbox-dispatcher migrate" first`,
          EXIT.SCHEMA_BEHIND,
        );
      }
      if (status.unknown.length > 0) {
        opts.log.warn({ unknown: status.unknown }, 'database has migrations this build does not know (it is newer than this daemon)');
      }
    });
    return { roleSwitch };
  } finally {
    await client.end().catch(() => undefined);
  }
}

/** A privileged login switches role with a startup option; say plainly when a pooler refuses it. */
async function assertStartupRoleAccepted(connectionString: string): Promise<void> {
  const probe = new pg.Client({ connectionString, options: `-c role=${BACKGROUND_ROLE}`, connectionTimeoutMillis: 10_000 });
  try {
    await probe.connect();
  } catch (err) {
    const message = (err as Error).message;
    if (/unsupported startup parameter/i.test(message)) {
      throw new StartupError(
        `a privileged login must switch to ${BACKGROUND_ROLE} with the startup option "-c role=${BACKGROUND_ROLE}", and the pooler in front of the database refuses it (${message}); ` +
          `connect as a non-privileged login role that is a member of ${BACKGROUND_ROLE} (see "Deploying on Supabase" in the README)`,
        EXIT.PRIVILEGED_ROLE,
        { cause: err },
      );
    }
    throw new StartupError(`cannot connect to the database as ${BACKGROUND_ROLE}: ${message}`, EXIT.DATABASE_UNAVAILABLE, { cause: err });
  } finally {
    await probe.end().catch(() => undefined);
  }
}
