import pg from 'pg';
import * as cat from '../db/queries/adopt.ts';
import type { Logger } from '../log.ts';
import { addMonthsUtc, isoDate, startOfMonthUtc } from './months.ts';
import { parseTableRef, RegistryError } from './registry.ts';

// Online conversion of a plain table into the monthly-partitioned layout
// (runbooks/partitions.md, "Adopting a plain table"). Runs as the table owner (or a superuser).
//
//   inspect  what exists: plain table, twin, mirror trigger; refuse if RLS could hide rows
//   twin     the partitioned twin (same columns, defaults, checks; unique keys gain the
//            partition column), its partitions and the mirror trigger, in ONE transaction:
//            a twin without its trigger, or a trigger without its twin, is never committed
//   backfill copy existing rows in primary-key order, in batches (FOR SHARE, ON CONFLICT DO NOTHING)
//   swap     one short transaction: lock, exact counts (RLS cannot hide rows from them), rename,
//            carry triggers, policies, grants and owner over (every partition too); the plain
//            table stays as <table>_unpartitioned for rollback
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

interface Plan {
  schema: string;
  name: string;
  rel: string;
  twinName: string;
  twin: string;
  backupName: string;
  partCol: string;
  premake: number;
  oid: number;
  cols: cat.Column[];
  pk: string[];
  indexes: cat.IndexInfo[];
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

  let partitions: string[];
  if (plan.resume) {
    partitions = (await cat.partitionsOf(client, (await cat.relation(client, `${plan.schema}.${plan.twinName}`))!.oid)).map((p) => p.name);
  } else {
    say(`creating ${plan.schema}.${plan.twinName} partitioned by month on ${plan.partCol}, and mirroring writes into it`);
    partitions = await tx('create the twin', () => createTwin(client, plan, (opts.now ?? (() => new Date()))()));
  }
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
  if (await cat.hasNulls(c, rel, reg.partition_column)) throw new AdoptError(`${schema}.${name}.${reg.partition_column} has NULLs, which no partition can hold`);
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

/**
 * Twin, partitions, mirror function and trigger in one transaction. A leftover twin (no live
 * mirror) or a leftover trigger (no twin: producers' writes would be failing) from an earlier
 * run is removed in the same transaction, so no intermediate state is ever visible.
 */
async function createTwin(c: pg.ClientBase, p: Plan, now: Date): Promise<string[]> {
  const fn = cat.mirrorFunction(p.name);
  await c.query(`DROP TRIGGER IF EXISTS ${q(cat.MIRROR_TRIGGER)} ON ${p.rel}`);
  await c.query(`DROP TABLE IF EXISTS ${p.twin}`);
  await c.query(
    `CREATE TABLE ${p.twin} (LIKE ${p.rel} INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING GENERATED INCLUDING STORAGE INCLUDING COMMENTS)
     PARTITION BY RANGE (${q(p.partCol)})`,
  );
  for (const [i, ix] of p.indexes.entries()) {
    const tmpName = `${p.name}__adopt_ix${i}`;
    if (ix.unique && ix.cols) {
      const keyCols = ix.cols.includes(p.partCol) ? ix.cols : [...ix.cols, p.partCol];
      const list = keyCols.map(q).join(', ');
      if (ix.primary) await c.query(`ALTER TABLE ${p.twin} ADD CONSTRAINT ${q(tmpName)} PRIMARY KEY (${list})`);
      else await c.query(`CREATE UNIQUE INDEX ${q(tmpName)} ON ${p.twin} (${list})`);
    } else {
      // Same definition, new name, on the twin: "CREATE INDEX name ON schema.table USING ..."
      const def = ix.def.replace(/^CREATE (UNIQUE )?INDEX \S+ ON (ONLY )?\S+/, `CREATE $1INDEX ${q(tmpName)} ON ${p.twin}`);
      if (def === ix.def) throw new AdoptError(`cannot rewrite index definition: ${ix.def}`);
      await c.query(def);
    }
    // The name it takes at the swap, kept with the index so a rerun knows it too.
    await c.query(`COMMENT ON INDEX ${q(p.schema)}.${q(tmpName)} IS ${pg.escapeLiteral(ix.name)}`);
  }
  const first = await cat.firstMonth(c, p.rel, p.partCol);
  const from = first ? startOfMonthUtc(new Date(`${isoDate(first)}T00:00:00Z`)) : startOfMonthUtc(now);
  const until = addMonthsUtc(startOfMonthUtc(now), p.premake);
  const partitions: string[] = [];
  for (let m = from; m <= until; m = addMonthsUtc(m, 1)) {
    const part = await cat.monthlyPartitionName(c, p.name, isoDate(m));
    await c.query(
      `CREATE TABLE ${q(p.schema)}.${q(part)} PARTITION OF ${p.twin} FOR VALUES FROM (${pg.escapeLiteral(`${isoDate(m)} 00:00:00+00`)}) TO (${pg.escapeLiteral(`${isoDate(addMonthsUtc(m, 1))} 00:00:00+00`)})`,
    );
    partitions.push(part);
  }
  await c.query(`CREATE TABLE ${q(p.schema)}.${q(`${p.name}_default`)} PARTITION OF ${p.twin} DEFAULT`);
  partitions.push(`${p.name}_default`);

  const keyCols = p.pk.includes(p.partCol) ? p.pk : [...p.pk, p.partCol];
  await c.query(cat.mirrorFunctionDdl(fn, p.twin, p.cols, keyCols));
  await c.query(`REVOKE ALL ON FUNCTION ${fn}() FROM PUBLIC`);
  await c.query(`CREATE TRIGGER ${q(cat.MIRROR_TRIGGER)} AFTER INSERT OR UPDATE OR DELETE ON ${p.rel} FOR EACH ROW EXECUTE FUNCTION ${fn}()`);
  return partitions;
}

async function backfill(c: pg.ClientBase, p: Plan, batchSize: number): Promise<number> {
  // Let this session lose deadlocks against application traffic (needs superuser; best effort).
  await c.query("SET deadlock_timeout = '100ms'").catch(() => undefined);
  let copied = 0;
  let cursor: unknown[] | undefined;
  for (;;) {
    const row = await retryOnConflict(() => cat.copyBatch(c, p.rel, p.twin, p.cols, p.pk, batchSize, cursor));
    copied += Number(row.inserted);
    if (Number(row.seen) < batchSize || !row.last) break;
    const last = row.last;
    cursor = p.pk.map((k) => last[k]);
  }
  return copied;
}

/** Verifies and swaps; returns the rows at the swap. Runs inside one transaction. */
async function swap(c: pg.ClientBase, p: Plan): Promise<number> {
  await c.query(`LOCK TABLE ${p.rel} IN ACCESS EXCLUSIVE MODE`);
  const twin = await cat.relation(c, `${p.schema}.${p.twinName}`);
  if (!twin || !(await cat.hasMirrorTrigger(c, p.oid))) {
    throw new AdoptError(`${p.schema}.${p.twinName} or its mirror trigger disappeared during adopt; nothing swapped (rerun adopt)`);
  }
  const keep = await cat.carriedOver(c, p.oid, p.rel);
  let counts: { plain: number; twin: number };
  try {
    counts = await cat.exactCounts(c, p.rel, p.twin, keep.security.forced);
  } catch (err) {
    if ((err as { code?: string }).code === '42501') {
      throw new AdoptError(`cannot count every row of ${p.schema}.${p.name} (${(err as Error).message}); run adopt as the table owner or a superuser; nothing swapped`, { cause: err });
    }
    throw err;
  }
  if (counts.plain !== counts.twin) {
    throw new AdoptError(`row counts differ after copy (plain ${counts.plain}, partitioned ${counts.twin}); nothing swapped (rerun adopt: the copy resumes)`);
  }
  const twinIndexes = await cat.twinIndexTargets(c, twin.oid);
  await c.query(`DROP TRIGGER ${q(cat.MIRROR_TRIGGER)} ON ${p.rel}`);
  await c.query(`DROP FUNCTION ${cat.mirrorFunction(p.name)}()`);
  await c.query(`ALTER TABLE ${p.rel} RENAME TO ${q(p.backupName)}`);
  for (const ix of await cat.indexes(c, p.oid)) await c.query(`ALTER INDEX ${q(p.schema)}.${q(ix.name)} RENAME TO ${q(`${ix.name.slice(0, 50)}_unpart`)}`);
  await c.query(`ALTER TABLE ${p.twin} RENAME TO ${q(p.name)}`);
  for (const ix of twinIndexes) {
    if (!ix.target) continue;
    await c.query(`ALTER INDEX ${q(p.schema)}.${q(ix.name)} RENAME TO ${q(ix.target)}`);
    await c.query(`COMMENT ON INDEX ${q(p.schema)}.${q(ix.target)} IS NULL`);
  }
  for (const s of keep.ownedSequences) await c.query(`ALTER SEQUENCE ${s.seq} OWNED BY ${p.rel}.${q(s.col)}`);
  for (const def of keep.triggers) await c.query(def);
  if (keep.security.on) await c.query(`ALTER TABLE ${p.rel} ENABLE ROW LEVEL SECURITY`);
  if (keep.security.forced) await c.query(`ALTER TABLE ${p.rel} FORCE ROW LEVEL SECURITY`);
  for (const def of keep.policies) await c.query(def);
  await c.query(`REVOKE ALL ON ${p.rel} FROM PUBLIC`);
  for (const def of keep.grants) await c.query(def);
  // OWNER TO on a partitioned table does not recurse: hand over every partition, or retirement
  // (DETACH/DROP, run by the owner's SECURITY DEFINER functions) fails later.
  await c.query(`ALTER TABLE ${p.rel} OWNER TO ${q(keep.security.owner)}`);
  for (const part of await cat.partitionsOf(c, twin.oid)) {
    if (part.owner !== keep.security.owner) await c.query(`ALTER TABLE ${q(p.schema)}.${q(part.name)} OWNER TO ${q(keep.security.owner)}`);
  }
  // The backup must not keep firing the outbox's triggers if someone writes to it by mistake.
  await c.query(`ALTER TABLE ${q(p.schema)}.${q(p.backupName)} DISABLE TRIGGER USER`);
  return counts.plain;
}

/**
 * Runs `work` in a transaction whose locks wait at most `lockMs`; a lock timeout rolls back
 * and is retried a few times (producers queue behind a waiting lock request, so waiting long
 * once is worse than trying briefly several times).
 */
async function inTransaction<T>(c: pg.ClientBase, log: Logger, what: string, lockMs: number, attempts: number, work: () => Promise<T>): Promise<T> {
  for (let i = 1; ; i++) {
    await c.query('BEGIN');
    try {
      await c.query(`SET LOCAL lock_timeout = '${lockMs}ms'`);
      const out = await work();
      await c.query('COMMIT');
      return out;
    } catch (err) {
      await c.query('ROLLBACK').catch(() => undefined);
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
