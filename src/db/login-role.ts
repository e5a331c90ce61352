import pg from 'pg';
import { EXIT, StartupError } from '../kernel/exit-codes.ts';
import { BACKGROUND_ROLE } from './pool.ts';
import { loginRoleRow, type LoginRoleRow } from './queries/roles.ts';

/** The login's attributes as far as running as app_background goes. */
export type LoginRole = LoginRoleRow;

/** What the connected login is, as far as running as app_background goes. */
export function inspectLoginRole(client: pg.ClientBase): Promise<LoginRole> {
  return loginRoleRow(client, BACKGROUND_ROLE);
}

/**
 * Whether sessions of this login must switch to app_background, or a StartupError when the
 * login may not run the daemon at all.
 *
 * The normal model needs no switch and no session state: the login is a non-privileged
 * member of app_background with INHERIT, so every statement runs with app_background's
 * privileges and its RLS policy (policies apply to members that inherit), through any pooler.
 * Only a privileged login allowed by OUTBOX_ALLOW_PRIVILEGED_ROLE needs a switch, because a
 * superuser or BYPASSRLS role would skip RLS; that switch is a startup option, which
 * transaction-mode poolers refuse (ADR 0010).
 */
export function roleSwitchNeeded(role: LoginRole, opts: { allowPrivilegedRole: boolean }): boolean {
  if (role.member === null) {
    throw new StartupError(
      `role ${BACKGROUND_ROLE} does not exist: the database is not migrated; run "outbox-dispatcher migrate" as the schema owner`,
      EXIT.SCHEMA_BEHIND,
    );
  }
  if (role.backgroundPrivileged) {
    throw new StartupError(
      `role ${BACKGROUND_ROLE} is SUPERUSER or BYPASSRLS, which defeats tenant isolation; run ALTER ROLE ${BACKGROUND_ROLE} NOSUPERUSER NOBYPASSRLS`,
      EXIT.PRIVILEGED_ROLE,
    );
  }
  const login = pg.escapeIdentifier(role.loginRole);
  if (role.superuser || role.bypassRls) {
    const what = role.superuser ? 'a superuser' : 'a BYPASSRLS role';
    if (!opts.allowPrivilegedRole) {
      throw new StartupError(
        `refusing to run as ${what} (${role.loginRole}); connect as a login role that is a member of ${BACKGROUND_ROLE} ` +
          `(CREATE ROLE outbox_dispatcher LOGIN PASSWORD '...' IN ROLE ${BACKGROUND_ROLE}), or set OUTBOX_ALLOW_PRIVILEGED_ROLE=true to override`,
        EXIT.PRIVILEGED_ROLE,
      );
    }
    return true;
  }
  if (!role.member) {
    throw new StartupError(
      `login role ${role.loginRole} is not a member of ${BACKGROUND_ROLE}; run GRANT ${BACKGROUND_ROLE} TO ${login}`,
      EXIT.PRIVILEGED_ROLE,
    );
  }
  if (role.producer) {
    // Policies of every role the login inherits apply; app_producer's raises "tenant context
    // missing" for a statement without one, and the daemon's claims, completions and samples
    // work across tenants with none. A login that is both fails on its first claim.
    throw new StartupError(
      `login role ${role.loginRole} is also a member of app_producer, whose row-level security policy requires a tenant context ` +
        `on every statement, and the daemon works across tenants; give producers a login of their own and run REVOKE app_producer FROM ${login}`,
      EXIT.PRIVILEGED_ROLE,
    );
  }
  if (!role.inherits) {
    throw new StartupError(
      `login role ${role.loginRole} is a member of ${BACKGROUND_ROLE} without INHERIT, so it would need SET ROLE on every session, ` +
        `which transaction-mode poolers cannot keep; run ` +
        (role.serverVersion >= 160000 ? `GRANT ${BACKGROUND_ROLE} TO ${login} WITH INHERIT TRUE` : `ALTER ROLE ${login} INHERIT`),
      EXIT.PRIVILEGED_ROLE,
    );
  }
  return false;
}

/** The role option for createPool: app_background only when a switch is needed. */
export function poolRole(roleSwitch: boolean): string | undefined {
  return roleSwitch ? BACKGROUND_ROLE : undefined;
}
