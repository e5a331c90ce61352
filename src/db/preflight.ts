import pg from 'pg';
import { EXIT, StartupError } from '../lifecycle/errors.ts';
import type { Logger } from '../log.ts';
import { connectClient } from './connect.ts';
import { migrationStatus } from './migrator.ts';
import { BACKGROUND_ROLE } from './pool.ts';

interface RoleRow {
  login_role: string;
  login_super: boolean;
  login_bypassrls: boolean;
  member: boolean | null;
  bg_super: boolean | null;
  bg_bypassrls: boolean | null;
}

/**
 * Checks, before anything is claimed, that the database is reachable, the schema is
 * migrated, and the login role is a non-privileged member of app_background.
 */
export async function preflight(
  connectionString: string,
  opts: { allowPrivilegedRole: boolean; log: Logger },
): Promise<void> {
  const client = await connectClient(connectionString, 'outbox-dispatcher-preflight');
  try {
    const { rows } = await client.query<RoleRow>(
      `SELECT l.rolname AS login_role, l.rolsuper AS login_super, l.rolbypassrls AS login_bypassrls,
              CASE WHEN b.oid IS NULL THEN NULL ELSE pg_has_role(l.oid, b.oid, 'MEMBER') END AS member,
              b.rolsuper AS bg_super, b.rolbypassrls AS bg_bypassrls
       FROM pg_roles l LEFT JOIN pg_roles b ON b.rolname = $1
       WHERE l.rolname = session_user`,
      [BACKGROUND_ROLE],
    );
    const role = rows[0]!;
    if (role.member === null) {
      throw new StartupError(
        `role ${BACKGROUND_ROLE} does not exist: the database is not migrated; run "outbox-dispatcher migrate" as the schema owner`,
        EXIT.SCHEMA_BEHIND,
      );
    }
    if (role.bg_super || role.bg_bypassrls) {
      throw new StartupError(
        `role ${BACKGROUND_ROLE} is SUPERUSER or BYPASSRLS, which defeats tenant isolation; run ALTER ROLE ${BACKGROUND_ROLE} NOSUPERUSER NOBYPASSRLS`,
        EXIT.PRIVILEGED_ROLE,
      );
    }
    if (role.login_super || role.login_bypassrls) {
      const what = role.login_super ? 'a superuser' : 'a BYPASSRLS role';
      if (!opts.allowPrivilegedRole) {
        throw new StartupError(
          `refusing to run as ${what} (${role.login_role}); connect as a login role that is a member of ${BACKGROUND_ROLE} ` +
            `(CREATE ROLE outbox_dispatcher LOGIN PASSWORD '...' IN ROLE ${BACKGROUND_ROLE}), or set OUTBOX_ALLOW_PRIVILEGED_ROLE=true to override`,
          EXIT.PRIVILEGED_ROLE,
        );
      }
      opts.log.warn(
        { loginRole: role.login_role },
        `SECURITY: running with ${what} login because OUTBOX_ALLOW_PRIVILEGED_ROLE=true; queries still run as ${BACKGROUND_ROLE}, but the credential is far more powerful than needed`,
      );
    }
    if (!role.member) {
      throw new StartupError(
        `login role ${role.login_role} is not a member of ${BACKGROUND_ROLE}; run GRANT ${BACKGROUND_ROLE} TO ${pg.escapeIdentifier(role.login_role)}`,
        EXIT.PRIVILEGED_ROLE,
      );
    }
    await client.query(`SET ROLE ${BACKGROUND_ROLE}`);
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
  } finally {
    await client.end().catch(() => undefined);
  }
}
