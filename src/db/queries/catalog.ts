import pg from 'pg';

// Catalog reads (pg_class, pg_attribute, pg_index, pg_trigger, pg_policy, ACLs) for
// `partitions adopt` (src/partitions/adopt.ts): what a table is, so adopt can rebuild it.

/** The trigger adopt installs on the plain table to mirror writes into the twin. */
export const MIRROR_TRIGGER = 'outbox_adopt_sync';

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

export async function currentUser(c: pg.ClientBase): Promise<string> {
  return (await c.query<{ u: string }>('SELECT current_user AS u')).rows[0]!.u;
}
