-- Who may see the outbox for maintenance, who owns its partitions, and how partition DDL
-- takes its locks (docs/adr/0008-maintenance-visibility-and-ddl-locks.md).

---------------------------------------------------------------------------------------
-- The table owner sees and writes every row. capacity_outbox has FORCE ROW LEVEL
-- SECURITY (0002) and, until now, no policy for its owner: a non-superuser owner saw zero
-- rows, so `partitions adopt` copied nothing and the runbooks' SQL found nothing. FORCE only
-- ever applies to the owner, who may switch RLS off anyway; an explicit policy keeps that
-- visible in pg_policy instead of depending on NO FORCE. Members of the owner role (a
-- human's login granted the owner role) inherit it. The policy names the owner at the
-- time of migration; after transferring ownership, ALTER POLICY ... TO the new owner
-- (runbooks/rls.md). Superusers bypass RLS, so for a superuser owner this is inert.
---------------------------------------------------------------------------------------
DO $$
DECLARE
  owner_name name := (SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = 'public.capacity_outbox'::regclass);
BEGIN
  EXECUTE 'DROP POLICY IF EXISTS capacity_outbox_owner ON public.capacity_outbox';
  EXECUTE format('CREATE POLICY capacity_outbox_owner ON public.capacity_outbox AS PERMISSIVE FOR ALL TO %I USING (true) WITH CHECK (true)', owner_name);
END
$$;

---------------------------------------------------------------------------------------
-- Lock discipline for every DDL primitive:
--   * never wait indefinitely: when the caller set no lock_timeout, 2 s applies to the
--     rest of the transaction (the rotator sets its own, shorter, with SET LOCAL);
--     a timeout raises 55P03 and the caller retries on a later run;
--   * lock the parent before any partition, the order a claim or producer takes them,
--     so DDL and DML can wait for each other but never deadlock.
---------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION outbox_dispatcher.partition_default_lock_timeout()
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog
AS $$
BEGIN
  IF current_setting('lock_timeout') IN ('0', '0ms', '0s') THEN
    PERFORM set_config('lock_timeout', '2s', true);
  END IF;
END
$$;
REVOKE ALL ON FUNCTION outbox_dispatcher.partition_default_lock_timeout() FROM PUBLIC;

-- Hands a partition the definer created to the owner of its parent, so retirement (DETACH,
-- DROP) and the owner's own maintenance keep working whoever ran the DDL.
CREATE OR REPLACE FUNCTION outbox_dispatcher.partition_align_owner(p_parent regclass, p_child regclass)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog
AS $$
DECLARE
  want oid := (SELECT relowner FROM pg_class WHERE oid = p_parent);
BEGIN
  IF (SELECT relowner FROM pg_class WHERE oid = p_child) <> want THEN
    EXECUTE format('ALTER TABLE %s OWNER TO %I', p_child, pg_get_userbyid(want));
  END IF;
END
$$;
REVOKE ALL ON FUNCTION outbox_dispatcher.partition_align_owner(regclass, regclass) FROM PUBLIC;

-- Creates the default partition if missing (ACCESS EXCLUSIVE on the parent, bounded by
-- lock_timeout). Returns the statements (executed unless dry run).
CREATE OR REPLACE FUNCTION outbox_dispatcher.partition_ensure_default(p_table text, p_dry_run boolean)
RETURNS text[]
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  reg outbox_dispatcher.managed_partitions := outbox_dispatcher.managed_table(p_table);
  stmt text;
BEGIN
  IF to_regclass(format('%I.%I', reg.table_schema, reg.table_name || '_default')) IS NOT NULL THEN
    RETURN '{}';
  END IF;
  stmt := format('CREATE TABLE %I.%I PARTITION OF %I.%I DEFAULT',
                 reg.table_schema, reg.table_name || '_default', reg.table_schema, reg.table_name);
  IF NOT p_dry_run THEN
    PERFORM outbox_dispatcher.partition_default_lock_timeout();
    EXECUTE stmt;
    PERFORM outbox_dispatcher.partition_align_owner(format('%I.%I', reg.table_schema, reg.table_name)::regclass,
                                                    format('%I.%I', reg.table_schema, reg.table_name || '_default')::regclass);
  END IF;
  RETURN ARRAY[stmt];
END
$$;

-- Creates the monthly partition for p_month without blocking producers:
--   1. CREATE TABLE <child> (LIKE <parent> ...): a plain, empty table; no lock on the parent
--      beyond a read;
--   2. LOCK ONLY <parent> IN SHARE UPDATE EXCLUSIVE (what ATTACH needs; it does not conflict
--      with INSERT/UPDATE/DELETE), then <default> IN ACCESS EXCLUSIVE: parent before partition;
--   3. rows already in the default partition for that month are moved out (DELETE ...
--      RETURNING into a temp table), the child is attached, and the rows are inserted into the
--      child directly (its cloned row triggers, e.g. dedupe keys, see them; the partition has
--      no RLS of its own, so no policy can hide or refuse them), then counted.
-- Producers writing current months never wait: only the default partition is locked
-- exclusively, and only for the move. Returns the statements (executed unless dry run).
CREATE OR REPLACE FUNCTION outbox_dispatcher.partition_create(p_table text, p_month date, p_dry_run boolean)
RETURNS text[]
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET "TimeZone" = 'UTC'
AS $$
DECLARE
  reg outbox_dispatcher.managed_partitions := outbox_dispatcher.managed_table(p_table);
  parent regclass := to_regclass(format('%I.%I', reg.table_schema, reg.table_name));
  child_name text := outbox_dispatcher.monthly_partition_name(reg.table_name, p_month);
  default_name text := reg.table_name || '_default';
  has_default boolean;
  lower_bound timestamptz := date_trunc('month', p_month)::timestamp AT TIME ZONE 'UTC';
  upper_bound timestamptz := (date_trunc('month', p_month) + interval '1 month')::timestamp AT TIME ZONE 'UTC';
  cols text;
  stash text := 'outbox_partition_move';
  head text[] := '{}';
  tail text[] := '{}';
  waiting bigint := 0;
  stashed bigint;
  moved bigint;
  s text;
BEGIN
  IF parent IS NULL OR (SELECT relkind FROM pg_class WHERE oid = parent) <> 'p' THEN
    RAISE EXCEPTION '%.% is not a partitioned table (convert it with: outbox-dispatcher partitions adopt)',
      reg.table_schema, reg.table_name USING ERRCODE = 'wrong_object_type';
  END IF;
  IF to_regclass(format('%I.%I', reg.table_schema, child_name)) IS NOT NULL THEN
    RETURN '{}';
  END IF;
  has_default := to_regclass(format('%I.%I', reg.table_schema, default_name)) IS NOT NULL;
  IF NOT p_dry_run THEN
    PERFORM outbox_dispatcher.partition_default_lock_timeout();
  END IF;

  head := head || format('CREATE TABLE %I.%I (LIKE %I.%I INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE)',
                         reg.table_schema, child_name, reg.table_schema, reg.table_name);
  IF has_default THEN
    head := head || format('LOCK TABLE ONLY %I.%I IN SHARE UPDATE EXCLUSIVE MODE', reg.table_schema, reg.table_name);
    head := head || format('LOCK TABLE %I.%I IN ACCESS EXCLUSIVE MODE', reg.table_schema, default_name);
  END IF;
  IF NOT p_dry_run THEN
    FOREACH s IN ARRAY head LOOP
      EXECUTE s;
    END LOOP;
  END IF;

  -- Counted under the lock (when executing): exact, and the partition has no RLS to hide rows.
  IF has_default THEN
    EXECUTE format('SELECT count(*) FROM %I.%I WHERE %I >= $1 AND %I < $2',
                   reg.table_schema, default_name, reg.partition_column, reg.partition_column)
      INTO waiting USING lower_bound, upper_bound;
  END IF;
  IF waiting > 0 THEN
    SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) INTO cols
    FROM pg_attribute a WHERE a.attrelid = parent AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '';
    tail := tail || format('CREATE TEMP TABLE %I ON COMMIT DROP AS WITH moved AS (DELETE FROM %I.%I WHERE %I >= %L AND %I < %L RETURNING *) SELECT * FROM moved',
                           stash, reg.table_schema, default_name, reg.partition_column, lower_bound, reg.partition_column, upper_bound);
  END IF;
  tail := tail || format('ALTER TABLE %I.%I ATTACH PARTITION %I.%I FOR VALUES FROM (%L) TO (%L)',
                         reg.table_schema, reg.table_name, reg.table_schema, child_name,
                         to_char(lower_bound, 'YYYY-MM-DD HH24:MI:SS"+00"'), to_char(upper_bound, 'YYYY-MM-DD HH24:MI:SS"+00"'));
  IF waiting > 0 THEN
    tail := tail || format('INSERT INTO %I.%I (%s) OVERRIDING SYSTEM VALUE SELECT %s FROM %I',
                           reg.table_schema, child_name, cols, cols, stash);
  END IF;
  IF p_dry_run THEN
    RETURN head || tail;
  END IF;

  FOREACH s IN ARRAY tail LOOP
    EXECUTE s;
  END LOOP;
  IF waiting > 0 THEN
    -- Every moved row must have arrived (a row dropped by a trigger would be lost).
    EXECUTE format('SELECT count(*) FROM %I', stash) INTO stashed;
    EXECUTE format('SELECT count(*) FROM %I.%I', reg.table_schema, child_name) INTO moved;
    IF stashed <> waiting OR moved <> waiting THEN
      RAISE EXCEPTION 'moving % rows out of %.% into % arrived with % rows (% taken out); rolled back',
        waiting, reg.table_schema, default_name, child_name, moved, stashed;
    END IF;
    EXECUTE format('DROP TABLE %I', stash);
    tail := tail || format('DROP TABLE %I', stash);
  END IF;
  PERFORM outbox_dispatcher.partition_align_owner(parent, format('%I.%I', reg.table_schema, child_name)::regclass);
  RETURN head || tail;
END
$$;

-- Retires one partition wholly older than the table's retention window (see 0003). Blocking
-- rows are counted before any lock, so a partition that is blocked (the usual case until its
-- events are delivered) costs no exclusive lock every run; when it looks clear, the parent and
-- then the partition are locked (bounded by lock_timeout), counted again, and detached.
CREATE OR REPLACE FUNCTION outbox_dispatcher.partition_retire(p_table text, p_partition text, p_now timestamptz, p_dry_run boolean)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET "TimeZone" = 'UTC'
AS $$
DECLARE
  reg outbox_dispatcher.managed_partitions := outbox_dispatcher.managed_table(p_table);
  effective_now timestamptz := least(p_now, now() + interval '1 day');
  cutoff timestamptz := (date_trunc('month', effective_now) - make_interval(months => reg.retention_months));
  info record;
  blocking jsonb := '{}';
  stmts text[] := '{}';
  count_sql text;
  s text;
BEGIN
  SELECT r.* INTO info FROM outbox_dispatcher.partition_report(p_table) r WHERE r.partition_name = p_partition;
  IF NOT FOUND THEN
    RAISE EXCEPTION '% is not a partition of %.%', quote_literal(p_partition), reg.table_schema, reg.table_name
      USING ERRCODE = 'undefined_table';
  END IF;
  IF info.is_default OR info.upper_bound IS NULL OR info.upper_bound > cutoff THEN
    RETURN jsonb_build_object('result', 'kept', 'reason', format('not wholly older than the %s-month window (cutoff %s)', reg.retention_months, cutoff));
  END IF;
  stmts := stmts || format('ALTER TABLE %I.%I DETACH PARTITION %I.%I', reg.table_schema, reg.table_name, reg.table_schema, p_partition);
  IF reg.retention_mode = 'drop' THEN
    stmts := stmts || format('DROP TABLE %I.%I', reg.table_schema, p_partition);
  END IF;
  IF reg.status_column IS NOT NULL AND cardinality(reg.blocking_statuses) > 0 THEN
    count_sql := format('SELECT coalesce(jsonb_object_agg(s, n), ''{}'') FROM (SELECT %I AS s, count(*) AS n FROM %I.%I WHERE %I = ANY($1) GROUP BY 1) x',
                        reg.status_column, reg.table_schema, p_partition, reg.status_column);
    EXECUTE count_sql INTO blocking USING reg.blocking_statuses;
  END IF;
  IF blocking = '{}'::jsonb AND NOT p_dry_run THEN
    PERFORM outbox_dispatcher.partition_default_lock_timeout();
    -- Lock, then count again: nothing can become undelivered between the check and the detach.
    EXECUTE format('LOCK TABLE ONLY %I.%I IN ACCESS EXCLUSIVE MODE', reg.table_schema, reg.table_name);
    EXECUTE format('LOCK TABLE %I.%I IN ACCESS EXCLUSIVE MODE', reg.table_schema, p_partition);
    IF count_sql IS NOT NULL THEN
      EXECUTE count_sql INTO blocking USING reg.blocking_statuses;
    END IF;
  END IF;
  IF blocking <> '{}'::jsonb THEN
    RETURN jsonb_build_object('result', 'blocked', 'blocking', blocking, 'statements', to_jsonb(stmts));
  END IF;
  IF NOT p_dry_run THEN
    FOREACH s IN ARRAY stmts LOOP
      EXECUTE s;
    END LOOP;
  END IF;
  RETURN jsonb_build_object('result', CASE WHEN p_dry_run THEN 'planned' ELSE 'retired' END, 'mode', reg.retention_mode, 'statements', to_jsonb(stmts));
END
$$;

REVOKE ALL ON FUNCTION outbox_dispatcher.partition_ensure_default(text, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION outbox_dispatcher.partition_create(text, date, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION outbox_dispatcher.partition_retire(text, text, timestamptz, boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION outbox_dispatcher.partition_ensure_default(text, boolean) TO app_background;
GRANT EXECUTE ON FUNCTION outbox_dispatcher.partition_create(text, date, boolean) TO app_background;
GRANT EXECUTE ON FUNCTION outbox_dispatcher.partition_retire(text, text, timestamptz, boolean) TO app_background;

-- Partitions created before this migration by someone other than the table's owner (a
-- superuser's `partitions adopt`) are handed to the owner, so they can be retired. Only a
-- superuser (or a member of both roles) may do that; otherwise it is left with a warning.
DO $$
DECLARE
  r record;
BEGIN
  FOR r IN
    SELECT i.inhparent AS parent, i.inhrelid AS child
    FROM outbox_dispatcher.managed_partitions m
    JOIN pg_class p ON p.oid = to_regclass(format('%I.%I', m.table_schema, m.table_name)) AND p.relkind = 'p'
    JOIN pg_inherits i ON i.inhparent = p.oid
    JOIN pg_class c ON c.oid = i.inhrelid
    WHERE c.relowner <> p.relowner
  LOOP
    BEGIN
      PERFORM outbox_dispatcher.partition_align_owner(r.parent::regclass, r.child::regclass);
    EXCEPTION WHEN insufficient_privilege THEN
      RAISE WARNING 'partition % is not owned by the owner of %; as a superuser run: ALTER TABLE % OWNER TO %',
        r.child::regclass, r.parent::regclass, r.child::regclass, quote_ident(pg_get_userbyid((SELECT relowner FROM pg_class WHERE oid = r.parent)));
    END;
  END LOOP;
END
$$;
