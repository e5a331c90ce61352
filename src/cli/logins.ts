/**
 * Which database login each command needs. One table, used for the commands' --help text,
 * for the error message when a login lacks a privilege, and by the tests that run every
 * command of README and the runbooks with the login the docs name.
 */
export type LoginKind = 'daemon' | 'producer' | 'owner' | 'none';

export interface LoginInfo {
  /** The group role the login must be a member of; undefined for the owner. */
  role: string | undefined;
  /** Who, in the words of README and the runbooks. */
  who: string;
  /** Where the command takes the URL from. */
  from: string;
}

export const LOGINS: Record<Exclude<LoginKind, 'none'>, LoginInfo> = {
  daemon: { role: 'app_background', who: "the daemon's login (a member of app_background)", from: '--database-url or DATABASE_URL' },
  producer: { role: 'app_producer', who: "a producer's login (a member of app_producer)", from: '--database-url or DATABASE_URL' },
  owner: { role: undefined, who: "the schema owner's login (the migration login)", from: '--database-url, MIGRATION_DATABASE_URL or DATABASE_URL' },
};

/** The login an `incident` scenario needs. */
export function incidentLogin(scenario: string): LoginKind {
  if (scenario === 'poison') return 'producer';
  if (scenario === 'sink-outage' || scenario === 'dispatcher-down') return 'none';
  return 'owner';
}

/** The "Login:" paragraph of a command's --help. */
export function loginHelp(kind: LoginKind, extra?: string): string {
  const line =
    kind === 'none'
      ? 'Login: none (no database connection).'
      : `Login: ${LOGINS[kind].who}, from ${LOGINS[kind].from}. Without a URL: the embedded default.`;
  return `\n${line}${extra ? `\n${extra}` : ''}`;
}

/** What to tell an operator whose login (`loginRole`, when known) lacked a privilege for a command needing `kind`. */
export function loginAdvice(kind: LoginKind, loginRole?: string): string {
  if (kind === 'none') return 'check the privileges of the login';
  const info = LOGINS[kind];
  const grantee = loginRole ? `"${loginRole.replaceAll('"', '""')}"` : '<login>';
  if (info.role) return `this command needs a login in ${info.role}: ${info.who}; connect as one, or as the owner: GRANT ${info.role} TO ${grantee}`;
  return `this command needs ${info.who}, which owns capacity_outbox and the outbox_dispatcher schema (${info.from})`;
}
