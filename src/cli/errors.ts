import { CommanderError } from 'commander';
import { ConfigError } from '../config/errors.ts';
import { databaseFailure } from '../db/errors.ts';
import { MigrationError } from '../db/migrator.ts';
import { EXIT, StartupError } from '../kernel/exit-codes.ts';
import { isDebugLevel } from '../kernel/log.ts';
import { AdoptError } from '../partitions/adopt.ts';
import { RegistryError } from '../partitions/registry.ts';
import { loginAdvice, type LoginKind } from './logins.ts';
import { UsageError } from './parse.ts';

/** What the CLI knows about the command that failed (set before its action runs). */
export interface CommandContext {
  /** e.g. "events stats"; undefined while arguments are still being parsed. */
  command: string | undefined;
  login: LoginKind | undefined;
  /** The login role the command connected as, when it got that far. */
  loginRole: string | undefined;
}

export interface Failure {
  exitCode: number;
  /** One line for stderr; undefined when commander already printed its own. */
  message: string | undefined;
}

const oneLine = (s: string) => s.replace(/\s*\n\s*/g, ' ').trim();

/** An error from a command's database work, with the login role it connected as. */
export class ConnectedAsError extends Error {
  override name = 'ConnectedAsError';
  readonly loginRole: string;

  constructor(cause: unknown, loginRole: string) {
    super(cause instanceof Error ? cause.message : String(cause), { cause });
    this.loginRole = loginRole;
  }
}

/**
 * The one place that turns any error a command throws into an exit code (README, "Exit
 * codes") and one line of text. Expected failures never print a stack trace; an unexpected
 * one prints its stack only with LOG_LEVEL=debug or trace.
 */
export function describeFailure(err: unknown, ctx: CommandContext, env: NodeJS.ProcessEnv = process.env): Failure {
  if (err instanceof ConnectedAsError) {
    ctx = { ...ctx, loginRole: err.loginRole };
    err = err.cause;
  }
  if (err instanceof CommanderError) {
    // --help and --version end here too, successfully.
    return { exitCode: err.exitCode === 0 ? EXIT.OK : EXIT.USAGE, message: undefined };
  }
  const where = ctx.command ? `${ctx.command}: ` : '';
  const said = (exitCode: number, text: string): Failure => ({ exitCode, message: oneLine(`${where}${text}`) });
  if (err instanceof ConfigError) return said(EXIT.CONFIG, `invalid configuration: ${err.message}`);
  if (err instanceof UsageError || err instanceof RegistryError) return said(EXIT.USAGE, err.message);
  if (err instanceof StartupError) return said(err.exitCode, err.message);

  const db = databaseFailure(err);
  if (db) {
    // A migration wraps the database error in its own name; keep that context.
    const detail = err instanceof MigrationError ? err.message : db.message;
    const as = ctx.loginRole ? ` (connected as ${ctx.loginRole})` : '';
    switch (db.kind) {
      case 'unreachable':
        return said(EXIT.DATABASE_UNAVAILABLE, `cannot connect to the database: ${detail}`);
      case 'login-rejected':
        return said(EXIT.PRIVILEGED_ROLE, `the database rejected the login${as}: ${detail}; ${loginAdvice(ctx.login ?? 'none', ctx.loginRole)}`);
      case 'permission':
        return said(EXIT.PRIVILEGED_ROLE, `${detail}${as}; ${loginAdvice(ctx.login ?? 'none', ctx.loginRole)}`);
      case 'not-migrated':
        return said(
          EXIT.SCHEMA_BEHIND,
          `the database is not migrated (or is behind this version): ${detail}; run "outbox-dispatcher migrate" as the schema owner first`,
        );
    }
  }
  if (err instanceof AdoptError) return said(EXIT.FAILURE, `adopt: ${err.message}`);
  if (err instanceof MigrationError) return said(EXIT.FAILURE, err.message);

  // The operating system said no (a port in use, a file not readable): expected, and its message says it all.
  const sys = err as { code?: unknown; syscall?: unknown };
  if (err instanceof Error && typeof sys.code === 'string' && typeof sys.syscall === 'string') return said(EXIT.FAILURE, err.message);

  const message = err instanceof Error ? err.message || err.name : String(err);
  if (isDebugLevel(env.LOG_LEVEL) && err instanceof Error && err.stack) return { exitCode: EXIT.FAILURE, message: `${where}${err.stack}` };
  return said(EXIT.FAILURE, `${message} (unexpected; LOG_LEVEL=debug prints the stack trace)`);
}
