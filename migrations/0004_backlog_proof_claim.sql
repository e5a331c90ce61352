-- Backlog-proof claim (docs/adr/0006-backlog-proof-claim.md).
--
-- The claim is one function call so that its planner settings are local to it and cost
-- no extra round trip. With sorting, bitmap scans, sequential scans and hash/merge joins
-- disabled, the only plan left for "oldest due rows, LIMIT n" over the partitions is a
-- Merge Append of ordered scans of each partition's (status, next_attempt_at) index,
-- which stops after about n entries, whatever the statistics say (never analyzed,
-- analyzed before a backlog arrived, fresh) and however deep the backlog is.
--
-- p_after (optional) starts the walk at a lower bound of next_attempt_at: while a long
-- transaction holds the xmin horizon back, the entries of rows claimed and completed
-- since then stay in the index ahead of the pending range and every claim from the head
-- would re-read them. The dispatcher passes a bound just behind what it claimed last and
-- walks from the head now and then (see src/dispatch/claim-cursor.ts).
--
-- `headers` is added by migration 0009 (which sorts after this file): plpgsql resolves
-- columns when the function first runs, and the daemon runs only on a fully migrated schema.
--
-- Payload size is measured here, before anything is sent to the worker: a payload that is
-- stored uncompressed and small enough that its JSON text cannot exceed the limit is not
-- measured at all (the common case costs one header read); any other payload is measured
-- exactly as JSON text, in the database. An oversized payload is returned as NULL with its
-- size, and the worker dead-letters the event without ever loading it.
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
  due_at          timestamptz)
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
              o.idempotency_key, o.headers, o.attempts,
              -- JSON text is at most 6 bytes per stored byte (\u00XX escapes), so a small
              -- uncompressed value needs no measuring; jsonb numbers with huge exponents are
              -- the exception, and the worker's exact check still catches those.
              CASE WHEN pg_column_compression(o.payload) IS NULL
                        AND pg_column_size(o.payload)::bigint * 6 <= p_max_payload_bytes
                   THEN NULL
                   ELSE octet_length(o.payload::text)
              END AS measured_bytes
  )
  SELECT c.id, c.created_at::text, c.created_at, c.restaurant_id, c.event_type,
         CASE WHEN c.measured_bytes > p_max_payload_bytes THEN NULL ELSE c.payload END,
         c.measured_bytes, c.dedupe_key, c.idempotency_key, c.headers, c.attempts, c.due_at
  FROM claimed c;
END
$$;
REVOKE ALL ON FUNCTION outbox_dispatcher.claim_batch(text, integer, integer, integer, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION outbox_dispatcher.claim_batch(text, integer, integer, integer, timestamptz) TO app_background;
