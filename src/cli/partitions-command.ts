import { EXIT } from '../kernel/exit-codes.ts';
import { adoptTable } from '../partitions/adopt.ts';
import { parseTableRef } from '../partitions/registry.ts';
import { PartitionRotator, rotationDeferred, rotationFailed } from '../partitions/rotator.ts';
import { partitionStatus } from '../partitions/status.ts';
import { auditAdd, auditAddClient, auditBegin, auditBeginClient } from '../db/queries/audit.ts';
import { actorFor } from './actor.ts';
import { assertSessionConnection, cliSettings, withClient, withDatabase } from './connection.ts';
import { parsePositiveInt } from './parse.ts';
import { printJson, table } from './output.ts';

export interface PartitionsOptions {
  table?: string;
  json?: boolean;
  databaseUrl?: string;
}

function bytes(n: number): string {
  const units = ['B', 'kB', 'MB', 'GB', 'TB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

function duration(seconds: number | null): string {
  if (seconds === null) return 'none (no monthly partitions)';
  const days = seconds / 86400;
  return days >= 1 ? `${days.toFixed(1)} days` : `${(seconds / 3600).toFixed(1)} hours`;
}

export async function partitionsStatusCommand(opts: PartitionsOptions, env: NodeJS.ProcessEnv = process.env): Promise<number> {
  const status = await withDatabase(opts, env, (db) => partitionStatus(db, new Date(), opts.table));
  if (opts.json) {
    printJson(status);
    return EXIT.OK;
  }
  const out: string[] = [];
  for (const s of status) {
    const c = s.config;
    out.push(
      `${s.table}: monthly on ${c.partition_column}, premake ${c.premake_months}, retention ${c.retention_months} months (${c.retention_mode})`,
      `  runway: ${duration(s.runwaySeconds)} (last partition ends ${s.lastPartitionEnd?.toISOString() ?? '-'})`,
      `  default partition rows: ${s.defaultRows}${s.defaultRows > 0 ? '  <- run "partitions rotate" to move them into monthly partitions' : ''}`,
      `  retention cutoff: partitions ending on or before ${s.retentionCutoff.toISOString()} retire`,
      '',
      table(
        s.partitions.map((p) => ({
          partition: p.partition_name,
          from: p.lower_bound?.toISOString().slice(0, 10) ?? (p.is_default ? 'DEFAULT' : '-'),
          to: p.upper_bound?.toISOString().slice(0, 10) ?? '',
          est_rows: p.estimated_rows,
          active_rows: p.active_rows,
          dead_rows: Number(p.blocking.dead ?? 0),
          size: bytes(p.size_bytes),
          retention: p.retention,
        })),
      ).replace(/^/gm, '  '),
      '',
    );
  }
  process.stdout.write(`${out.join('\n')}\n`);
  return EXIT.OK;
}

export async function partitionsRotateCommand(opts: PartitionsOptions & { dryRun?: boolean }, env: NodeJS.ProcessEnv = process.env): Promise<number> {
  const { config, log } = cliSettings(env);
  const report = await withDatabase(opts, env, async (db) => {
    const rotator = new PartitionRotator(db, log, undefined, { lockTimeoutMs: config.partitions.lockTimeoutMs });
    if (opts.dryRun) return rotator.runOnce({ table: opts.table, dryRun: true });
    // DDL runs in the rotator's own short transactions (one per step, with lock timeouts): the
    // entry is opened before the first and closed with the statements that ran and the outcome.
    const auditId = await auditBegin(db, 'partitions.rotate', actorFor('partitions rotate', env), { table: opts.table ?? null });
    const r = await rotator.runOnce({ table: opts.table });
    const executed = r.tables.reduce((n, t) => n + t.statements.length, 0);
    const outcome = !r.ran ? 'skipped: another replica was rotating' : rotationFailed(r) ? 'failed' : rotationDeferred(r) ? 'deferred' : 'ok';
    await auditAdd(db, auditId, executed, `${outcome}; ${executed} DDL statement(s)`);
    return r;
  });
  if (opts.json) printJson(report);
  else if (!report.ran) process.stdout.write('another replica is rotating partitions right now; nothing done (try again in a minute)\n');
  else {
    for (const t of report.tables) {
      const lines = [`${t.table}: ${report.dryRun ? 'plan (dry run, nothing executed)' : 'executed'}`];
      if (t.statements.length === 0) lines.push('  nothing to do');
      for (const s of t.statements) lines.push(`  ${s};`);
      for (const d of t.defaultRows) lines.push(`  default partition held ${d.rows} row(s) for ${d.month.slice(0, 7)}`);
      for (const b of t.blocked) lines.push(`  BLOCKED: ${b.partition} is past retention but holds ${JSON.stringify(b.blocking)}; deliver or replay those events first`);
      for (const e of t.errors) lines.push(`  FAILED: ${e.step}: ${e.message}`);
      for (const d of t.deferred) lines.push(`  DEFERRED: ${d.step}: ${d.message}`);
      lines.push(`  runway: ${duration(t.runwaySeconds)}`);
      process.stdout.write(`${lines.join('\n')}\n`);
    }
  }
  if (!report.ran) return EXIT.TEMPFAIL;
  if (rotationFailed(report)) return EXIT.FAILURE;
  // A step that could not take its lock changed nothing and can simply be run again.
  return rotationDeferred(report) ? EXIT.TEMPFAIL : EXIT.OK;
}

/** Converts a plain registered table to the partitioned layout online (as the table owner). */
export async function partitionsAdoptCommand(
  opts: { table: string; batchSize?: string; databaseUrl?: string; json?: boolean },
  env: NodeJS.ProcessEnv = process.env,
): Promise<number> {
  parseTableRef(opts.table);
  const batchSize = opts.batchSize === undefined ? undefined : parsePositiveInt('--batch-size', opts.batchSize, 1_000_000);
  const { config, log } = cliSettings(env);
  const url = opts.databaseUrl ?? config.migrationDatabaseUrl;
  const result = await withClient(config, log, { as: 'superuser', url, applicationName: 'outbox-dispatcher-adopt' }, async (client, connectionString) => {
    await assertSessionConnection(client, connectionString, { flagUrl: opts.databaseUrl, config });
    const auditId = await auditBeginClient(client, 'partitions.adopt', actorFor('partitions adopt', env), { table: opts.table, batchSize: batchSize ?? null });
    try {
      const r = await adoptTable(client, log, { table: opts.table, batchSize, onStep: opts.json ? undefined : (m) => process.stdout.write(`${m}\n`) });
      await auditAddClient(client, auditId, 1, 'adopted');
      return r;
    } catch (err) {
      await auditAddClient(client, auditId, 0, `failed: ${(err as Error).message}`).catch(() => undefined);
      throw err;
    }
  });
  if (opts.json) printJson(result);
  return EXIT.OK;
}
