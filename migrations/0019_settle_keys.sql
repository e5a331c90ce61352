-- Per-key ordering: the completion settles the keys it finished without reading its events again
-- (docs/adr/0011-per-key-ordering.md, "Fewer reads per settled key").
--
-- Measured (docs/performance.md, "Per-key ordering"): a completion batch of 500 keyed events took
-- about 45 ms against 16 ms unkeyed, and in a keyed drain the completion connection was busy the
-- whole time. Per batch, capacity_outbox_ordering_settle_completed (0017) probed the primary key
-- of every finished event twice (once for dead heads, once for done ones) to learn what the
-- completion UPDATE had just written, and found each key row twice (to lock it, then to rewrite
-- it). This function takes the finished keys from the completion's own RETURNING (done heads) and
-- only dead heads by id, which it still reads to check they are dead (usually none), and locks the
-- key rows without rewriting them (see below why a rewrite is not needed here).
--
-- The rules are 0017's: dead heads block their keys; a done head's key lock is taken if free
-- (SKIP LOCKED: the daemon never waits for a producer); a key whose lock a producer holds goes to
-- the settler; then, in a statement whose snapshot follows the locks, each unblocked key's
-- lowest-sequence active event is promoted if it waits, or the key's row goes when nothing is
-- left. Passing a key does not let a caller reorder anything: the head is recomputed under the
-- key's lock, and a key whose head is still in flight is left as it is. (app_background may
-- update capacity_outbox anyway; the key tables stay reachable only through these functions.)
--
-- capacity_outbox_ordering_settle_completed stays for daemons of the previous release during a
-- rolling upgrade, redefined at the end of this file on top of this one.
CREATE OR REPLACE FUNCTION outbox_dispatcher.capacity_outbox_ordering_settle_keys(
  p_done_restaurant_ids uuid[],
  p_done_keys           text[],
  p_dead_ids            uuid[],
  p_dead_created_at     timestamptz[])
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
-- The plans this was written for, whatever the statistics (migration 0018, test/ordering-plans).
SET enable_seqscan = off
SET enable_sort = off
SET enable_bitmapscan = off
SET enable_mergejoin = off
SET enable_material = off
AS $$
DECLARE
  locked_keys outbox_dispatcher.capacity_outbox_ordering_keys[];
  moved       integer;
BEGIN
  -- The completion's own UPDATE is over: from here on the row trigger settles again.
  PERFORM set_config('outbox_dispatcher.completion_settles_keys', 'off', true);

  -- Dead heads block their keys. Read by primary key: only events that are dead now count.
  IF cardinality(p_dead_ids) > 0 THEN
    INSERT INTO outbox_dispatcher.capacity_outbox_ordering_blocked (restaurant_id, ordering_key, event_id, event_created_at)
    SELECT o.restaurant_id, o.ordering_key, o.id, o.created_at
    FROM unnest(p_dead_ids, p_dead_created_at) AS e(id, created_at)
    JOIN public.capacity_outbox o ON o.id = e.id AND o.created_at = e.created_at
    WHERE o.ordering_key IS NOT NULL AND (o.status = 'dead') IS TRUE
    ON CONFLICT DO NOTHING;
  END IF;

  -- The done keys are used as passed. The completer passes each key once; a key passed twice
  -- is locked, looked up and promoted once all the same (an UPDATE or DELETE changes a row once
  -- however many rows it joins), so no DISTINCT is paid for here.
  IF COALESCE(cardinality(p_done_keys), 0) = 0 THEN
    RETURN 0;
  END IF;

  -- Take every free key lock at once. Unlike try_lock (0010) the rows are not rewritten: nothing
  -- this function does can mislead a REPEATABLE READ producer whose snapshot predates it. It
  -- promotes a waiting event (which that snapshot still sees as active, and which is active:
  -- the producer's event rightly queues behind it), deletes the key's row (the producer's lock
  -- then fails with 40001) or creates it (its insert then fails with 40001); a key whose head is
  -- still in flight is left as it was. Rewriting 500 key rows was a fifth of a keyed completion.
  SELECT array_agg(ROW(f.restaurant_id, f.ordering_key)::outbox_dispatcher.capacity_outbox_ordering_keys)
  INTO locked_keys
  FROM (SELECT k.restaurant_id, k.ordering_key
        FROM outbox_dispatcher.capacity_outbox_ordering_keys k
        JOIN unnest(p_done_restaurant_ids, p_done_keys) AS d(restaurant_id, ordering_key)
          ON d.restaurant_id = k.restaurant_id AND d.ordering_key = k.ordering_key
        FOR UPDATE OF k SKIP LOCKED) f;
  locked_keys := COALESCE(locked_keys, '{}');

  -- Every key locked (the normal case): nothing is missing or held by a producer.
  IF cardinality(locked_keys) < cardinality(p_done_keys) THEN
    -- Keys with no row (not the normal state while a key has an active event): create and hold
    -- them. Keys whose row exists but is held (a producer) go to the settler.
    WITH missing AS (
      INSERT INTO outbox_dispatcher.capacity_outbox_ordering_keys (restaurant_id, ordering_key)
      SELECT d.restaurant_id, d.ordering_key FROM unnest(p_done_restaurant_ids, p_done_keys) AS d(restaurant_id, ordering_key)
      WHERE d.restaurant_id IS NOT NULL AND d.ordering_key IS NOT NULL
        AND NOT EXISTS (SELECT 1 FROM unnest(locked_keys) AS l
                        WHERE l.restaurant_id = d.restaurant_id AND l.ordering_key = d.ordering_key)
        AND NOT EXISTS (SELECT 1 FROM outbox_dispatcher.capacity_outbox_ordering_keys k
                        WHERE k.restaurant_id = d.restaurant_id AND k.ordering_key = d.ordering_key)
      ON CONFLICT DO NOTHING
      RETURNING restaurant_id, ordering_key
    )
    SELECT locked_keys || COALESCE(array_agg(ROW(m.restaurant_id, m.ordering_key)::outbox_dispatcher.capacity_outbox_ordering_keys), '{}')
    INTO locked_keys FROM missing m;

    INSERT INTO outbox_dispatcher.capacity_outbox_ordering_unsettled (restaurant_id, ordering_key)
    SELECT DISTINCT d.restaurant_id, d.ordering_key FROM unnest(p_done_restaurant_ids, p_done_keys) AS d(restaurant_id, ordering_key)
    WHERE d.restaurant_id IS NOT NULL AND d.ordering_key IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM unnest(locked_keys) AS l
                      WHERE l.restaurant_id = d.restaurant_id AND l.ordering_key = d.ordering_key);
  END IF;

  IF cardinality(locked_keys) = 0 THEN
    RETURN 0;
  END IF;

  -- With the locks held (this statement's snapshot is taken after them, so it sees every
  -- committed event of those keys): each unblocked key's lowest-sequence active event; a waiting
  -- one becomes due now, and a key with none gives its row up. Same rule as advance_locked (0010).
  WITH k AS (
    SELECT l.restaurant_id, l.ordering_key FROM unnest(locked_keys) AS l
    WHERE NOT EXISTS (SELECT 1 FROM outbox_dispatcher.capacity_outbox_ordering_blocked b
                      WHERE b.restaurant_id = l.restaurant_id AND b.ordering_key = l.ordering_key)
  ), head AS (
    SELECT k.restaurant_id, k.ordering_key, h.id, h.created_at, h.waiting
    FROM k
    LEFT JOIN LATERAL (
      SELECT o.id, o.created_at, (o.status = 'pending' AND o.next_attempt_at = 'infinity') AS waiting
      FROM public.capacity_outbox o
      WHERE o.restaurant_id = k.restaurant_id AND o.ordering_key = k.ordering_key
        AND o.ordering_key IS NOT NULL AND o.status IN ('pending', 'processing')
      ORDER BY o.ordering_seq
      LIMIT 1) h ON true
  ), gone AS (
    DELETE FROM outbox_dispatcher.capacity_outbox_ordering_keys x
    USING head
    WHERE head.id IS NULL AND x.restaurant_id = head.restaurant_id AND x.ordering_key = head.ordering_key
    RETURNING 1
  ), promoted AS (
    UPDATE public.capacity_outbox o SET next_attempt_at = pg_catalog.now()
    FROM head
    WHERE head.waiting AND o.id = head.id AND o.created_at = head.created_at
    RETURNING 1
  )
  SELECT (SELECT count(*) FROM promoted) + (SELECT count(*) FROM gone) INTO moved;
  IF moved > 0 THEN
    PERFORM pg_catalog.pg_notify('capacity_outbox', '');
  END IF;
  RETURN moved;
END
$$;
REVOKE ALL ON FUNCTION outbox_dispatcher.capacity_outbox_ordering_settle_keys(uuid[], text[], uuid[], timestamptz[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION outbox_dispatcher.capacity_outbox_ordering_settle_keys(uuid[], text[], uuid[], timestamptz[]) TO app_background;

-- The previous release's entry point (its completer passes the finished events' ids) now reads
-- what it needs by primary key and applies the same rules through the function above: one
-- definition of how a batch settles, whichever release calls it.
CREATE OR REPLACE FUNCTION outbox_dispatcher.capacity_outbox_ordering_settle_completed(p_event_ids uuid[], p_created_at timestamptz[])
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off
SET enable_sort = off
SET enable_bitmapscan = off
SET enable_mergejoin = off
SET enable_material = off
AS $$
DECLARE
  done_r       uuid[];
  done_k       text[];
  dead_ids     uuid[];
  dead_created timestamptz[];
BEGIN
  SELECT array_agg(o.restaurant_id) FILTER (WHERE o.status = 'done'), array_agg(o.ordering_key) FILTER (WHERE o.status = 'done'),
         array_agg(o.id) FILTER (WHERE o.status = 'dead'), array_agg(o.created_at) FILTER (WHERE o.status = 'dead')
  INTO done_r, done_k, dead_ids, dead_created
  FROM unnest(p_event_ids, p_created_at) AS e(id, created_at)
  JOIN public.capacity_outbox o ON o.id = e.id AND o.created_at = e.created_at
  WHERE o.ordering_key IS NOT NULL AND (o.status IN ('done', 'dead')) IS TRUE;
  RETURN outbox_dispatcher.capacity_outbox_ordering_settle_keys(
    COALESCE(done_r, '{}'), COALESCE(done_k, '{}'), COALESCE(dead_ids, '{}'), COALESCE(dead_created, '{}'));
END
$$;
