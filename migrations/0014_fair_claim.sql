-- Per-tenant fairness in the claim (docs/adr/0012-tenant-fairness.md).
--
-- The claim walked due events oldest first only, so a tenant that committed 100,000 events
-- delayed every other tenant's events until its backlog had drained. Each claim now fills a
-- share of its batch tenant by tenant ("fair lane"): starting after the tenant where the
-- previous claim's fair lane stopped, it visits tenants with pending events in restaurant_id
-- order and takes up to p_fair_per_tenant of each one's oldest due events, until it has
-- p_fair_rows events or has visited p_fair_tenants tenants; the rest of the batch is the usual
-- oldest-first walk ("head lane"). A tenant's events committed behind another tenant's backlog
-- are claimed within one rotation of the fair lane instead of after the backlog, and the
-- backlog still drains at full speed (the head lane and the fair lane both take from it).
--
-- Backlog-proof like the head lane (ADR 0006): every read is bounded by the arguments, never
-- by the number of due rows or of tenants. Finding the next tenant is one descent of a new
-- partial index (restaurant_id, next_attempt_at) WHERE status = 'pending' per partition; its
-- due events are a range of the same index, read from the claim cursor's lower bound so the
-- dead entries of events already claimed are not re-read. How the reads are kept on that
-- index whatever the statistics: see the index below.
--
-- The index costs producers one more index entry per event; a claimed event leaves it (its
-- status is no longer 'pending'), so the claim and the completion write nothing to it.
--
-- Rolling deploys: the 5-argument claim_batch (migration 0012) stays for workers of the
-- previous version; this version calls the 9-argument one.

-- The predicate is written "(status = 'pending') IS TRUE", and so are the fair lane's reads:
-- that expression is no search condition for the dispatch index (status, next_attempt_at), so
-- the planner cannot answer a tenant's read with a filtered walk of every due row there (which
-- it did with a plain "status = 'pending'": restaurant_id = $1 makes ORDER BY next_attempt_at
-- look like the dispatch index's order). Only this index matches; with sorting disabled no
-- statistics can lead elsewhere.
CREATE INDEX IF NOT EXISTS capacity_outbox_tenant_due_idx
  ON public.capacity_outbox (restaurant_id, next_attempt_at)
  WHERE (status = 'pending') IS TRUE;

CREATE OR REPLACE FUNCTION outbox_dispatcher.claim_batch(
  p_worker            text,
  p_limit             integer,
  p_lease_ms          integer,
  p_max_payload_bytes integer,
  p_after             timestamptz,
  p_tenant_after      uuid,
  p_fair_rows         integer,
  p_fair_per_tenant   integer,
  p_fair_tenants      integer)
RETURNS TABLE (
  id              uuid,
  created_at_key  text,
  created_at      timestamptz,
  restaurant_id   uuid,
  event_type      text,
  payload         jsonb,
  payload_bytes   integer,
  dedupe_key      text,
  idempotency_key text,
  headers         jsonb,
  attempts        integer,
  due_at          timestamptz,
  ordering_key    text,
  ordering_seq    bigint,
  fair            boolean,
  tenant_cursor   uuid)
LANGUAGE plpgsql VOLATILE
SECURITY INVOKER
SET search_path = pg_catalog, public
SET enable_sort = off
SET enable_bitmapscan = off
SET enable_seqscan = off
SET enable_hashjoin = off
SET enable_mergejoin = off
SET enable_material = off
AS $$
#variable_conflict use_column
DECLARE
  lo           timestamptz := COALESCE(p_after, '-infinity'::timestamptz);
  cur          uuid := p_tenant_after;
  nxt          uuid;
  wrapped      boolean := p_tenant_after IS NULL;
  visited      integer := 0;
  fair_ids     uuid[] := '{}';
  fair_created timestamptz[] := '{}';
  fair_due     timestamptz[] := '{}';
  r            record;
BEGIN
  IF p_limit IS NULL OR p_limit < 1 OR p_lease_ms IS NULL OR p_lease_ms < 1 OR p_worker IS NULL
     OR p_fair_rows IS NULL OR p_fair_rows < 0 OR p_fair_rows > p_limit
     OR p_fair_per_tenant IS NULL OR p_fair_per_tenant < 1 OR p_fair_tenants IS NULL OR p_fair_tenants < 0 THEN
    RAISE EXCEPTION 'claim_batch: invalid arguments' USING ERRCODE = 'invalid_parameter_value';
  END IF;

  -- Fair lane: tenant by tenant, from just after the previous claim's last tenant, around the
  -- ring of tenants with pending events at most once.
  WHILE p_fair_rows > 0 AND visited < p_fair_tenants AND cardinality(fair_ids) < p_fair_rows LOOP
    -- Two statements, not "cur IS NULL OR restaurant_id > cur": an OR is no index bound, and
    -- the walk would start at the first tenant every time.
    IF cur IS NULL THEN
      SELECT d.restaurant_id INTO nxt
      FROM public.capacity_outbox d
      WHERE (d.status = 'pending') IS TRUE
      ORDER BY d.restaurant_id
      LIMIT 1;
    ELSE
      SELECT d.restaurant_id INTO nxt
      FROM public.capacity_outbox d
      WHERE (d.status = 'pending') IS TRUE AND d.restaurant_id > cur
      ORDER BY d.restaurant_id
      LIMIT 1;
    END IF;
    IF nxt IS NULL THEN
      EXIT WHEN wrapped;
      wrapped := true;
      cur := NULL;
      CONTINUE;
    END IF;
    EXIT WHEN wrapped AND p_tenant_after IS NOT NULL AND nxt > p_tenant_after;
    cur := nxt;
    visited := visited + 1;
    FOR r IN
      SELECT d.id, d.created_at, d.next_attempt_at
      FROM public.capacity_outbox d
      WHERE (d.status = 'pending') IS TRUE AND d.restaurant_id = cur
        AND d.next_attempt_at <= now() AND d.next_attempt_at >= lo
      ORDER BY d.next_attempt_at
      LIMIT LEAST(p_fair_per_tenant, p_fair_rows - cardinality(fair_ids))
      FOR UPDATE SKIP LOCKED
    LOOP
      fair_ids     := fair_ids || r.id;
      fair_created := fair_created || r.created_at;
      fair_due     := fair_due || r.next_attempt_at;
    END LOOP;
    EXIT WHEN wrapped AND p_tenant_after IS NOT NULL AND cur = p_tenant_after;
  END LOOP;

  -- Not a SET clause on the function: PostgreSQL 15 lets only superusers store a custom
  -- setting in a function definition. Transaction-local, switched off again right after the
  -- claim; an error aborts the (sub)transaction, which restores it anyway.
  PERFORM set_config('outbox_dispatcher.claim_frees_keys', 'on', true);
  RETURN QUERY
  WITH head AS (
    -- Head lane: the oldest due events for the rest of the batch. Rows the fair lane locked
    -- are this transaction's own locks, which SKIP LOCKED does not skip: excluded by id.
    SELECT d.id, d.created_at, d.next_attempt_at
    FROM public.capacity_outbox d
    WHERE d.status = 'pending'
      AND d.next_attempt_at <= now()
      AND d.next_attempt_at >= lo
      AND d.id <> ALL (fair_ids)
    ORDER BY d.next_attempt_at
    LIMIT p_limit - cardinality(fair_ids)
    FOR UPDATE SKIP LOCKED
  ), due AS (
    SELECT f.id, f.created_at, f.next_attempt_at, true AS fair
    FROM unnest(fair_ids, fair_created, fair_due) AS f(id, created_at, next_attempt_at)
    UNION ALL
    SELECT h.id, h.created_at, h.next_attempt_at, false FROM head h
  ), claimed AS (
    UPDATE public.capacity_outbox o SET
      status          = 'processing',
      attempts        = o.attempts + 1,
      locked_by       = p_worker,
      locked_until    = now() + p_lease_ms * interval '1 millisecond',
      next_attempt_at = now() + p_lease_ms * interval '1 millisecond'
    FROM due
    WHERE o.id = due.id AND o.created_at = due.created_at
    RETURNING o.id, o.created_at, due.next_attempt_at AS due_at, due.fair, o.restaurant_id, o.event_type, o.payload, o.dedupe_key,
              o.idempotency_key, o.headers, o.attempts, o.ordering_key, o.ordering_seq,
              -- JSON text is at most 6 bytes per stored byte (\u00XX escapes), so a small
              -- uncompressed value needs no measuring; jsonb numbers with huge exponents are
              -- the exception, and the worker's exact check still catches those.
              CASE WHEN pg_column_compression(o.payload) IS NULL
                        AND pg_column_size(o.payload)::bigint * 6 <= p_max_payload_bytes
                   THEN NULL
                   ELSE octet_length(o.payload::text)
              END AS measured_bytes
  ), freed AS (
    SELECT outbox_dispatcher.capacity_outbox_release_claimed_keys(
             array_agg(c.id) FILTER (WHERE c.dedupe_key IS NOT NULL OR c.idempotency_key IS NOT NULL)) AS n
    FROM claimed c
  )
  SELECT c.id, c.created_at::text, c.created_at, c.restaurant_id, c.event_type,
         CASE WHEN c.measured_bytes > p_max_payload_bytes THEN NULL ELSE c.payload END,
         c.measured_bytes, c.dedupe_key, c.idempotency_key, c.headers, c.attempts, c.due_at,
         c.ordering_key, c.ordering_seq, c.fair, cur
  FROM freed CROSS JOIN claimed c;
  PERFORM set_config('outbox_dispatcher.claim_frees_keys', 'off', true);
END
$$;
REVOKE ALL ON FUNCTION outbox_dispatcher.claim_batch(text, integer, integer, integer, timestamptz, uuid, integer, integer, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION outbox_dispatcher.claim_batch(text, integer, integer, integer, timestamptz, uuid, integer, integer, integer) TO app_background;
