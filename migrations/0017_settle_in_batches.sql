-- Per-key ordering: a completion settles its batch's keys in a few set-based statements instead
-- of a trigger call per event (docs/adr/0011-per-key-ordering.md, "Settling in batches").
--
-- Measured (docs/performance.md, "Per-key ordering"): the AFTER ROW trigger
-- capacity_outbox_ordering_settle cost 200-320 µs per keyed completion, against about 20 µs for
-- the whole completion of an unkeyed event: three plpgsql functions and four statements per event,
-- most of it per-statement planning and executor start-up over the partitions. The completer now
-- switches the trigger off for its own UPDATE (a transaction-local setting, as the claim does for
-- dedupe keys in migration 0012) and then calls capacity_outbox_ordering_settle_completed with
-- the events that statement finished. Same rules as the trigger, in the same transaction:
--   - a head that went dead blocks its key (capacity_outbox_ordering_blocked);
--   - a head that went done moves its key on: the key's lock is taken if free (SKIP LOCKED, the
--     daemon never waits for a producer), then its next waiting event becomes due, or the key's
--     row goes when nothing is left; a key whose lock a producer holds goes to the settler
--     (capacity_outbox_ordering_unsettled), as before.
-- Every other change of status (operators, the rescuer, hand-written SQL) still goes through
-- the trigger.

DROP TRIGGER IF EXISTS capacity_outbox_ordering_settle ON public.capacity_outbox;
CREATE TRIGGER capacity_outbox_ordering_settle
  AFTER UPDATE OF status ON public.capacity_outbox
  FOR EACH ROW
  WHEN (OLD.status IS DISTINCT FROM NEW.status AND NEW.status IN ('done', 'dead')
        AND NEW.ordering_key IS NOT NULL
        AND current_setting('outbox_dispatcher.completion_settles_keys', true) IS DISTINCT FROM 'on')
  EXECUTE FUNCTION outbox_dispatcher.capacity_outbox_ordering_settle();

-- Settles the keys of events a completion just moved from processing to done or dead. Takes the
-- events' ids; reads their current rows (the caller's UPDATE is visible: same transaction, a
-- later statement). Returns how many keys moved on now (the rest are blocked or left to the
-- settler). SECURITY DEFINER: no role may touch the key tables directly.
CREATE OR REPLACE FUNCTION outbox_dispatcher.capacity_outbox_ordering_settle_completed(p_event_ids uuid[], p_created_at timestamptz[])
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  done_keys   outbox_dispatcher.capacity_outbox_ordering_keys[];
  locked_keys outbox_dispatcher.capacity_outbox_ordering_keys[];
  moved       integer;
BEGIN
  -- The completion's own UPDATE is over: from here on the row trigger settles again (the
  -- completer makes this call right after it, so the switch-off costs no round trip).
  PERFORM set_config('outbox_dispatcher.completion_settles_keys', 'off', true);
  -- The finished events are read through the primary key (the status tests are written so that
  -- no index on status can serve them, whatever the statistics; see migration 0012).
  -- Dead heads block their keys.
  INSERT INTO outbox_dispatcher.capacity_outbox_ordering_blocked (restaurant_id, ordering_key, event_id, event_created_at)
  SELECT o.restaurant_id, o.ordering_key, o.id, o.created_at
  FROM unnest(p_event_ids, p_created_at) AS e(id, created_at)
  JOIN public.capacity_outbox o ON o.id = e.id AND o.created_at = e.created_at
  WHERE o.ordering_key IS NOT NULL AND (o.status = 'dead') IS TRUE
  ON CONFLICT DO NOTHING;

  SELECT array_agg(DISTINCT ROW(o.restaurant_id, o.ordering_key)::outbox_dispatcher.capacity_outbox_ordering_keys)
  INTO done_keys
  FROM unnest(p_event_ids, p_created_at) AS e(id, created_at)
  JOIN public.capacity_outbox o ON o.id = e.id AND o.created_at = e.created_at
  WHERE o.ordering_key IS NOT NULL AND (o.status = 'done') IS TRUE;
  IF done_keys IS NULL THEN
    RETURN 0;
  END IF;

  -- Take every free key lock at once; the row is rewritten when taken (see try_lock, 0010).
  WITH free AS (
    SELECT k.restaurant_id, k.ordering_key
    FROM outbox_dispatcher.capacity_outbox_ordering_keys k
    JOIN unnest(done_keys) AS d ON d.restaurant_id = k.restaurant_id AND d.ordering_key = k.ordering_key
    FOR UPDATE OF k SKIP LOCKED
  ), taken AS (
    UPDATE outbox_dispatcher.capacity_outbox_ordering_keys k SET ordering_key = k.ordering_key
    FROM free f
    WHERE k.restaurant_id = f.restaurant_id AND k.ordering_key = f.ordering_key
    RETURNING k.restaurant_id, k.ordering_key
  )
  SELECT array_agg(ROW(t.restaurant_id, t.ordering_key)::outbox_dispatcher.capacity_outbox_ordering_keys)
  INTO locked_keys FROM taken t;
  locked_keys := COALESCE(locked_keys, '{}');

  -- Keys with no row (not the normal state while a key has an active event): create and hold
  -- them. Keys whose row exists but is held (a producer) go to the settler.
  WITH missing AS (
    INSERT INTO outbox_dispatcher.capacity_outbox_ordering_keys (restaurant_id, ordering_key)
    SELECT d.restaurant_id, d.ordering_key FROM unnest(done_keys) AS d
    WHERE NOT EXISTS (SELECT 1 FROM unnest(locked_keys) AS l
                      WHERE l.restaurant_id = d.restaurant_id AND l.ordering_key = d.ordering_key)
      AND NOT EXISTS (SELECT 1 FROM outbox_dispatcher.capacity_outbox_ordering_keys k
                      WHERE k.restaurant_id = d.restaurant_id AND k.ordering_key = d.ordering_key)
    ON CONFLICT DO NOTHING
    RETURNING restaurant_id, ordering_key
  )
  SELECT locked_keys || COALESCE(array_agg(ROW(m.restaurant_id, m.ordering_key)::outbox_dispatcher.capacity_outbox_ordering_keys), '{}')
  INTO locked_keys FROM missing m;

  INSERT INTO outbox_dispatcher.capacity_outbox_ordering_unsettled (restaurant_id, ordering_key)
  SELECT d.restaurant_id, d.ordering_key FROM unnest(done_keys) AS d
  WHERE NOT EXISTS (SELECT 1 FROM unnest(locked_keys) AS l
                    WHERE l.restaurant_id = d.restaurant_id AND l.ordering_key = d.ordering_key);

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
REVOKE ALL ON FUNCTION outbox_dispatcher.capacity_outbox_ordering_settle_completed(uuid[], timestamptz[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION outbox_dispatcher.capacity_outbox_ordering_settle_completed(uuid[], timestamptz[]) TO app_background;
