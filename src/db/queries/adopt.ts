import pg from 'pg';
import { carriedOver, indexes, MIRROR_TRIGGER, partitionsOf, twinIndexTargets, type Column, type IndexInfo } from './catalog.ts';

// Statements of `partitions adopt` (src/partitions/adopt.ts); its catalog reads are in catalog.ts. Identifiers
// are validated by the caller (parseTableRef) or come from the catalog, and are always quoted.

const q = pg.escapeIdentifier;

export function mirrorFunction(table: string): string {
  return `outbox_dispatcher.${q(`adopt_sync_${table}`)}`;
}

export async function monthlyPartitionName(c: pg.ClientBase, table: string, month: string): Promise<string> {
  return (await c.query<{ n: string }>('SELECT outbox_dispatcher.monthly_partition_name($1, $2::date) AS n', [table, month])).rows[0]!.n;
}

export async function firstMonth(c: pg.ClientBase, rel: string, partCol: string): Promise<Date | null> {
  const r = await c.query<{ m: Date | null }>(`SELECT date_trunc('month', min(${q(partCol)}) AT TIME ZONE 'UTC') AS m FROM ${rel}`);
  return r.rows[0]!.m;
}

export async function hasNulls(c: pg.ClientBase, rel: string, partCol: string): Promise<boolean> {
  return ((await c.query(`SELECT 1 FROM ${rel} WHERE ${q(partCol)} IS NULL LIMIT 1`)).rowCount ?? 0) > 0;
}

/** The mirror: every insert, update and delete on the plain table, applied to the twin. */
export function mirrorFunctionDdl(fn: string, twin: string, cols: Column[], keyCols: string[]): string {
  const colList = cols.map((c) => q(c.name)).join(', ');
  return `
    CREATE OR REPLACE FUNCTION ${fn}() RETURNS trigger LANGUAGE plpgsql
    -- Producers and workers write the plain table; only the owner may write the twin.
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
    BEGIN
      IF TG_OP IN ('UPDATE', 'DELETE') THEN
        DELETE FROM ${twin} WHERE ${keyCols.map((c) => `${q(c)} = OLD.${q(c)}`).join(' AND ')};
      END IF;
      IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO ${twin} (${colList}) SELECT ${cols.map((c) => `NEW.${q(c.name)}`).join(', ')} ON CONFLICT DO NOTHING;
      END IF;
      RETURN NULL;
    END
    $fn$`;
}

/**
 * One backfill batch in primary-key order after `cursor`. FOR SHARE makes a concurrent
 * delete or update wait for the batch, so the mirror trigger then sees (and fixes) the copy.
 */
export async function copyBatch(
  c: pg.ClientBase,
  rel: string,
  twin: string,
  cols: Column[],
  pk: string[],
  batchSize: number,
  cursor: unknown[] | undefined,
): Promise<{ seen: number; inserted: number; last: Record<string, unknown> | null }> {
  const colList = cols.map((x) => q(x.name)).join(', ');
  const pkList = pk.map(q).join(', ');
  const after = cursor ? `WHERE (${pkList}) > (${pk.map((_, i) => `$${i + 1}`).join(', ')})` : '';
  const res = await c.query<{ seen: number; inserted: number; last: Record<string, unknown> | null }>(
    `WITH batch AS (SELECT ${colList} FROM ${rel} ${after} ORDER BY ${pkList} LIMIT ${Number(batchSize)} FOR SHARE),
          ins AS (INSERT INTO ${twin} (${colList}) SELECT ${colList} FROM batch ON CONFLICT DO NOTHING RETURNING 1)
     SELECT (SELECT count(*) FROM batch)::int AS seen, (SELECT count(*) FROM ins)::int AS inserted,
            (SELECT row_to_json(b) FROM (SELECT ${pkList} FROM batch ORDER BY ${pk.map((x) => `${q(x)} DESC`).join(', ')} LIMIT 1) b) AS last`,
    cursor ?? [],
  );
  return res.rows[0]!;
}

/**
 * Exact row counts of the plain table and the twin, which RLS cannot shrink: the caller holds
 * ACCESS EXCLUSIVE on the plain table, FORCE is lifted inside the transaction (the table
 * owner is then exempt) and row_security = off makes PostgreSQL raise instead of filtering
 * should any policy still apply. Rolled back with the transaction.
 */
export async function exactCounts(c: pg.ClientBase, rel: string, twin: string, forced: boolean): Promise<{ plain: number; twin: number }> {
  if (forced) await c.query(`ALTER TABLE ${rel} NO FORCE ROW LEVEL SECURITY`);
  await c.query('SET LOCAL row_security = off');
  const r = await c.query<{ plain: string; twin: string }>(`SELECT (SELECT count(*) FROM ${rel}) AS plain, (SELECT count(*) FROM ${twin}) AS twin`);
  await c.query('SET LOCAL row_security = on');
  if (forced) await c.query(`ALTER TABLE ${rel} FORCE ROW LEVEL SECURITY`);
  return { plain: Number(r.rows[0]!.plain), twin: Number(r.rows[0]!.twin) };
}

/** What adopt works on (validated names; quoted forms where used in SQL). */
export interface AdoptTarget {
  schema: string;
  name: string;
  /** Quoted schema.name of the plain table. */
  rel: string;
  twinName: string;
  /** Quoted schema.name of the twin. */
  twin: string;
  backupName: string;
  partCol: string;
  premake: number;
  oid: number;
  cols: Column[];
  pk: string[];
  indexes: IndexInfo[];
}

/**
 * Twin, its monthly partitions ([from, to) as YYYY-MM-DD) and default partition; the caller
 * runs it and createMirror in one transaction. A leftover twin (no live mirror) or a leftover
 * trigger (no twin: producers' writes would be failing) from an earlier run is removed in the
 * same transaction, so no intermediate state is ever visible.
 */
export async function createTwin(c: pg.ClientBase, p: AdoptTarget, months: { from: string; to: string }[]): Promise<string[]> {
  await c.query(`DROP TRIGGER IF EXISTS ${q(MIRROR_TRIGGER)} ON ${p.rel}`);
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
      if (def === ix.def) throw new Error(`cannot rewrite index definition: ${ix.def}`);
      await c.query(def);
    }
    // The name it takes at the swap, kept with the index so a rerun knows it too.
    await c.query(`COMMENT ON INDEX ${q(p.schema)}.${q(tmpName)} IS ${pg.escapeLiteral(ix.name)}`);
  }
  const partitions: string[] = [];
  for (const m of months) {
    const part = await monthlyPartitionName(c, p.name, m.from);
    await c.query(
      `CREATE TABLE ${q(p.schema)}.${q(part)} PARTITION OF ${p.twin} FOR VALUES FROM (${pg.escapeLiteral(`${m.from} 00:00:00+00`)}) TO (${pg.escapeLiteral(`${m.to} 00:00:00+00`)})`,
    );
    partitions.push(part);
  }
  await c.query(`CREATE TABLE ${q(p.schema)}.${q(`${p.name}_default`)} PARTITION OF ${p.twin} DEFAULT`);
  partitions.push(`${p.name}_default`);
  return partitions;
}

/** The mirror function and trigger: from here on every write to the plain table reaches the twin. */
export async function createMirror(c: pg.ClientBase, p: AdoptTarget): Promise<void> {
  const fn = mirrorFunction(p.name);
  const keyCols = p.pk.includes(p.partCol) ? p.pk : [...p.pk, p.partCol];
  await c.query(mirrorFunctionDdl(fn, p.twin, p.cols, keyCols));
  await c.query(`REVOKE ALL ON FUNCTION ${fn}() FROM PUBLIC`);
  await c.query(`CREATE TRIGGER ${q(MIRROR_TRIGGER)} AFTER INSERT OR UPDATE OR DELETE ON ${p.rel} FOR EACH ROW EXECUTE FUNCTION ${fn}()`);
}

/** The renames and carry-over of the swap (the caller holds the lock and has verified the counts). */
export async function swapIn(c: pg.ClientBase, p: AdoptTarget, twinOid: number, keep: Awaited<ReturnType<typeof carriedOver>>): Promise<void> {
  const twinIndexes = await twinIndexTargets(c, twinOid);
  await c.query(`DROP TRIGGER ${q(MIRROR_TRIGGER)} ON ${p.rel}`);
  await c.query(`DROP FUNCTION ${mirrorFunction(p.name)}()`);
  await c.query(`ALTER TABLE ${p.rel} RENAME TO ${q(p.backupName)}`);
  for (const ix of await indexes(c, p.oid)) await c.query(`ALTER INDEX ${q(p.schema)}.${q(ix.name)} RENAME TO ${q(`${ix.name.slice(0, 50)}_unpart`)}`);
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
  for (const part of await partitionsOf(c, twinOid)) {
    if (part.owner !== keep.security.owner) await c.query(`ALTER TABLE ${q(p.schema)}.${q(part.name)} OWNER TO ${q(keep.security.owner)}`);
  }
  // The backup must not keep firing the outbox's triggers if someone writes to it by mistake.
  await c.query(`ALTER TABLE ${q(p.schema)}.${q(p.backupName)} DISABLE TRIGGER USER`);
}

/** Let this session lose deadlocks against application traffic (needs superuser; best effort). */
export async function preferLosingDeadlocks(c: pg.ClientBase): Promise<void> {
  await c.query("SET deadlock_timeout = '100ms'").catch(() => undefined);
}

export async function lockExclusive(c: pg.ClientBase, rel: string): Promise<void> {
  await c.query(`LOCK TABLE ${rel} IN ACCESS EXCLUSIVE MODE`);
}

/** BEGIN with a transaction-local lock_timeout. */
export async function begin(c: pg.ClientBase, lockTimeoutMs: number): Promise<void> {
  await c.query('BEGIN');
  await c.query(`SET LOCAL lock_timeout = '${Math.max(1, Math.round(lockTimeoutMs))}ms'`);
}

export async function commit(c: pg.ClientBase): Promise<void> {
  await c.query('COMMIT');
}

export async function rollback(c: pg.ClientBase): Promise<void> {
  await c.query('ROLLBACK').catch(() => undefined);
}
