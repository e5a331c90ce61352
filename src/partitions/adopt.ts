import pg from 'pg';
import * as adopt from '../db/queries/adopt.ts';
import * as cat from '../db/queries/catalog.ts';
import type { Logger } from '../kernel/log.ts';
import { addMonthsUtc, isoDate, startOfMonthUtc } from './months.ts';
import { parseTableRef, RegistryError } from './registry.ts';

// Online conversion of a plain table into the monthly-partitioned layout
// (runbooks/partitions.md, "Adopting a plain table"). Runs as the table owner (or a superuser).
//
//   inspect  what exists: plain table, twin, mirror trigger; refuse if RLS could hide rows
//   twin     the partitioned twin (same columns, defaults, checks; unique keys gain the
//            partition column) and its partitions, then
//   mirror   the trigger that applies every write of the plain table to the twin; twin and
//            mirror commit in ONE transaction: a twin without its trigger, or a trigger
//            without its twin, is never committed
//   backfill copy existing rows in primary-key order, in batches (FOR SHARE, ON CONFLICT DO NOTHING)
//   verify   under the swap's lock: the twin and its mirror are still there, exact counts
//            (RLS cannot hide rows from them) agree
//   swap     in the same short transaction: rename, carry triggers, policies, grants and owner
//            over (every partition too); the plain table stays as <table>_unpartitioned for rollback
//
// Every step is safe to repeat, so a rerun after any failure continues: a twin with its live
// mirror is kept (its rows are current), a leftover without one is rebuilt, the backfill only
// adds missing rows, and the swap verifies before it changes anything.

const q = pg.escapeIdentifier;

export type AdoptStep = 'inspect' | 'twin' | 'backfill' | 'swap';

export interface AdoptOptions {
  table: string;
  batchSize?: number;
  /** Seconds each DDL step may wait for its lock before giving up and retrying (default 2). */
  lockTimeoutSeconds?: number;
  /** How often a step that timed out on its lock is retried before adopt gives up (default 5). */
  lockAttempts?: number;
  now?: () => Date;
  /** Progress lines for the operator. */
  onStep?: (message: string) => void;
  /** Called when a step has completed (tests inject failures at every boundary here). */
  afterStep?: (step: AdoptStep) => Promise<void> | void;
}

export interface AdoptResult {
  table: string;
  copiedRows: number;
  rowsAtSwap: number;
  partitions: string[];
  backupTable: string;
  /** True when an earlier run's twin (with its live mirror) was continued. */
  resumed: boolean;
}

export class AdoptError extends Error {
  override name = 'AdoptError';
}

interface Plan extends adopt.AdoptTarget {
  /** The twin exists with its mirror trigger: keep it. */
  resume: boolean;
}

export async function adoptTable(client: pg.ClientBase, log: Logger, opts: AdoptOptions): Promise<AdoptResult> {
  const say = (msg: string) => {
    opts.onStep?.(msg);
    log.info({ table: opts.table }, msg);
  };
  const done = async (s: AdoptStep) => opts.afterStep?.(s);
  const lockMs = Math.round((opts.lockTimeoutSeconds ?? 2) * 1000);
  const tx = <T>(what: string, work: () => Promise<T>) => inTransaction(client, log, what, lockMs, opts.lockAttempts ?? 5, work);

  const plan = await inspect(client, opts.table);
  say(plan.resume ? `continuing an earlier adopt: ${plan.schema}.${plan.twinName} exists and is kept in sync` : `adopting ${plan.schema}.${plan.name}`);
  await done('inspect');

  const partitions = await twinWithMirror(client, plan, opts.now ?? (() => new Date()), say, tx);
  await done('twin');

  const batchSize = opts.batchSize ?? 5000;
  say(`copying existing rows in batches of ${batchSize}`);
  const copied = await backfill(client, plan, batchSize);
  say(`copied ${copied} rows`);
  await done('backfill');

  say('swapping in the partitioned table');
  const rowsAtSwap = await tx('swap', () => swap(client, plan));
  await done('swap');
  say(`done: ${plan.schema}.${plan.name} is partitioned; the plain table is kept as ${plan.schema}.${plan.backupName}`);
  return {
    table: `${plan.schema}.${plan.name}`,
    copiedRows: copied,
    rowsAtSwap,
    partitions,
    backupTable: `${plan.schema}.${plan.backupName}`,
    resumed: plan.resume,
  };
}

/**
 * The twin and its mirror, created together in one transaction; an earlier run's twin whose
 * mirror is live is kept as it is (its rows are current). Returns the twin's partitions.
 */
async function twinWithMirror(
  c: pg.ClientBase,
  plan: Plan,
  now: () => Date,
  say: (msg: string) => void,
  tx: <T>(what: string, work: () => Promise<T>) => Promise<T>,
): Promise<string[]> {
  if (plan.resume) return (await cat.partitionsOf(c, (await cat.relation(c, `${plan.schema}.${plan.twinName}`))!.oid)).map((p) => p.name);
  say(`creating ${plan.schema}.${plan.twinName} partitioned by month on ${plan.partCol}, and mirroring writes into it`);
  const months = twinMonths(await adopt.firstMonth(c, plan.rel, plan.partCol), now(), plan.premake);
  return tx('create the twin', async () => {
    const partitions = await adopt.createTwin(c, plan, months);
    await adopt.createMirror(c, plan);
    return partitions;
  });
}

async function inspect(c: pg.ClientBase, table: string): Promise<Plan> {
  const { table_schema: schema, table_name: name } = parseTableRef(table);
  const reg = await cat.registryEntry(c, schema, name);
  if (!reg) throw new RegistryError(`table ${schema}.${name} is not registered in outbox_dispatcher.managed_partitions; register it first`);
  const rel = `${q(schema)}.${q(name)}`;
  const twinName = `${name}__partitioned`;
  const backupName = `${name}_unpartitioned`;
  const plain = await cat.relation(c, `${schema}.${name}`);
  if (!plain) throw new AdoptError(`${schema}.${name} does not exist`);
  if (plain.relkind === 'p') throw new AdoptError(`${schema}.${name} is already partitioned; nothing to adopt`);
  if (plain.relkind !== 'r') throw new AdoptError(`${schema}.${name} is not a plain table`);
  if (await cat.relation(c, `${schema}.${backupName}`)) {
    throw new AdoptError(`${schema}.${backupName} already exists (an earlier adopt's backup); drop or rename it first`);
  }
  // A count that RLS filters would let every later check pass on zero rows: refuse up front.
  if (await cat.rlsMayHideRows(c, plain.oid)) {
    throw new AdoptError(
      `row-level security may hide rows of ${schema}.${name} from ${await cat.currentUser(c)}; nothing changed. ` +
        `Run "outbox-dispatcher migrate" (migration 0005 gives the table owner a policy that sees every row) and run adopt as the table owner (${plain.owner}) or a superuser`,
    );
  }
  const cols = await cat.columns(c, plain.oid);
  if (!cols.some((x) => x.name === reg.partition_column)) throw new AdoptError(`${schema}.${name} has no column ${reg.partition_column}`);
  if (cols.some((x) => x.identity !== '')) throw new AdoptError(`${schema}.${name} has identity columns, which adopt does not carry over; convert them to sequences first`);
  const pk = await cat.primaryKey(c, plain.oid);
  if (pk.length === 0) throw new AdoptError(`${schema}.${name} has no primary key; adopt copies in primary-key order`);
  if (await adopt.hasNulls(c, rel, reg.partition_column)) throw new AdoptError(`${schema}.${name}.${reg.partition_column} has NULLs, which no partition can hold`);
  const indexes = await cat.indexes(c, plain.oid);
  const odd = indexes.find((ix) => ix.unique && ix.expression);
  if (odd) throw new AdoptError(`unique index ${odd.name} has expressions or a predicate; adopt cannot add the partition column to it (drop or rewrite it first)`);

  const twin = await cat.relation(c, `${schema}.${twinName}`);
  const mirrored = await cat.hasMirrorTrigger(c, plain.oid);
  let resume = false;
  if (twin && mirrored) {
    const key = await cat.partitionKey(c, twin.oid);
    if (twin.relkind !== 'p' || key?.replaceAll('"', '') !== `RANGE (${reg.partition_column})`) {
      throw new AdoptError(`${schema}.${twinName} exists but is not partitioned by range on ${reg.partition_column}; it is not adopt's twin: rename or drop it first`);
    }
    resume = true;
  }
  return {
    schema, name, rel, twinName, twin: `${q(schema)}.${q(twinName)}`, backupName,
    partCol: reg.partition_column, premake: reg.premake_months, oid: plain.oid, cols, pk, indexes, resume,
  };
}

/** Months from the oldest row's (or this) month through this month + premake, UTC. */
function twinMonths(first: Date | null, now: Date, premake: number): { from: string; to: string }[] {
  const start = first ? startOfMonthUtc(new Date(`${isoDate(first)}T00:00:00Z`)) : startOfMonthUtc(now);
  const until = addMonthsUtc(startOfMonthUtc(now), premake);
  const out: { from: string; to: string }[] = [];
  for (let m = start; m <= until; m = addMonthsUtc(m, 1)) out.push({ from: isoDate(m), to: isoDate(addMonthsUtc(m, 1)) });
  return out;
}

async function backfill(c: pg.ClientBase, p: Plan, batchSize: number): Promise<number> {
  await adopt.preferLosingDeadlocks(c);
  let copied = 0;
  let cursor: unknown[] | undefined;
  for (;;) {
    const row = await retryOnConflict(() => adopt.copyBatch(c, p.rel, p.twin, p.cols, p.pk, batchSize, cursor));
    copied += Number(row.inserted);
    if (Number(row.seen) < batchSize || !row.last) break;
    const last = row.last;
    cursor = p.pk.map((k) => last[k]);
  }
  return copied;
}

/** Verifies, then swaps; returns the rows at the swap. Runs inside one transaction. */
async function swap(c: pg.ClientBase, p: Plan): Promise<number> {
  await adopt.lockExclusive(c, p.rel);
  const { twinOid, keep, rows } = await verify(c, p);
  await adopt.swapIn(c, p, twinOid, keep);
  return rows;
}

/** Under the swap's lock: the twin and its mirror are still there and every row was copied. */
async function verify(c: pg.ClientBase, p: Plan) {
  const twin = await cat.relation(c, `${p.schema}.${p.twinName}`);
  if (!twin || !(await cat.hasMirrorTrigger(c, p.oid))) {
    throw new AdoptError(`${p.schema}.${p.twinName} or its mirror trigger disappeared during adopt; nothing swapped (rerun adopt)`);
  }
  const keep = await cat.carriedOver(c, p.oid, p.rel);
  let counts: { plain: number; twin: number };
  try {
    counts = await adopt.exactCounts(c, p.rel, p.twin, keep.security.forced);
  } catch (err) {
    if ((err as { code?: string }).code === '42501') {
      throw new AdoptError(`cannot count every row of ${p.schema}.${p.name} (${(err as Error).message}); run adopt as the table owner or a superuser; nothing swapped`, { cause: err });
    }
    throw err;
  }
  if (counts.plain !== counts.twin) {
    throw new AdoptError(`row counts differ after copy (plain ${counts.plain}, partitioned ${counts.twin}); nothing swapped (rerun adopt: the copy resumes)`);
  }
  return { twinOid: twin.oid, keep, rows: counts.plain };
}

/**
 * Runs `work` in a transaction whose locks wait at most `lockMs`; a lock timeout rolls back
 * and is retried a few times (producers queue behind a waiting lock request, so waiting long
 * once is worse than trying briefly several times).
 */
async function inTransaction<T>(c: pg.ClientBase, log: Logger, what: string, lockMs: number, attempts: number, work: () => Promise<T>): Promise<T> {
  for (let i = 1; ; i++) {
    try {
      await adopt.begin(c, lockMs);
      const out = await work();
      await adopt.commit(c);
      return out;
    } catch (err) {
      await adopt.rollback(c);
      const code = (err as { code?: string }).code;
      if ((code === '55P03' || code === '40P01') && i < attempts) {
        log.warn({ step: what, attempt: i }, `adopt: ${what} could not take its lock within ${lockMs} ms; retrying`);
        await new Promise((r) => setTimeout(r, Math.min(5000, 250 * 2 ** i)));
        continue;
      }
      if (err instanceof AdoptError) throw err;
      throw new AdoptError(`${what} failed and was rolled back (rerun adopt to continue): ${(err as Error).message}`, { cause: err });
    }
  }
}

/** A copy batch that deadlocks with application writes is the one to give way; retry it. */
async function retryOnConflict<T>(run: () => Promise<T>, attempts = 50): Promise<T> {
  for (let i = 1; ; i++) {
    try {
      return await run();
    } catch (err) {
      const code = (err as { code?: string }).code;
      if (i >= attempts || (code !== '40P01' && code !== '40001')) throw err;
      await new Promise((r) => setTimeout(r, 10 * i));
    }
  }
}
