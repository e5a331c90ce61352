-- Partition maintenance (plan, Epic H): a registry of managed tables and the primitives
-- the rotation service calls. Every primitive is SECURITY DEFINER and only acts on tables
-- in the registry, so the daemon (app_background) rotates without owning the tables.
-- Identifiers come from the catalog (regclass) or are validated, and are quoted with %I.

CREATE TABLE IF NOT EXISTS outbox_dispatcher.managed_partitions (
  table_schema       text    NOT NULL DEFAULT 'public',
  table_name         text    NOT NULL,
  partition_column   text    NOT NULL,
  partition_interval text    NOT NULL DEFAULT 'monthly',
  premake_months     integer NOT NULL DEFAULT 3,
  retention_months   integer NOT NULL DEFAULT 6,
  retention_mode     text    NOT NULL DEFAULT 'drop',
  -- When set, rows whose status_column is in blocking_statuses keep a partition from retiring.
  status_column      text,
  blocking_statuses  text[]  NOT NULL DEFAULT '{}',
  CONSTRAINT managed_partitions_pkey PRIMARY KEY (table_schema, table_name),
  CONSTRAINT managed_partitions_identifiers CHECK (
    table_schema ~ '^[a-z_][a-z0-9_]{0,62}$'
    AND table_name ~ '^[a-z_][a-z0-9_]{0,47}$'
    AND partition_column ~ '^[a-z_][a-z0-9_]{0,62}$'
    AND (status_column IS NULL OR status_column ~ '^[a-z_][a-z0-9_]{0,62}$')),
  CONSTRAINT managed_partitions_interval CHECK (partition_interval = 'monthly'),
  CONSTRAINT managed_partitions_premake CHECK (premake_months BETWEEN 1 AND 36),
  CONSTRAINT managed_partitions_retention CHECK (retention_months BETWEEN 1 AND 1200),
  CONSTRAINT managed_partitions_mode CHECK (retention_mode IN ('drop', 'detach'))
);
REVOKE ALL ON outbox_dispatcher.managed_partitions FROM PUBLIC;
GRANT SELECT ON outbox_dispatcher.managed_partitions TO app_background;

INSERT INTO outbox_dispatcher.managed_partitions
  (table_schema, table_name, partition_column, premake_months, retention_months, retention_mode, status_column, blocking_statuses)
VALUES ('public', 'capacity_outbox', 'created_at', 3, 6, 'drop', 'status', '{pending,processing,dead}')
ON CONFLICT DO NOTHING;

-- The registry row of a managed table ('name' or 'schema.name'), or an error.
CREATE OR REPLACE FUNCTION outbox_dispatcher.managed_table(p_table text)
RETURNS outbox_dispatcher.managed_partitions
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  reg outbox_dispatcher.managed_partitions;
  want_schema text := CASE WHEN position('.' IN p_table) > 0 THEN split_part(p_table, '.', 1) ELSE 'public' END;
  want_name   text := CASE WHEN position('.' IN p_table) > 0 THEN split_part(p_table, '.', 2) ELSE p_table END;
BEGIN
  SELECT * INTO reg FROM outbox_dispatcher.managed_partitions m
  WHERE m.table_schema = want_schema AND m.table_name = want_name;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'table % is not registered in outbox_dispatcher.managed_partitions', quote_literal(p_table)
      USING ERRCODE = 'undefined_table';
  END IF;
  RETURN reg;
END
$$;

-- Every partition of a managed table with its range (UTC), size, estimated rows and, when
-- the table has a status column, the rows that block retirement by status.
CREATE OR REPLACE FUNCTION outbox_dispatcher.partition_report(p_table text)
RETURNS TABLE (
  partition_name text,
  lower_bound    timestamptz,
  upper_bound    timestamptz,
  is_default     boolean,
  estimated_rows bigint,
  size_bytes     bigint,
  blocking       jsonb
)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET "TimeZone" = 'UTC'
AS $$
DECLARE
  reg outbox_dispatcher.managed_partitions := outbox_dispatcher.managed_table(p_table);
  parent regclass := to_regclass(format('%I.%I', reg.table_schema, reg.table_name));
  child record;
  bound text;
BEGIN
  IF parent IS NULL THEN
    RAISE EXCEPTION 'managed table %.% does not exist', reg.table_schema, reg.table_name USING ERRCODE = 'undefined_table';
  END IF;
  FOR child IN
    SELECT c.oid, c.relname, c.reltuples, pg_get_expr(c.relpartbound, c.oid) AS expr
    FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = parent
    ORDER BY c.relname
  LOOP
    partition_name := child.relname;
    bound := child.expr;
    is_default := bound = 'DEFAULT';
    lower_bound := NULLIF(substring(bound FROM 'FROM \(''([^'']+)''\)'), '')::timestamptz;
    upper_bound := NULLIF(substring(bound FROM 'TO \(''([^'']+)''\)'), '')::timestamptz;
    estimated_rows := greatest(child.reltuples, 0)::bigint;
    size_bytes := pg_total_relation_size(child.oid);
    blocking := '{}'::jsonb;
    IF reg.status_column IS NOT NULL AND cardinality(reg.blocking_statuses) > 0 THEN
      EXECUTE format('SELECT coalesce(jsonb_object_agg(s, n), ''{}'') FROM (SELECT %I AS s, count(*) AS n FROM %I.%I WHERE %I = ANY($1) GROUP BY 1) x',
                     reg.status_column, reg.table_schema, child.relname, reg.status_column)
        INTO blocking USING reg.blocking_statuses;
    END IF;
    RETURN NEXT;
  END LOOP;
END
$$;

-- Rows sitting in the default partition, by UTC month of the partition column.
CREATE OR REPLACE FUNCTION outbox_dispatcher.partition_default_rows(p_table text)
RETURNS TABLE (month date, row_count bigint)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  reg outbox_dispatcher.managed_partitions := outbox_dispatcher.managed_table(p_table);
  default_name text := reg.table_name || '_default';
BEGIN
  IF to_regclass(format('%I.%I', reg.table_schema, default_name)) IS NULL THEN
    RETURN;
  END IF;
  RETURN QUERY EXECUTE format(
    'SELECT date_trunc(''month'', %I AT TIME ZONE ''UTC'')::date, count(*) FROM %I.%I GROUP BY 1 ORDER BY 1',
    reg.partition_column, reg.table_schema, default_name);
END
$$;

-- Creates the default partition if missing. Returns the statements (executed unless dry run).
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
    EXECUTE stmt;
  END IF;
  RETURN ARRAY[stmt];
END
$$;

-- Creates the monthly partition for p_month. Rows already in the default partition for that
-- month are moved into it in the same transaction (out of the default, partition created,
-- re-inserted through the parent so its triggers see them), which is what lets creation
-- succeed instead of failing with "updated partition constraint for default partition
-- would be violated". Returns the statements (executed unless dry run); empty if it exists.
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
  lower_bound timestamptz := date_trunc('month', p_month)::timestamp AT TIME ZONE 'UTC';
  upper_bound timestamptz := (date_trunc('month', p_month) + interval '1 month')::timestamp AT TIME ZONE 'UTC';
  cols text;
  stash text := 'outbox_partition_move';
  stmts text[] := '{}';
  waiting bigint := 0;
  moved bigint;
  s text;
BEGIN
  IF parent IS NULL OR (SELECT relkind FROM pg_class WHERE oid = parent) <> 'p' THEN
    RAISE EXCEPTION '%.% is not a partitioned table (convert it with: outbox-dispatcher partitions adopt)',
      reg.table_schema, reg.table_name USING ERRCODE = 'wrong_object_type';
  END IF;
  IF to_regclass(format('%I.%I', reg.table_schema, child_name)) IS NOT NULL THEN
    RETURN stmts;
  END IF;
  IF to_regclass(format('%I.%I', reg.table_schema, default_name)) IS NOT NULL THEN
    EXECUTE format('SELECT count(*) FROM %I.%I WHERE %I >= $1 AND %I < $2',
                   reg.table_schema, default_name, reg.partition_column, reg.partition_column)
      INTO waiting USING lower_bound, upper_bound;
  END IF;
  IF waiting > 0 THEN
    SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) INTO cols
    FROM pg_attribute a WHERE a.attrelid = parent AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '';
    stmts := stmts || format('LOCK TABLE %I.%I IN SHARE ROW EXCLUSIVE MODE', reg.table_schema, default_name);
    stmts := stmts || format('CREATE TEMP TABLE %I ON COMMIT DROP AS WITH moved AS (DELETE FROM %I.%I WHERE %I >= %L AND %I < %L RETURNING *) SELECT * FROM moved',
                             stash, reg.table_schema, default_name, reg.partition_column, lower_bound, reg.partition_column, upper_bound);
  END IF;
  stmts := stmts || outbox_dispatcher.monthly_partition_ddl(parent, p_month);
  IF waiting > 0 THEN
    stmts := stmts || format('INSERT INTO %I.%I (%s) OVERRIDING SYSTEM VALUE SELECT %s FROM %I',
                             reg.table_schema, reg.table_name, cols, cols, stash);
    stmts := stmts || format('DROP TABLE %I', stash);
  END IF;
  IF NOT p_dry_run THEN
    FOREACH s IN ARRAY stmts LOOP
      EXECUTE s;
    END LOOP;
    IF waiting > 0 THEN
      -- Every moved row must have arrived (a row dropped by a trigger would be lost).
      EXECUTE format('SELECT count(*) FROM %I.%I', reg.table_schema, child_name) INTO moved;
      IF moved < waiting THEN
        RAISE EXCEPTION 'moving % rows out of %.% into % arrived with only % rows; rolled back',
          waiting, reg.table_schema, default_name, child_name, moved;
      END IF;
    END IF;
  END IF;
  RETURN stmts;
END
$$;

-- Retires one partition wholly older than the table's retention window: detach, then drop
-- or keep (retention_mode). Refuses while it holds rows in a blocking status (undelivered
-- events). The window is measured from the database clock, clamped so a caller's clock
-- can never retire more than the database itself would tomorrow.
CREATE OR REPLACE FUNCTION outbox_dispatcher.partition_retire(p_table text, p_partition text, p_now timestamptz, p_dry_run boolean)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET "TimeZone" = 'UTC'
SET lock_timeout = '5s'
AS $$
DECLARE
  reg outbox_dispatcher.managed_partitions := outbox_dispatcher.managed_table(p_table);
  parent regclass := to_regclass(format('%I.%I', reg.table_schema, reg.table_name));
  effective_now timestamptz := least(p_now, now() + interval '1 day');
  cutoff timestamptz := (date_trunc('month', effective_now) - make_interval(months => reg.retention_months));
  info record;
  blocking jsonb := '{}';
  stmts text[] := '{}';
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
  IF NOT p_dry_run THEN
    -- Lock first, then count: nothing can become undelivered between the check and the detach.
    EXECUTE format('LOCK TABLE %I.%I IN ACCESS EXCLUSIVE MODE', reg.table_schema, reg.table_name);
  END IF;
  IF reg.status_column IS NOT NULL AND cardinality(reg.blocking_statuses) > 0 THEN
    EXECUTE format('SELECT coalesce(jsonb_object_agg(s, n), ''{}'') FROM (SELECT %I AS s, count(*) AS n FROM %I.%I WHERE %I = ANY($1) GROUP BY 1) x',
                   reg.status_column, reg.table_schema, p_partition, reg.status_column)
      INTO blocking USING reg.blocking_statuses;
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

REVOKE ALL ON FUNCTION outbox_dispatcher.managed_table(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION outbox_dispatcher.partition_report(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION outbox_dispatcher.partition_default_rows(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION outbox_dispatcher.partition_ensure_default(text, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION outbox_dispatcher.partition_create(text, date, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION outbox_dispatcher.partition_retire(text, text, timestamptz, boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION outbox_dispatcher.partition_report(text) TO app_background;
GRANT EXECUTE ON FUNCTION outbox_dispatcher.partition_default_rows(text) TO app_background;
GRANT EXECUTE ON FUNCTION outbox_dispatcher.partition_ensure_default(text, boolean) TO app_background;
GRANT EXECUTE ON FUNCTION outbox_dispatcher.partition_create(text, date, boolean) TO app_background;
GRANT EXECUTE ON FUNCTION outbox_dispatcher.partition_retire(text, text, timestamptz, boolean) TO app_background;
