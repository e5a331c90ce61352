import os from 'node:os';
import type { Actor } from '../db/queries/audit.ts';

/**
 * Who runs an operator command, for the audit trail: the operating-system user (the login
 * role is taken by the database from the session, not from here) and the command's name.
 */
export function actorFor(command: string, env: NodeJS.ProcessEnv = process.env): Actor {
  let osUser: string | undefined;
  try {
    osUser = os.userInfo().username;
  } catch {
    // A container user with no passwd entry: the environment is all there is.
    osUser = env.USER ?? env.LOGNAME;
  }
  return { osUser: osUser || undefined, command };
}
