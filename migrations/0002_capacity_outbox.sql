-- capacity_outbox: the transactional outbox, range-partitioned by month on created_at.
-- Producer contract: INSERT INTO capacity_outbox (restaurant_id, event_type, payload,
-- dedupe_key, idempotency_key) VALUES (...) in the producer's own transaction.

CREATE TABLE IF NOT EXISTS public.capacity_outbox (
  id              uuid        NOT NULL DEFAULT gen_random_uuid(),
  restaurant_id   uuid        NOT NULL,
  event_type      text        NOT NULL,
  payload         jsonb       NOT NULL DEFAULT '{}'::jsonb,
  dedupe_key      text,
  idempotency_key text,
  status          text        NOT NULL DEFAULT 'pending',
  attempts        integer     NOT NULL DEFAULT 0,
  next_attempt_at timestamptz NOT NULL DEFAULT now(),
  locked_by       text,
  locked_until    timestamptz,
  last_error      text,
  created_at      timestamptz NOT NULL DEFAULT now(),
  dispatched_at   timestamptz,
  CONSTRAINT capacity_outbox_pkey PRIMARY KEY (id, created_at),
  CONSTRAINT capacity_outbox_status_check CHECK (status IN ('pending', 'processing', 'done', 'dead')),
  CONSTRAINT capacity_outbox_attempts_check CHECK (attempts >= 0)
) PARTITION BY RANGE (created_at);

-- A team adopting the daemon may already have a plain (unpartitioned) capacity_outbox.
-- Bring its columns up to the contract here; `outbox-dispatcher partitions adopt` converts
-- it to the partitioned layout online afterwards (runbooks/partitions.md).
DO $$
BEGIN
  IF (SELECT relkind FROM pg_class WHERE oid = 'public.capacity_outbox'::regclass) = 'r' THEN
    ALTER TABLE public.capacity_outbox
      ADD COLUMN IF NOT EXISTS dedupe_key      text,
      ADD COLUMN IF NOT EXISTS idempotency_key text,
      ADD COLUMN IF NOT EXISTS status          text        NOT NULL DEFAULT 'pending',
      ADD COLUMN IF NOT EXISTS attempts        integer     NOT NULL DEFAULT 0,
      ADD COLUMN IF NOT EXISTS next_attempt_at timestamptz NOT NULL DEFAULT now(),
      ADD COLUMN IF NOT EXISTS locked_by       text,
      ADD COLUMN IF NOT EXISTS locked_until    timestamptz,
      ADD COLUMN IF NOT EXISTS last_error      text,
      ADD COLUMN IF NOT EXISTS created_at      timestamptz NOT NULL DEFAULT now(),
      ADD COLUMN IF NOT EXISTS dispatched_at   timestamptz;
  END IF;
END
$$;

-- The claim query walks this index: status = 'pending' AND next_attempt_at <= now()
-- ORDER BY next_attempt_at. While an event is 'processing', next_attempt_at holds its
-- lease expiry, so the lease rescuer walks the same index.
CREATE INDEX IF NOT EXISTS capacity_outbox_dispatch_idx
  ON public.capacity_outbox (status, next_attempt_at);


---------------------------------------------------------------------------------------
-- Monthly partitions: naming and creation live here, in one place, for the
-- migration, the daemon and the partition tooling alike.
---------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION outbox_dispatcher.monthly_partition_name(p_parent text, p_month date)
RETURNS text
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog
AS $$
BEGIN
  IF p_parent IS NULL OR p_parent !~ '^[a-z_][a-z0-9_]{0,53}$' THEN
    RAISE EXCEPTION 'invalid partitioned table name %', quote_literal(coalesce(p_parent, '<null>'))
      USING ERRCODE = 'invalid_name';
  END IF;
  RETURN p_parent || '_p' || to_char(date_trunc('month', p_month), 'YYYY_MM');
END
$$;

-- The exact CREATE statement for the partition holding [month, month + 1) in UTC.
CREATE OR REPLACE FUNCTION outbox_dispatcher.monthly_partition_ddl(p_parent regclass, p_month date)
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog
AS $$
DECLARE
  parent_schema text;
  parent_name   text;
  lower_bound   timestamp := date_trunc('month', p_month);
BEGIN
  SELECT n.nspname, c.relname INTO parent_schema, parent_name
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE c.oid = p_parent AND c.relkind = 'p';
  IF parent_name IS NULL THEN
    RAISE EXCEPTION '% is not a partitioned table', p_parent USING ERRCODE = 'wrong_object_type';
  END IF;
  RETURN format('CREATE TABLE %I.%I PARTITION OF %I.%I FOR VALUES FROM (%L) TO (%L)',
    parent_schema, outbox_dispatcher.monthly_partition_name(parent_name, p_month), parent_schema, parent_name,
    to_char(lower_bound, 'YYYY-MM-DD HH24:MI:SS"+00"'),
    to_char(lower_bound + interval '1 month', 'YYYY-MM-DD HH24:MI:SS"+00"'));
END
$$;

-- Creates the partition holding [month, month + 1) in UTC if it does not exist.
-- Returns true when it created it.
CREATE OR REPLACE FUNCTION outbox_dispatcher.ensure_monthly_partition(p_parent regclass, p_month date)
RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog
AS $$
DECLARE
  parent_name text := (SELECT relname FROM pg_class WHERE oid = p_parent);
BEGIN
  IF EXISTS (SELECT 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = p_parent AND c.relname = outbox_dispatcher.monthly_partition_name(parent_name, p_month)) THEN
    RETURN false;
  END IF;
  EXECUTE outbox_dispatcher.monthly_partition_ddl(p_parent, p_month);
  RETURN true;
END
$$;
REVOKE ALL ON FUNCTION outbox_dispatcher.ensure_monthly_partition(regclass, date) FROM PUBLIC;
REVOKE ALL ON FUNCTION outbox_dispatcher.monthly_partition_ddl(regclass, date) FROM PUBLIC;

-- Current month and the next two (UTC), and a default partition so that a row whose month
-- has no partition yet lands there instead of failing the producer. Rotation keeps the
-- window moving later. (Skipped for a plain table awaiting `partitions adopt`.)
DO $$
BEGIN
  IF (SELECT relkind FROM pg_class WHERE oid = 'public.capacity_outbox'::regclass) = 'p' THEN
    CREATE TABLE IF NOT EXISTS public.capacity_outbox_default PARTITION OF public.capacity_outbox DEFAULT;
    PERFORM outbox_dispatcher.ensure_monthly_partition('public.capacity_outbox'::regclass,
              (date_trunc('month', now() AT TIME ZONE 'UTC') + make_interval(months => m))::date)
    FROM generate_series(0, 2) AS m;
  END IF;
END
$$;

---------------------------------------------------------------------------------------
-- Dedupe of active events (see docs/adr/0001-active-event-dedupe.md).
-- A unique index on the partitioned table would have to include created_at and so
-- could not dedupe across months; one unpartitioned key table can.
---------------------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS outbox_dispatcher.capacity_outbox_active_keys (
  restaurant_id    uuid        NOT NULL,
  event_type       text        NOT NULL,
  dedupe_key       text        NOT NULL,
  idempotency_key  text        NOT NULL,
  event_id         uuid        NOT NULL,
  event_created_at timestamptz NOT NULL,
  CONSTRAINT capacity_outbox_active_keys_pkey
    PRIMARY KEY (restaurant_id, event_type, dedupe_key, idempotency_key),
  CONSTRAINT capacity_outbox_active_keys_event_key UNIQUE (event_id)
);
REVOKE ALL ON outbox_dispatcher.capacity_outbox_active_keys FROM PUBLIC;

-- Takes the key for a row becoming active (insert, or replay of a dead event).
-- Returning NULL drops the row: the producer's INSERT succeeds with zero rows
-- (RETURNING yields nothing) instead of aborting its transaction. Concurrent
-- producers of one key serialise on the key's unique index entry.
CREATE OR REPLACE FUNCTION outbox_dispatcher.capacity_outbox_acquire_key()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  INSERT INTO outbox_dispatcher.capacity_outbox_active_keys
    (restaurant_id, event_type, dedupe_key, idempotency_key, event_id, event_created_at)
  VALUES (NEW.restaurant_id, NEW.event_type, COALESCE(NEW.dedupe_key, ''),
          COALESCE(NEW.idempotency_key, ''), NEW.id, NEW.created_at)
  ON CONFLICT (restaurant_id, event_type, dedupe_key, idempotency_key) DO NOTHING;
  IF FOUND THEN
    RETURN NEW;
  END IF;
  RETURN NULL;
END
$$;

-- Frees the key once the event is done or dead (or deleted) so it can be reused.
CREATE OR REPLACE FUNCTION outbox_dispatcher.capacity_outbox_release_key()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  DELETE FROM outbox_dispatcher.capacity_outbox_active_keys WHERE event_id = OLD.id;
  RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION outbox_dispatcher.capacity_outbox_acquire_key() FROM PUBLIC;
REVOKE ALL ON FUNCTION outbox_dispatcher.capacity_outbox_release_key() FROM PUBLIC;

DROP TRIGGER IF EXISTS capacity_outbox_dedupe_insert ON public.capacity_outbox;
CREATE TRIGGER capacity_outbox_dedupe_insert
  BEFORE INSERT ON public.capacity_outbox
  FOR EACH ROW
  WHEN (NEW.status IN ('pending', 'processing')
        AND (NEW.dedupe_key IS NOT NULL OR NEW.idempotency_key IS NOT NULL))
  EXECUTE FUNCTION outbox_dispatcher.capacity_outbox_acquire_key();

DROP TRIGGER IF EXISTS capacity_outbox_dedupe_reactivate ON public.capacity_outbox;
CREATE TRIGGER capacity_outbox_dedupe_reactivate
  BEFORE UPDATE OF status ON public.capacity_outbox
  FOR EACH ROW
  WHEN (OLD.status IN ('done', 'dead') AND NEW.status IN ('pending', 'processing')
        AND (NEW.dedupe_key IS NOT NULL OR NEW.idempotency_key IS NOT NULL))
  EXECUTE FUNCTION outbox_dispatcher.capacity_outbox_acquire_key();

DROP TRIGGER IF EXISTS capacity_outbox_dedupe_release ON public.capacity_outbox;
CREATE TRIGGER capacity_outbox_dedupe_release
  AFTER UPDATE OF status ON public.capacity_outbox
  FOR EACH ROW
  WHEN (OLD.status IN ('pending', 'processing') AND NEW.status IN ('done', 'dead')
        AND (OLD.dedupe_key IS NOT NULL OR OLD.idempotency_key IS NOT NULL))
  EXECUTE FUNCTION outbox_dispatcher.capacity_outbox_release_key();

DROP TRIGGER IF EXISTS capacity_outbox_dedupe_delete ON public.capacity_outbox;
CREATE TRIGGER capacity_outbox_dedupe_delete
  AFTER DELETE ON public.capacity_outbox
  FOR EACH ROW
  WHEN (OLD.status IN ('pending', 'processing')
        AND (OLD.dedupe_key IS NOT NULL OR OLD.idempotency_key IS NOT NULL))
  EXECUTE FUNCTION outbox_dispatcher.capacity_outbox_release_key();

---------------------------------------------------------------------------------------
-- Wake idle workers: one NOTIFY per inserting statement; PostgreSQL folds identical
-- notifications within a transaction, so a producer transaction sends at most one.
---------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION outbox_dispatcher.capacity_outbox_notify()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
BEGIN
  PERFORM pg_notify('capacity_outbox', '');
  RETURN NULL;
END
$$;
GRANT USAGE ON SCHEMA outbox_dispatcher TO app_producer, app_background;
GRANT EXECUTE ON FUNCTION outbox_dispatcher.capacity_outbox_notify() TO app_producer, app_background;

DROP TRIGGER IF EXISTS capacity_outbox_notify_insert ON public.capacity_outbox;
CREATE TRIGGER capacity_outbox_notify_insert
  AFTER INSERT ON public.capacity_outbox
  FOR EACH STATEMENT
  EXECUTE FUNCTION outbox_dispatcher.capacity_outbox_notify();

---------------------------------------------------------------------------------------
-- Row-level security. Producers see and write only their tenant's rows.
-- app_background (the dispatcher) works across tenants while no tenant context is
-- set (claim, complete, rescue) and is narrowed to one tenant once a context is set.
---------------------------------------------------------------------------------------
ALTER TABLE public.capacity_outbox ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.capacity_outbox FORCE ROW LEVEL SECURITY;

DROP POLICY IF EXISTS capacity_outbox_producer_tenant ON public.capacity_outbox;
CREATE POLICY capacity_outbox_producer_tenant ON public.capacity_outbox
  FOR ALL TO app_producer
  USING (restaurant_id = (SELECT public.require_restaurant_context()))
  WITH CHECK (restaurant_id = (SELECT public.require_restaurant_context()));

DROP POLICY IF EXISTS capacity_outbox_background ON public.capacity_outbox;
CREATE POLICY capacity_outbox_background ON public.capacity_outbox
  FOR ALL TO app_background
  USING ((SELECT public.current_restaurant_id()) IS NULL
         OR restaurant_id = (SELECT public.current_restaurant_id()))
  WITH CHECK ((SELECT public.current_restaurant_id()) IS NULL
              OR restaurant_id = (SELECT public.current_restaurant_id()));

-- Least privilege: producers insert the contract's columns; the dispatcher reads
-- and moves events through their lifecycle columns, nothing else.
REVOKE ALL ON public.capacity_outbox FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO app_producer, app_background;
GRANT INSERT (restaurant_id, event_type, payload, dedupe_key, idempotency_key)
  ON public.capacity_outbox TO app_producer;
GRANT SELECT ON public.capacity_outbox TO app_producer;
GRANT SELECT ON public.capacity_outbox TO app_background;
GRANT UPDATE (status, attempts, next_attempt_at, locked_by, locked_until, last_error, dispatched_at)
  ON public.capacity_outbox TO app_background;

-- The daemon checks at start-up that the schema is current.
GRANT SELECT ON outbox_dispatcher.schema_migrations TO app_background;
