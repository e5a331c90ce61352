import pg from 'pg';

// Catalog reads and statements of `partitions adopt` (src/partitions/adopt.ts). Identifiers
// are validated by the caller (parseTableRef) or come from the catalog, and are always quoted.

const q = pg.escapeIdentifier;

/** The trigger adopt installs on the plain table to mirror writes into the twin. */
export const MIRROR_TRIGGER = 'outbox_adopt_sync';

export function mirrorFunction(table: string): string {
  return `outbox_dispatcher.${q(`adopt_sync_${table}`)}`;
}

export interface Column {
  name: string;
  identity: string;
}

export interface IndexInfo {
  name: string;
  def: string;
  unique: boolean;
  primary: boolean;
  cols: string[] | null;
  expression: boolean;
}

export async function registryEntry(c: pg.ClientBase, schema: string, name: string) {
  const r = await c.query<{ partition_column: string; premake_months: number }>(
    'SELECT partition_column, premake_months FROM outbox_dispatcher.managed_partitions WHERE table_schema = $1 AND table_name = $2',
    [schema, name],
  );
  return r.rows[0];
}

export async function relation(c: pg.ClientBase, qualified: string): Promise<{ oid: number; relkind: string; owner: string } | undefined> {
  const r = await c.query<{ oid: number; relkind: string; owner: string }>(
    'SELECT oid, relkind, pg_get_userbyid(relowner) AS owner FROM pg_class WHERE oid = to_regclass($1)',
    [qualified],
  );
  return r.rows[0];
}

export async function hasMirrorTrigger(c: pg.ClientBase, oid: number): Promise<boolean> {
  const r = await c.query('SELECT 1 FROM pg_trigger WHERE tgrelid = $1 AND tgname = $2', [oid, MIRROR_TRIGGER]);
  return (r.rowCount ?? 0) > 0;
}

export async function partitionKey(c: pg.ClientBase, oid: number): Promise<string | null> {
  const r = await c.query<{ key: string | null }>('SELECT pg_get_partkeydef($1) AS key', [oid]);
  return r.rows[0]?.key ?? null;
}

export async function columns(c: pg.ClientBase, oid: number): Promise<Column[]> {
  return (
    await c.query<Column>(
      'SELECT attname AS name, attidentity AS identity FROM pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum',
      [oid],
    )
  ).rows;
}

export async function primaryKey(c: pg.ClientBase, oid: number): Promise<string[]> {
  return (
    await c.query<{ col: string }>(
      `SELECT a.attname AS col FROM pg_index i JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(attnum, ord) ON true
       JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
       WHERE i.indrelid = $1 AND i.indisprimary ORDER BY k.ord`,
      [oid],
    )
  ).rows.map((r) => r.col);
}

export async function indexes(c: pg.ClientBase, oid: number): Promise<IndexInfo[]> {
  return (
    await c.query<IndexInfo>(
      `SELECT c.relname AS name, pg_get_indexdef(i.indexrelid) AS def, i.indisunique AS unique, i.indisprimary AS primary,
              (i.indexprs IS NOT NULL OR i.indpred IS NOT NULL) AS expression,
              (SELECT array_agg(a.attname::text ORDER BY k.ord) FROM unnest(i.indkey) WITH ORDINALITY k(attnum, ord)
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum) AS cols
       FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = $1 ORDER BY c.relname`,
      [oid],
    )
  ).rows;
}

/**
 * Whether row-level security could hide rows of the table from this session. False when RLS
 * does not apply to us (superuser, BYPASSRLS, owner without FORCE) or when a permissive
 * policy for every command with USING (true) applies to us and no restrictive policy does:
 * then every row is visible, provably, not just "no error".
 */
export async function rlsMayHideRows(c: pg.ClientBase, oid: number): Promise<boolean> {
  const r = await c.query<{ hides: boolean }>(
    `SELECT row_security_active($1::oid) AND NOT (
              EXISTS (SELECT 1 FROM pg_policy p
                      WHERE p.polrelid = $1 AND p.polpermissive AND p.polcmd = '*'
                        AND pg_get_expr(p.polqual, p.polrelid) = 'true'
                        AND (p.polwithcheck IS NULL OR pg_get_expr(p.polwithcheck, p.polrelid) = 'true')
                        AND (0 = ANY (p.polroles) OR EXISTS (SELECT 1 FROM unnest(p.polroles) r WHERE pg_has_role(current_user, r, 'USAGE'))))
          AND NOT EXISTS (SELECT 1 FROM pg_policy p
                          WHERE p.polrelid = $1 AND NOT p.polpermissive
                            AND (0 = ANY (p.polroles) OR EXISTS (SELECT 1 FROM unnest(p.polroles) r WHERE pg_has_role(current_user, r, 'USAGE'))))
       ) AS hides`,
    [oid],
  );
  return r.rows[0]!.hides;
}

/** Definitions to recreate on the partitioned table at the swap (read under the swap's lock). */
export async function carriedOver(c: pg.ClientBase, oid: number, rel: string) {
  const triggers = (
    await c.query<{ def: string }>(
      'SELECT pg_get_triggerdef(oid) AS def FROM pg_trigger WHERE tgrelid = $1 AND NOT tgisinternal AND tgname <> $2 ORDER BY tgname',
      [oid, MIRROR_TRIGGER],
    )
  ).rows.map((r) => r.def);
  const policies = (
    await c.query<{ def: string }>(
      `SELECT format('CREATE POLICY %I ON %s AS %s FOR %s TO %s%s%s', p.polname, $2::text,
                     CASE WHEN p.polpermissive THEN 'PERMISSIVE' ELSE 'RESTRICTIVE' END,
                     CASE p.polcmd WHEN 'r' THEN 'SELECT' WHEN 'a' THEN 'INSERT' WHEN 'w' THEN 'UPDATE' WHEN 'd' THEN 'DELETE' ELSE 'ALL' END,
                     (SELECT string_agg(CASE WHEN r = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(r)) END, ', ') FROM unnest(p.polroles) r),
                     CASE WHEN p.polqual IS NULL THEN '' ELSE ' USING (' || pg_get_expr(p.polqual, p.polrelid) || ')' END,
                     CASE WHEN p.polwithcheck IS NULL THEN '' ELSE ' WITH CHECK (' || pg_get_expr(p.polwithcheck, p.polrelid) || ')' END) AS def
       FROM pg_policy p WHERE p.polrelid = $1 ORDER BY p.polname`,
      [oid, rel],
    )
  ).rows.map((r) => r.def);
  const security = (
    await c.query<{ on: boolean; forced: boolean; owner: string }>(
      'SELECT relrowsecurity AS on, relforcerowsecurity AS forced, pg_get_userbyid(relowner) AS owner FROM pg_class WHERE oid = $1',
      [oid],
    )
  ).rows[0]!;
  const grants = (
    await c.query<{ def: string }>(
      `SELECT format('GRANT %s ON %s TO %s', a.privilege_type, $2::text, CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END) AS def
       FROM pg_class c, aclexplode(c.relacl) a WHERE c.oid = $1 AND a.grantee <> c.relowner
       UNION ALL
       SELECT format('GRANT %s (%I) ON %s TO %s', a.privilege_type, att.attname, $2::text, CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END)
       FROM pg_attribute att, aclexplode(att.attacl) a WHERE att.attrelid = $1 AND att.attnum > 0 AND NOT att.attisdropped`,
      [oid, rel],
    )
  ).rows.map((r) => r.def);
  const ownedSequences = (
    await c.query<{ seq: string; col: string }>(
      `SELECT d.objid::regclass::text AS seq, a.attname AS col FROM pg_depend d
       JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
       JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
       WHERE d.refobjid = $1 AND d.classid = 'pg_class'::regclass AND d.deptype = 'a'`,
      [oid],
    )
  ).rows;
  return { triggers, policies, security, grants, ownedSequences };
}

/** Twin indexes with the name they take at the swap (kept in the index comment, so a rerun knows). */
export async function twinIndexTargets(c: pg.ClientBase, twinOid: number): Promise<{ name: string; target: string | null }[]> {
  return (
    await c.query<{ name: string; target: string | null }>(
      `SELECT c.relname AS name, obj_description(c.oid, 'pg_class') AS target
       FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = $1 ORDER BY 1`,
      [twinOid],
    )
  ).rows;
}

/** Every partition of a partitioned table (direct children). */
export async function partitionsOf(c: pg.ClientBase, oid: number): Promise<{ name: string; owner: string }[]> {
  return (
    await c.query<{ name: string; owner: string }>(
      `SELECT c.relname AS name, pg_get_userbyid(c.relowner) AS owner FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
       WHERE i.inhparent = $1 ORDER BY 1`,
      [oid],
    )
  ).rows;
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
 * Twin, its monthly partitions ([from, to) as YYYY-MM-DD) and default partition, mirror
 * function and trigger; the caller runs it in one transaction. A leftover twin (no live
 * mirror) or a leftover trigger (no twin: producers' writes would be failing) from an earlier
 * run is removed in the same transaction, so no intermediate state is ever visible.
 */
export async function createTwin(c: pg.ClientBase, p: AdoptTarget, months: { from: string; to: string }[]): Promise<string[]> {
  const fn = mirrorFunction(p.name);
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

  const keyCols = p.pk.includes(p.partCol) ? p.pk : [...p.pk, p.partCol];
  await c.query(mirrorFunctionDdl(fn, p.twin, p.cols, keyCols));
  await c.query(`REVOKE ALL ON FUNCTION ${fn}() FROM PUBLIC`);
  await c.query(`CREATE TRIGGER ${q(MIRROR_TRIGGER)} AFTER INSERT OR UPDATE OR DELETE ON ${p.rel} FOR EACH ROW EXECUTE FUNCTION ${fn}()`);
  return partitions;
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

export async function currentUser(c: pg.ClientBase): Promise<string> {
  return (await c.query<{ u: string }>('SELECT current_user AS u')).rows[0]!.u;
}
