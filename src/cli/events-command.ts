import { eventStats, previewReplay, replayDead, type EventFilter } from '../db/queries/operator.ts';
import { listBlockedKeys, skipDeadHead, type SkipResult } from '../db/queries/ordering.ts';
import { EXIT } from '../kernel/exit-codes.ts';
import { withDatabase } from './connection.ts';
import { printJson, table } from './output.ts';
import { UsageError, parsePositiveInt, parseTime, parseTypePattern, parseUuid } from './parse.ts';

export interface FilterOptions {
  type?: string[];
  tenant?: string;
  since?: string;
  until?: string;
  id?: string[];
  databaseUrl?: string;
  json?: boolean;
}

export function parseFilter(opts: FilterOptions): EventFilter {
  return {
    types: opts.type?.map((t) => parseTypePattern('--type', t)),
    tenant: opts.tenant === undefined ? undefined : parseUuid('--tenant', opts.tenant),
    since: opts.since === undefined ? undefined : parseTime('--since', opts.since),
    until: opts.until === undefined ? undefined : parseTime('--until', opts.until),
    ids: opts.id?.map((i) => parseUuid('--id', i)),
  };
}

export async function statsCommand(opts: FilterOptions & { all?: boolean }, env: NodeJS.ProcessEnv = process.env): Promise<number> {
  const filter = parseFilter(opts);
  const stats = await withDatabase(opts, env, (db) => eventStats(db, filter, { includeDone: opts.all }));
  if (opts.json) {
    printJson(stats);
    return EXIT.OK;
  }
  const totals = new Map<string, number>();
  for (const r of stats.rows) totals.set(r.status, (totals.get(r.status) ?? 0) + r.count);
  const out = [
    `totals: ${['pending', 'processing', 'dead', ...(opts.all ? ['done'] : [])].map((s) => `${s}=${totals.get(s) ?? 0}`).join(' ')}`,
    `oldest due pending event waiting: ${stats.oldestDueAgeSeconds === null ? 'none due' : `${stats.oldestDueAgeSeconds.toFixed(1)} s`}`,
    '',
    table(stats.rows.map((r) => ({ status: r.status, event_type: r.event_type, count: r.count, oldest_created_at: r.oldest_created_at }))),
  ];
  if (!opts.all) out.push('', "('done' events are not counted; add --all to count them, which scans the whole table)");
  process.stdout.write(`${out.join('\n')}\n`);
  return EXIT.OK;
}

export async function replayCommand(
  opts: FilterOptions & { dryRun?: boolean; limit?: string },
  env: NodeJS.ProcessEnv = process.env,
): Promise<number> {
  const filter = parseFilter(opts);
  const limit = opts.limit === undefined ? undefined : parsePositiveInt('--limit', opts.limit, 10_000_000);
  return withDatabase(opts, env, async (db) => {
    if (opts.dryRun) {
      const preview = await previewReplay(db, filter, Math.min(limit ?? 50, 50));
      const wouldTouch = limit === undefined ? preview.total : Math.min(limit, preview.total);
      if (opts.json) printJson({ dryRun: true, wouldReplay: wouldTouch, sample: preview.sample });
      else {
        process.stdout.write(`dry run: would return ${wouldTouch} dead event(s) to pending; first ${preview.sample.length}:\n`);
        process.stdout.write(`${table(preview.sample.map((r) => ({ ...r, last_error: r.last_error?.slice(0, 80) })))}\n`);
      }
      return EXIT.OK;
    }
    const result = await replayDead(db, filter, { max: limit });
    if (opts.json) printJson(result);
    else {
      process.stdout.write(`replayed ${result.replayed} dead event(s) to pending\n`);
      if (result.skippedDuplicateKey > 0) {
        process.stdout.write(`left ${result.skippedDuplicateKey} dead: an active event already holds their dedupe key\n`);
      }
    }
    return EXIT.OK;
  });
}

export async function blockedCommand(
  opts: { tenant?: string; limit?: string; json?: boolean; databaseUrl?: string },
  env: NodeJS.ProcessEnv = process.env,
): Promise<number> {
  const tenant = opts.tenant === undefined ? undefined : parseUuid('--tenant', opts.tenant);
  const limit = opts.limit === undefined ? 100 : parsePositiveInt('--limit', opts.limit, 10_000);
  const keys = await withDatabase(opts, env, (db) => listBlockedKeys(db, { tenant, limit }));
  if (opts.json) {
    printJson({ blocked: keys });
    return EXIT.OK;
  }
  if (keys.length === 0) {
    process.stdout.write('no blocked ordering keys\n');
    return EXIT.OK;
  }
  process.stdout.write(
    `${table(
      keys.map((k) => ({
        tenant: k.restaurant_id,
        key: k.ordering_key,
        head_event: k.head_event_id,
        type: k.head_event_type,
        since: k.blocked_since,
        waiting: k.waiting,
        last_error: k.last_error?.replace(/\s+/g, ' ').slice(0, 80),
      })),
    )}\n`,
  );
  process.stdout.write(
    `\n${keys.length === limit ? `first ${limit} shown (--limit); ` : ''}unblock with: events replay --id <head_event> (retry it first) or events skip --id <head_event> (leave it dead, deliver the rest)\n`,
  );
  return EXIT.OK;
}

export async function skipCommand(opts: { id?: string[]; json?: boolean; databaseUrl?: string }, env: NodeJS.ProcessEnv = process.env): Promise<number> {
  const ids = (opts.id ?? []).map((i) => parseUuid('--id', i));
  if (ids.length === 0) throw new UsageError('events skip needs --id <uuid> (the head event `events blocked` lists)');
  const results = await withDatabase(opts, env, async (db) => {
    const out: { id: string; result: SkipResult }[] = [];
    for (const id of ids) out.push({ id, result: await skipDeadHead(db, id, 'events skip') });
    return out;
  });
  if (opts.json) printJson({ results });
  else {
    for (const r of results) {
      process.stdout.write(
        r.result === 'skipped'
          ? `skipped ${r.id}: it stays dead (replayable); its key's next event is due now\n`
          : `not skipped ${r.id}: it does not block an ordering key (see events blocked)\n`,
      );
    }
  }
  return results.every((r) => r.result === 'skipped') ? EXIT.OK : EXIT.FAILURE;
}
