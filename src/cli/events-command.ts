import { auditAdd, auditBegin } from '../db/queries/audit.ts';
import { abandonDead, eventStats, previewReplay, replayDead, type EventFilter } from '../db/queries/operator.ts';
import { listBlockedKeys, skipDeadHead, type SkipResult } from '../db/queries/ordering.ts';
import { decodeCursor, encodeCursor, listEvents, showEvent, type EventDetail } from '../db/queries/event-lookup.ts';
import { OUTBOX_STATUSES, type OutboxStatus } from '../db/schema.ts';
import { EXIT } from '../kernel/exit-codes.ts';
import { actorFor } from './actor.ts';
import { withDatabase } from './connection.ts';
import { printJson, table } from './output.ts';
import { UsageError, parsePositiveInt, parseTime, parseTypePattern, parseUuid } from './parse.ts';

export interface FilterOptions {
  type?: string[];
  tenant?: string;
  since?: string;
  until?: string;
  id?: string[];
  errorContains?: string;
  orderingKey?: string;
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
    errorContains: opts.errorContains === undefined ? undefined : parseText('--error-contains', opts.errorContains, 500),
    orderingKey: opts.orderingKey === undefined ? undefined : parseText('--ordering-key', opts.orderingKey, 200),
  };
}

function parseText(flag: string, value: string, max: number): string {
  if (value.length < 1 || value.length > max || /[\u0000-\u001f]/.test(value)) throw new UsageError(`${flag} must be 1 to ${max} characters, no control characters`);
  return value;
}

/** The filter as the audit trail records it (JSON; dates as ISO text). */
function filterRecord(filter: EventFilter, extra: Record<string, unknown> = {}): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries({ ...filter, ...extra })) if (v !== undefined) out[k] = v instanceof Date ? v.toISOString() : v;
  return out;
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

/** A dry run of a change to dead events (replay, abandon): how many it would touch and the first 50. */
async function dryRunDead(
  db: Parameters<typeof previewReplay>[0],
  filter: EventFilter,
  limit: number | undefined,
  json: boolean | undefined,
  say: { key: string; change: string },
): Promise<number> {
  const preview = await previewReplay(db, filter, Math.min(limit ?? 50, 50));
  const wouldTouch = limit === undefined ? preview.total : Math.min(limit, preview.total);
  if (json) printJson({ dryRun: true, [say.key]: wouldTouch, sample: preview.sample });
  else {
    process.stdout.write(`dry run: would ${say.change.replace('{n}', String(wouldTouch))}; first ${preview.sample.length}:\n`);
    process.stdout.write(`${table(preview.sample.map((r) => ({ ...r, last_error: r.last_error?.slice(0, 80) })))}\n`);
  }
  return EXIT.OK;
}

export async function replayCommand(
  opts: FilterOptions & { dryRun?: boolean; limit?: string },
  env: NodeJS.ProcessEnv = process.env,
): Promise<number> {
  const filter = parseFilter(opts);
  const limit = opts.limit === undefined ? undefined : parsePositiveInt('--limit', opts.limit, 10_000_000);
  return withDatabase(opts, env, async (db) => {
    if (opts.dryRun) return dryRunDead(db, filter, limit, opts.json, { key: 'wouldReplay', change: 'return {n} dead event(s) to pending' });
    const auditId = await auditBegin(db, 'events.replay', actorFor('events replay'), filterRecord(filter, { limit }));
    const result = await replayDead(db, filter, { max: limit, auditId });
    await auditAdd(db, auditId, 0, `replayed ${result.replayed}; left ${result.skippedDuplicateKey} dead (dedupe key held)`);
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

/**
 * Gives up on dead events that can never be delivered (the receiver is gone, the data is
 * obsolete): they become 'done' with the reason in last_error, so their partitions can retire.
 * A reason is required; the audit entry records who, the filter and how many.
 */
export async function abandonCommand(
  opts: FilterOptions & { dryRun?: boolean; limit?: string; reason?: string },
  env: NodeJS.ProcessEnv = process.env,
): Promise<number> {
  const filter = parseFilter(opts);
  const limit = opts.limit === undefined ? undefined : parsePositiveInt('--limit', opts.limit, 10_000_000);
  if (opts.reason === undefined) throw new UsageError('events abandon needs --reason "<why, e.g. a ticket>"');
  const reason = parseText('--reason', opts.reason.trim(), 500);
  return withDatabase(opts, env, async (db) => {
    if (opts.dryRun) return dryRunDead(db, filter, limit, opts.json, { key: 'wouldAbandon', change: 'mark {n} dead event(s) done as abandoned' });
    const auditId = await auditBegin(db, 'events.abandon', actorFor('events abandon'), filterRecord(filter, { limit, reason }));
    const result = await abandonDead(db, filter, reason, { max: limit, auditId });
    await auditAdd(db, auditId, 0, `abandoned ${result.abandoned}`);
    if (opts.json) printJson(result);
    else process.stdout.write(`abandoned ${result.abandoned} dead event(s): marked done, reason in last_error\n`);
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
    for (const id of ids) {
      // The skip and its audit entry commit together.
      const result = await db.transaction().execute(async (trx) => {
        const auditId = await auditBegin(trx, 'events.skip', actorFor('events skip'), { id });
        const r = await skipDeadHead(trx, id, 'events skip');
        await auditAdd(trx, auditId, r === 'skipped' ? 1 : 0, r);
        return r;
      });
      out.push({ id, result });
    }
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

export async function showCommand(
  id: string,
  opts: { payload?: boolean; json?: boolean; databaseUrl?: string },
  env: NodeJS.ProcessEnv = process.env,
): Promise<number> {
  const eventId = parseUuid('<id>', id);
  const event = await withDatabase(opts, env, (db) => showEvent(db, eventId, { payload: opts.payload }));
  if (!event) {
    if (opts.json) printJson({ found: false, id: eventId });
    else process.stderr.write(`events show: no event ${eventId} (it may have been retired with its partition)\n`);
    return EXIT.FAILURE;
  }
  if (opts.json) {
    printJson(event);
    return EXIT.OK;
  }
  process.stdout.write(`${describeEvent(event, opts.payload === true).join('\n')}\n`);
  return EXIT.OK;
}

function describeEvent(e: EventDetail, withPayload: boolean): string[] {
  const t = (d: Date | null) => (d ? d.toISOString() : '-');
  const next =
    e.status === 'pending'
      ? e.parked_sink
        ? `parked: sink ${e.parked_sink} is paused (due again on "sinks resume ${e.parked_sink}")`
        : e.waiting
          ? "waiting for its ordering key's earlier events"
          : t(e.next_attempt_at)
      : e.status === 'processing'
        ? `leased (lease ends ${t(e.locked_until)})`
        : '-';
  const lines = [
    `id:              ${e.id}`,
    `status:          ${e.status}`,
    `tenant:          ${e.restaurant_id}`,
    `type:            ${e.event_type}`,
    `dedupe key:      ${e.dedupe_key ?? '-'}`,
    `idempotency key: ${e.idempotency_key ?? '-'}`,
    `attempts:        ${e.attempts}`,
    `lease holder:    ${e.locked_by ?? '-'}${e.locked_until ? ` (until ${t(e.locked_until)})` : ''}`,
    `next attempt:    ${next}`,
    `last error:      ${e.last_error?.replace(/\s+/g, ' ') ?? '-'}`,
    `created:         ${t(e.created_at)}`,
    `dispatched:      ${t(e.dispatched_at)}`,
    `partition:       ${e.partition}`,
    `payload size:    ${e.payload_bytes} bytes${withPayload ? '' : ' (--payload prints it)'}`,
  ];
  if (e.ordering_key !== null) {
    lines.push(`ordering key:    ${e.ordering_key} (seq ${e.ordering_seq ?? '-'})`);
    if (e.key) {
      const blocked = e.key.blocked_by
        ? e.key.blocked_by === e.id
          ? `blocked by this event since ${t(e.key.blocked_since)} (events replay --id or events skip --id ${e.id})`
          : `blocked since ${t(e.key.blocked_since)} by dead head ${e.key.blocked_by}`
        : 'not blocked';
      lines.push(`key position:    ${e.key.ahead} unsettled event(s) of the key ahead, ${e.key.behind} behind; key ${blocked}`);
    }
  }
  if (withPayload) lines.push('payload:', JSON.stringify(e.payload, null, 2));
  return lines;
}

const LIST_DEFAULT_STATUSES: OutboxStatus[] = ['pending', 'processing', 'dead'];
export const LIST_MAX = 1000;

export async function listCommand(
  opts: FilterOptions & { status?: string[]; limit?: string; after?: string },
  env: NodeJS.ProcessEnv = process.env,
): Promise<number> {
  const filter = parseFilter(opts);
  const statuses = opts.status?.length
    ? opts.status.map((s) => {
        if (!(OUTBOX_STATUSES as readonly string[]).includes(s)) throw new UsageError(`--status must be one of ${OUTBOX_STATUSES.join(', ')} (got ${JSON.stringify(s)})`);
        return s as OutboxStatus;
      })
    : LIST_DEFAULT_STATUSES;
  // 'done' is most of a big table and has no index of its own: a time window bounds the read
  // to that window's partitions.
  if (statuses.includes('done') && !filter.since) throw new UsageError("--status done needs --since: 'done' events are most of the table, and a time window bounds the read to its monthly partitions");
  const limit = opts.limit === undefined ? 50 : parsePositiveInt('--limit', opts.limit, LIST_MAX);
  const after = opts.after === undefined ? undefined : decodeCursor(opts.after);
  if (opts.after !== undefined && !after) throw new UsageError('--after must be the cursor a previous "events list" printed');
  const page = await withDatabase(opts, env, (db) => listEvents(db, { statuses, filter, limit, after }));
  const next = page.next ? encodeCursor(page.next) : null;
  if (opts.json) {
    printJson({ events: page.events, next });
    return EXIT.OK;
  }
  process.stdout.write(
    `${table(
      page.events.map((e) => ({
        id: e.id,
        created_at: e.created_at,
        status: e.status,
        type: e.event_type,
        tenant: e.restaurant_id,
        attempts: e.attempts,
        key: e.ordering_key,
        last_error: e.last_error?.replace(/\s+/g, ' ').slice(0, 60),
      })),
    )}\n`,
  );
  process.stdout.write(next ? `\nmore: add --after ${next} for the next page\n` : `\n${page.events.length} event(s); last page\n`);
  return EXIT.OK;
}
