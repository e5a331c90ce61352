import { listAudit } from '../db/queries/audit.ts';
import { EXIT } from '../kernel/exit-codes.ts';
import { withDatabase } from './connection.ts';
import { printJson, table } from './output.ts';
import { UsageError, parsePositiveInt, parseTime } from './parse.ts';

export async function auditCommand(
  opts: { since?: string; action?: string[]; limit?: string; json?: boolean; databaseUrl?: string },
  env: NodeJS.ProcessEnv = process.env,
): Promise<number> {
  const since = opts.since === undefined ? undefined : parseTime('--since', opts.since);
  const actions = opts.action?.map((a) => {
    if (!/^[a-z*][a-z_.*-]{0,62}$/.test(a)) throw new UsageError('--action must be an action name such as events.replay or a pattern such as sink.*');
    return a;
  });
  const limit = opts.limit === undefined ? 100 : parsePositiveInt('--limit', opts.limit, 10_000);
  const entries = await withDatabase(opts, env, (db) => listAudit(db, { since, actions, limit }));
  if (opts.json) {
    printJson({ entries });
    return EXIT.OK;
  }
  process.stdout.write(
    `${table(
      entries.map((e) => ({
        at: e.at,
        action: e.action,
        login: e.login_role === e.work_role ? e.login_role : `${e.login_role} as ${e.work_role}`,
        os_user: e.os_user,
        rows: e.rows,
        filter: JSON.stringify(e.filter),
        result: e.finished_at ? e.result : 'UNFINISHED (interrupted, or still running)',
      })),
    )}\n`,
  );
  if (entries.length === limit) process.stdout.write(`\nnewest ${limit} shown (--limit, --since)\n`);
  return EXIT.OK;
}
