import pg from 'pg';
import type { Logger } from '../log.ts';
import { addMonthsUtc, isoDate, startOfMonthUtc } from './months.ts';
import { parseTableRef, RegistryError } from './registry.ts';

// Online conversion of a plain table into the monthly-partitioned layout
// (runbooks/partitions.md, "Adopting a plain table"). Runs as the table owner.
//
//   1. create the partitioned twin (same columns, defaults, checks; unique keys gain the
//      partition column) with monthly partitions and a default partition
//   2. a trigger on the plain table mirrors every insert, update and delete into the twin
//   3. copy existing rows in primary-key order, in batches (FOR SHARE, ON CONFLICT DO NOTHING)
//   4. swap in one short transaction: lock, verify counts, rename, carry triggers, policies,
//      grants and owner over; the plain table stays as <table>_unpartitioned for rollback

const q = pg.escapeIdentifier;

export interface AdoptOptions {
  table: string;
  batchSize?: number;
  /** Seconds the swap may wait for its lock before giving up (and leaving the sync running). */
  lockTimeoutSeconds?: number;
  now?: () => Date;
  /** Progress lines for the operator. */
  onStep?: (message: string) => void;
}

export interface AdoptResult {
  table: string;
  copiedRows: number;
  rowsAtSwap: number;
  partitions: string[];
  backupTable: string;
}

export class AdoptError extends Error {
  override name = 'AdoptError';
}

interface Column {
  name: string;
  identity: string;
}

export async function adoptTable(client: pg.ClientBase, log: Logger, opts: AdoptOptions): Promise<AdoptResult> {
  const step = (msg: string) => {
    opts.onStep?.(msg);
    log.info({ table: opts.table }, msg);
  };
  const { table_schema: schema, table_name: name } = parseTableRef(opts.table);
  const batchSize = opts.batchSize ?? 5000;
  const now = (opts.now ?? (() => new Date()))();
  const rel = `${q(schema)}.${q(name)}`;
  const twinName = `${name}__partitioned`;
  const twin = `${q(schema)}.${q(twinName)}`;
  const backupName = `${name}_unpartitioned`;

  const reg = await client.query<{ partition_column: string; premake_months: number }>(
    'SELECT partition_column, premake_months FROM outbox_dispatcher.managed_partitions WHERE table_schema = $1 AND table_name = $2',
    [schema, name],
  );
  if (reg.rowCount === 0) throw new RegistryError(`table ${schema}.${name} is not registered in outbox_dispatcher.managed_partitions; register it first`);
  const { partition_column: partCol, premake_months: premake } = reg.rows[0]!;

  const kind = await client.query<{ relkind: string; oid: number }>('SELECT relkind, oid FROM pg_class WHERE oid = to_regclass($1)', [`${schema}.${name}`]);
  if (kind.rowCount === 0) throw new AdoptError(`${schema}.${name} does not exist`);
  if (kind.rows[0]!.relkind === 'p') throw new AdoptError(`${schema}.${name} is already partitioned; nothing to adopt`);
  if (kind.rows[0]!.relkind !== 'r') throw new AdoptError(`${schema}.${name} is not a plain table`);
  const oid = kind.rows[0]!.oid;
  if ((await client.query('SELECT 1 FROM pg_class WHERE oid = to_regclass($1)', [`${schema}.${backupName}`])).rowCount) {
    throw new AdoptError(`${schema}.${backupName} already exists (an earlier adopt's backup); drop or rename it first`);
  }

  const cols = (
    await client.query<Column>(
      'SELECT attname AS name, attidentity AS identity FROM pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum',
      [oid],
    )
  ).rows;
  if (!cols.some((c) => c.name === partCol)) throw new AdoptError(`${schema}.${name} has no column ${partCol}`);
  if (cols.some((c) => c.identity !== '')) throw new AdoptError(`${schema}.${name} has identity columns, which adopt does not carry over; convert them to sequences first`);
  const pk = (
    await client.query<{ col: string }>(
      `SELECT a.attname AS col FROM pg_index i JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(attnum, ord) ON true
       JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
       WHERE i.indrelid = $1 AND i.indisprimary ORDER BY k.ord`,
      [oid],
    )
  ).rows.map((r) => r.col);
  if (pk.length === 0) throw new AdoptError(`${schema}.${name} has no primary key; adopt copies in primary-key order`);
  const nulls = await client.query(`SELECT 1 FROM ${rel} WHERE ${q(partCol)} IS NULL LIMIT 1`);
  if (nulls.rowCount) throw new AdoptError(`${schema}.${name}.${partCol} has NULLs, which no partition can hold`);

  // What must be carried over at the swap, captured while the names still point at the plain table.
  const triggers = (
    await client.query<{ def: string }>('SELECT pg_get_triggerdef(oid) AS def FROM pg_trigger WHERE tgrelid = $1 AND NOT tgisinternal', [oid])
  ).rows.map((r) => r.def);
  const policies = (
    await client.query<{ def: string }>(
      `SELECT format('CREATE POLICY %I ON %s AS %s FOR %s TO %s%s%s', p.polname, $2::text,
                     CASE WHEN p.polpermissive THEN 'PERMISSIVE' ELSE 'RESTRICTIVE' END,
                     CASE p.polcmd WHEN 'r' THEN 'SELECT' WHEN 'a' THEN 'INSERT' WHEN 'w' THEN 'UPDATE' WHEN 'd' THEN 'DELETE' ELSE 'ALL' END,
                     (SELECT string_agg(CASE WHEN r = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(r)) END, ', ') FROM unnest(p.polroles) r),
                     CASE WHEN p.polqual IS NULL THEN '' ELSE ' USING (' || pg_get_expr(p.polqual, p.polrelid) || ')' END,
                     CASE WHEN p.polwithcheck IS NULL THEN '' ELSE ' WITH CHECK (' || pg_get_expr(p.polwithcheck, p.polrelid) || ')' END) AS def
       FROM pg_policy p WHERE p.polrelid = $1`,
      [oid, rel],
    )
  ).rows.map((r) => r.def);
  const rls = (await client.query<{ on: boolean; forced: boolean; owner: string }>(
    'SELECT relrowsecurity AS on, relforcerowsecurity AS forced, pg_get_userbyid(relowner) AS owner FROM pg_class WHERE oid = $1',
    [oid],
  )).rows[0]!;
  const grants = (
    await client.query<{ def: string }>(
      `SELECT format('GRANT %s ON %s TO %s', a.privilege_type, $2::text, CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END) AS def
       FROM pg_class c, aclexplode(c.relacl) a WHERE c.oid = $1 AND a.grantee <> c.relowner
       UNION ALL
       SELECT format('GRANT %s (%I) ON %s TO %s', a.privilege_type, att.attname, $2::text, CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END)
       FROM pg_attribute att, aclexplode(att.attacl) a WHERE att.attrelid = $1 AND att.attnum > 0 AND NOT att.attisdropped`,
      [oid, rel],
    )
  ).rows.map((r) => r.def);
  const indexes = (
    await client.query<{ name: string; def: string; unique: boolean; primary: boolean; cols: string[] | null; expression: boolean }>(
      `SELECT c.relname AS name, pg_get_indexdef(i.indexrelid) AS def, i.indisunique AS unique, i.indisprimary AS primary,
              (i.indexprs IS NOT NULL OR i.indpred IS NOT NULL) AS expression,
              (SELECT array_agg(a.attname::text ORDER BY k.ord) FROM unnest(i.indkey) WITH ORDINALITY k(attnum, ord)
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum) AS cols
       FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = $1`,
      [oid],
    )
  ).rows;
  const ownedSequences = (
    await client.query<{ seq: string; col: string }>(
      `SELECT d.objid::regclass::text AS seq, a.attname AS col FROM pg_depend d
       JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
       JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
       WHERE d.refobjid = $1 AND d.classid = 'pg_class'::regclass AND d.deptype = 'a'`,
      [oid],
    )
  ).rows;

  const odd = indexes.find((ix) => ix.unique && ix.expression);
  if (odd) throw new AdoptError(`unique index ${odd.name} has expressions or a predicate; adopt cannot add the partition column to it (drop or rewrite it first)`);

  // 1. The twin and its partitions.
  step(`creating ${schema}.${twinName} partitioned by month on ${partCol}`);
  await client.query(`DROP TABLE IF EXISTS ${twin}`);
  await client.query(
    `CREATE TABLE ${twin} (LIKE ${rel} INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING GENERATED INCLUDING STORAGE INCLUDING COMMENTS)
     PARTITION BY RANGE (${q(partCol)})`,
  );
  const twinIndexNames: { from: string; to: string }[] = [];
  for (const [i, ix] of indexes.entries()) {
    const tmpName = `${name}__adopt_ix${i}`;
    twinIndexNames.push({ from: tmpName, to: ix.name });
    if (ix.unique && ix.cols) {
      const keyCols = ix.cols.includes(partCol) ? ix.cols : [...ix.cols, partCol];
      const list = keyCols.map(q).join(', ');
      if (ix.primary) await client.query(`ALTER TABLE ${twin} ADD CONSTRAINT ${q(tmpName)} PRIMARY KEY (${list})`);
      else await client.query(`CREATE UNIQUE INDEX ${q(tmpName)} ON ${twin} (${list})`);
    } else {
      // Same definition, new name, on the twin: "CREATE INDEX name ON schema.table USING ..."
      const def = ix.def.replace(/^CREATE (UNIQUE )?INDEX \S+ ON (ONLY )?\S+/, `CREATE $1INDEX ${q(tmpName)} ON ${twin}`);
      if (def === ix.def) throw new AdoptError(`cannot rewrite index definition: ${ix.def}`);
      await client.query(def);
    }
  }
  const first = await client.query<{ m: Date | null }>(`SELECT date_trunc('month', min(${q(partCol)}) AT TIME ZONE 'UTC') AS m FROM ${rel}`);
  const from = first.rows[0]!.m ? startOfMonthUtc(new Date(`${isoDate(first.rows[0]!.m)}T00:00:00Z`)) : startOfMonthUtc(now);
  const until = addMonthsUtc(startOfMonthUtc(now), premake);
  const partitions: string[] = [];
  for (let m = from; m <= until; m = addMonthsUtc(m, 1)) {
    const part = (await client.query<{ n: string }>('SELECT outbox_dispatcher.monthly_partition_name($1, $2::date) AS n', [name, isoDate(m)])).rows[0]!.n;
    await client.query(
      `CREATE TABLE ${q(schema)}.${q(part)} PARTITION OF ${twin} FOR VALUES FROM (${pg.escapeLiteral(`${isoDate(m)} 00:00:00+00`)}) TO (${pg.escapeLiteral(`${isoDate(addMonthsUtc(m, 1))} 00:00:00+00`)})`,
    );
    partitions.push(part);
  }
  await client.query(`CREATE TABLE ${q(schema)}.${q(`${name}_default`)} PARTITION OF ${twin} DEFAULT`);
  partitions.push(`${name}_default`);

  // 2. Mirror writes while the copy runs.
  step('mirroring writes on the plain table into the twin');
  const keyCols = pk.includes(partCol) ? pk : [...pk, partCol];
  const colList = cols.map((c) => q(c.name)).join(', ');
  const fn = `outbox_dispatcher.${q(`adopt_sync_${name}`)}`;
  await client.query(`
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
    $fn$`);
  await client.query(`DROP TRIGGER IF EXISTS outbox_adopt_sync ON ${rel}`);
  await client.query(`REVOKE ALL ON FUNCTION ${fn}() FROM PUBLIC`);
  await client.query(`CREATE TRIGGER outbox_adopt_sync AFTER INSERT OR UPDATE OR DELETE ON ${rel} FOR EACH ROW EXECUTE FUNCTION ${fn}()`);

  // 3. Backfill in primary-key order. FOR SHARE makes a concurrent delete or update wait for
  //    the batch, so the mirror trigger then sees (and fixes) the copied row.
  step(`copying existing rows in batches of ${batchSize}`);
  // Let this session lose deadlocks against application traffic (needs superuser; best effort).
  await client.query("SET deadlock_timeout = '100ms'").catch(() => undefined);
  let copied = 0;
  let cursor: unknown[] | undefined;
  const pkList = pk.map(q).join(', ');
  for (;;) {
    const after = cursor ? `WHERE (${pkList}) > (${pk.map((_, i) => `$${i + 1}`).join(', ')})` : '';
    const res = await retryOnConflict(() => client.query<Record<string, unknown>>(
      `WITH batch AS (SELECT ${colList} FROM ${rel} ${after} ORDER BY ${pkList} LIMIT ${batchSize} FOR SHARE),
            ins AS (INSERT INTO ${twin} (${colList}) SELECT ${colList} FROM batch ON CONFLICT DO NOTHING RETURNING 1)
       SELECT (SELECT count(*) FROM batch)::int AS seen, (SELECT count(*) FROM ins)::int AS inserted,
              (SELECT row_to_json(b) FROM (SELECT ${pkList} FROM batch ORDER BY ${pk.map((c) => `${q(c)} DESC`).join(', ')} LIMIT 1) b) AS last`,
      cursor ?? [],
    ));
    const row = res.rows[0]!;
    copied += Number(row.inserted);
    if (Number(row.seen) < batchSize || !row.last) break;
    const last = row.last as Record<string, unknown>;
    cursor = pk.map((c) => last[c]);
  }
  step(`copied ${copied} rows`);

  // 4. Swap.
  step('swapping in the partitioned table');
  await client.query('BEGIN');
  try {
    await client.query(`SET LOCAL lock_timeout = '${Math.round((opts.lockTimeoutSeconds ?? 10) * 1000)}ms'`);
    await client.query(`LOCK TABLE ${rel} IN ACCESS EXCLUSIVE MODE`);
    const counts = await client.query<{ plain: string; twin: string }>(`SELECT (SELECT count(*) FROM ${rel}) AS plain, (SELECT count(*) FROM ${twin}) AS twin`);
    const { plain, twin: inTwin } = counts.rows[0]!;
    if (plain !== inTwin) throw new AdoptError(`row counts differ after copy (plain ${plain}, partitioned ${inTwin}); nothing swapped`);
    await client.query(`DROP TRIGGER outbox_adopt_sync ON ${rel}`);
    await client.query(`DROP FUNCTION ${fn}()`);
    await client.query(`ALTER TABLE ${rel} RENAME TO ${q(backupName)}`);
    for (const ix of indexes) await client.query(`ALTER INDEX ${q(schema)}.${q(ix.name)} RENAME TO ${q(`${ix.name.slice(0, 50)}_unpart`)}`);
    await client.query(`ALTER TABLE ${twin} RENAME TO ${q(name)}`);
    for (const r of twinIndexNames) await client.query(`ALTER INDEX ${q(schema)}.${q(r.from)} RENAME TO ${q(r.to)}`);
    for (const s of ownedSequences) await client.query(`ALTER SEQUENCE ${s.seq} OWNED BY ${rel}.${q(s.col)}`);
    for (const def of triggers) await client.query(def);
    if (rls.on) await client.query(`ALTER TABLE ${rel} ENABLE ROW LEVEL SECURITY`);
    if (rls.forced) await client.query(`ALTER TABLE ${rel} FORCE ROW LEVEL SECURITY`);
    for (const def of policies) await client.query(def);
    await client.query(`REVOKE ALL ON ${rel} FROM PUBLIC`);
    for (const def of grants) await client.query(def);
    await client.query(`ALTER TABLE ${rel} OWNER TO ${q(rls.owner)}`);
    // The backup must not keep firing the outbox's triggers if someone writes to it by mistake.
    await client.query(`ALTER TABLE ${q(schema)}.${q(backupName)} DISABLE TRIGGER USER`);
    await client.query('COMMIT');
    step(`done: ${schema}.${name} is partitioned; the plain table is kept as ${schema}.${backupName}`);
    return { table: `${schema}.${name}`, copiedRows: copied, rowsAtSwap: Number(plain), partitions, backupTable: `${schema}.${backupName}` };
  } catch (err) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw err instanceof AdoptError ? err : new AdoptError(`swap failed and was rolled back (the mirror keeps running; rerun adopt): ${(err as Error).message}`, { cause: err });
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
