-- Less PostgreSQL work per claimed event (docs/adr/0006-backlog-proof-claim.md, "Fewer writes
-- per event"): time-ordered event ids, and the claim frees dedupe keys in one statement.
--
-- A key is held only while its event is pending (migration 0006), so every claim of a keyed
-- event freed its key in the AFTER ROW trigger capacity_outbox_dedupe_release: one plpgsql call
-- and one DELETE per event, about 17 µs of the ~65 µs of PostgreSQL CPU that claim + completion
-- cost per event on the issue-9 cold burst (every event keyed). The claim now frees the keys of
-- the whole batch with one DELETE, and the trigger stands aside while the claim runs: the claim
-- function sets outbox_dispatcher.claim_frees_keys = on around its statement (and off again
-- right after it), and the trigger's WHEN clause reads it.
-- Every other move out of pending (an operator marking an event done or dead, any hand-written
-- UPDATE) still frees its key through the trigger, as before. Most of those 17 µs are the
-- DELETE itself, which stays; the set-based form saved about 8% of claim + completion CPU.

-- Time-ordered event ids (UUID version 7: 48 bits of Unix milliseconds, then random bits).
-- With random (version 4) ids every lookup and every new index entry of a batch landed on a
-- different leaf page of the primary key (and of the key table's event_id index): a claim of
-- 500 events touched about 500 leaf pages, again for the completion, again for the key release.
-- Events inserted together now sit together in those indexes. Measured on the issue-9 cold
-- burst: about a quarter less PostgreSQL CPU per event for claim + completion
-- (docs/performance.md). Ids stay unique (74 random bits per millisecond) and opaque to
-- consumers; a producer that supplies its own id keeps working, without the locality.
CREATE OR REPLACE FUNCTION outbox_dispatcher.uuid_v7()
RETURNS uuid
LANGUAGE sql VOLATILE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
  -- A version-4 uuid with its first 6 bytes replaced by the millisecond clock, and the
  -- version nibble turned from 4 (0100) into 7 (0111) by setting its two low bits.
  SELECT encode(
           set_bit(set_bit(
             overlay(uuid_send(gen_random_uuid())
                     PLACING substring(int8send(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
                     FROM 1 FOR 6),
             52, 1), 53, 1),
           'hex')::uuid
$$;
REVOKE ALL ON FUNCTION outbox_dispatcher.uuid_v7() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION outbox_dispatcher.uuid_v7() TO app_producer, app_background;
ALTER TABLE public.capacity_outbox ALTER COLUMN id SET DEFAULT outbox_dispatcher.uuid_v7();

-- Frees the keys of events a claim has just moved out of pending. SECURITY DEFINER because no
-- role may touch the key table directly; it frees a key only when its event is no longer
-- pending, so calling it directly can never free the key of a queued event. It runs inside the
-- claim statement, after the claim's UPDATE has produced every row (it aggregates the UPDATE's
-- RETURNING): a VOLATILE function's statements take a fresh snapshot that sees the calling
-- statement's changes, so the events read here are the claimed versions.
CREATE OR REPLACE FUNCTION outbox_dispatcher.capacity_outbox_release_claimed_keys(p_event_ids uuid[])
RETURNS integer
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
  WITH freed AS (
    DELETE FROM outbox_dispatcher.capacity_outbox_active_keys k
    WHERE k.event_id = ANY (p_event_ids)
      -- "IS NOT FALSE", not a plain "status = 'pending'": each event must be found through its
      -- primary key. With statistics taken while few events were pending, the plain form was
      -- planned as a walk of every pending entry of the dispatch index per key (15 million
      -- index entries read for one claim of 500 over a 30,000-event backlog).
      AND NOT EXISTS (SELECT 1 FROM public.capacity_outbox o
                      WHERE o.id = k.event_id AND o.created_at = k.event_created_at
                        AND (o.status = 'pending') IS NOT FALSE)
    RETURNING 1)
  SELECT count(*)::integer FROM freed
$$;
REVOKE ALL ON FUNCTION outbox_dispatcher.capacity_outbox_release_claimed_keys(uuid[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION outbox_dispatcher.capacity_outbox_release_claimed_keys(uuid[]) TO app_background;

DROP TRIGGER IF EXISTS capacity_outbox_dedupe_release ON public.capacity_outbox;
CREATE TRIGGER capacity_outbox_dedupe_release
  AFTER UPDATE OF status ON public.capacity_outbox
  FOR EACH ROW
  WHEN (OLD.status = 'pending' AND NEW.status <> 'pending'
        AND (OLD.dedupe_key IS NOT NULL OR OLD.idempotency_key IS NOT NULL)
        AND current_setting('outbox_dispatcher.claim_frees_keys', true) IS DISTINCT FROM 'on')
  EXECUTE FUNCTION outbox_dispatcher.capacity_outbox_release_key();

---------------------------------------------------------------------------------------
-- The claim: migration 0010's walk, planner settings, cursor and returned columns, unchanged,
-- plus the batch's key release (above). The CROSS JOIN with the one-row `freed` makes the
-- release run once per claim, after the UPDATE and before any row is returned.
---------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION outbox_dispatcher.claim_batch(
  p_worker            text,
  p_limit             integer,
  p_lease_ms          integer,
  p_max_payload_bytes integer,
  p_after             timestamptz DEFAULT NULL)
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
  ordering_seq    bigint)
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
BEGIN
  IF p_limit IS NULL OR p_limit < 1 OR p_lease_ms IS NULL OR p_lease_ms < 1 OR p_worker IS NULL THEN
    RAISE EXCEPTION 'claim_batch: invalid arguments' USING ERRCODE = 'invalid_parameter_value';
  END IF;
  -- Not a SET clause on the function: PostgreSQL 15 lets only superusers store a custom
  -- setting in a function definition. Transaction-local, switched off again right after the
  -- claim; an error aborts the (sub)transaction, which restores it anyway.
  PERFORM set_config('outbox_dispatcher.claim_frees_keys', 'on', true);
  RETURN QUERY
  WITH due AS (
    SELECT d.id, d.created_at, d.next_attempt_at
    FROM public.capacity_outbox d
    WHERE d.status = 'pending'
      AND d.next_attempt_at <= now()
      AND d.next_attempt_at >= COALESCE(p_after, '-infinity'::timestamptz)
    ORDER BY d.next_attempt_at
    LIMIT p_limit
    FOR UPDATE SKIP LOCKED
  ), claimed AS (
    UPDATE public.capacity_outbox o SET
      status          = 'processing',
      attempts        = o.attempts + 1,
      locked_by       = p_worker,
      locked_until    = now() + p_lease_ms * interval '1 millisecond',
      next_attempt_at = now() + p_lease_ms * interval '1 millisecond'
    FROM due
    WHERE o.id = due.id AND o.created_at = due.created_at
    RETURNING o.id, o.created_at, due.next_attempt_at AS due_at, o.restaurant_id, o.event_type, o.payload, o.dedupe_key,
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
         c.ordering_key, c.ordering_seq
  FROM freed CROSS JOIN claimed c;
  PERFORM set_config('outbox_dispatcher.claim_frees_keys', 'off', true);
END
$$;
REVOKE ALL ON FUNCTION outbox_dispatcher.claim_batch(text, integer, integer, integer, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION outbox_dispatcher.claim_batch(text, integer, integer, integer, timestamptz) TO app_background;
