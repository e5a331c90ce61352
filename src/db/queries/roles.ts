import type pg from 'pg';

export interface LoginRoleRow {
  loginRole: string;
  superuser: boolean;
  bypassRls: boolean;
  /** Null when the background role does not exist (the database is not migrated). */
  member: boolean | null;
  /** The login holds the background role's privileges without SET ROLE (INHERIT membership). */
  inherits: boolean | null;
  backgroundPrivileged: boolean | null;
  /**
   * The login holds app_producer's privileges (INHERIT membership), so app_producer's RLS policy,
   * which demands a tenant context on every statement, applies to its sessions too.
   */
  producer: boolean;
  /** server_version_num: INHERIT is a role attribute up to 15, a grant option from 16. */
  serverVersion: number;
}

/** The connected login's attributes and its membership in `backgroundRole`. */
export async function loginRoleRow(client: pg.ClientBase, backgroundRole: string): Promise<LoginRoleRow> {
  const { rows } = await client.query<LoginRoleRow>(
    `SELECT l.rolname AS "loginRole", l.rolsuper AS superuser, l.rolbypassrls AS "bypassRls",
            CASE WHEN b.oid IS NULL THEN NULL ELSE pg_has_role(l.oid, b.oid, 'MEMBER') END AS member,
            CASE WHEN b.oid IS NULL THEN NULL ELSE pg_has_role(l.oid, b.oid, 'USAGE') END AS inherits,
            b.rolsuper OR b.rolbypassrls AS "backgroundPrivileged",
            coalesce((SELECT pg_has_role(l.oid, p.oid, 'USAGE') FROM pg_roles p WHERE p.rolname = 'app_producer'), false) AS producer,
            current_setting('server_version_num')::int AS "serverVersion"
     FROM pg_roles l LEFT JOIN pg_roles b ON b.rolname = $1
     WHERE l.rolname = session_user`,
    [backgroundRole],
  );
  return rows[0]!;
}
