-- Per-key ordered delivery (docs/adr/0011-per-key-ordering.md).
--
-- Producer contract: an optional ordering_key. Events of one (restaurant_id, ordering_key)
-- are delivered one at a time, in ordering_seq order, and ordering_seq order is the order in
-- which the producers' transactions committed.
--
-- How, without touching the claim: only the key's *head* is ever due. Every other event of
-- the key is 'pending' with next_attempt_at = 'infinity' ("waiting"): it sits at the far end
-- of the (status, next_attempt_at) index, which the claim walks from the near end and stops
-- at the first row not yet due, so waiting events are never read by it however many there are.
-- When the head leaves the active states (done, or set aside), the same statement promotes
-- the key's next waiting event (next_attempt_at = now()) in an AFTER ROW trigger.
--
-- The key's row in capacity_outbox_ordering_keys is the lock that serialises producers of a
-- key (held to the end of their transaction) and completions of its head, and records a
-- dead head that blocks the key.

DO $$
BEGIN
  ALTER TABLE public.capacity_outbox
    ADD COLUMN IF NOT EXISTS ordering_key text,
    ADD COLUMN IF NOT EXISTS ordering_seq bigint;
END
$$;

-- Unused sequence numbers are harmless (a rolled-back producer); only the order matters.
CREATE SEQUENCE IF NOT EXISTS outbox_dispatcher.capacity_outbox_ordering_seq AS bigint;
REVOKE ALL ON SEQUENCE outbox_dispatcher.capacity_outbox_ordering_seq FROM PUBLIC;

-- One row per key with active events: the lock that serialises the key's producers (held to
-- the end of their transaction) against each other and against the promotion of its next event.
CREATE TABLE IF NOT EXISTS outbox_dispatcher.capacity_outbox_ordering_keys (
  restaurant_id uuid NOT NULL,
  ordering_key  text NOT NULL,
  CONSTRAINT capacity_outbox_ordering_keys_pkey PRIMARY KEY (restaurant_id, ordering_key)
);
REVOKE ALL ON outbox_dispatcher.capacity_outbox_ordering_keys FROM PUBLIC;

-- A dead head under the 'block' policy: the key waits until it is replayed or skipped. A table
-- of its own so that blocking needs no key lock (blocking never makes anything due, so it
-- cannot race a producer's decision) and the daemon never waits for a producer's transaction.
CREATE TABLE IF NOT EXISTS outbox_dispatcher.capacity_outbox_ordering_blocked (
  restaurant_id    uuid        NOT NULL,
  ordering_key     text        NOT NULL,
  event_id         uuid        NOT NULL,
  event_created_at timestamptz NOT NULL,
  blocked_since    timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT capacity_outbox_ordering_blocked_pkey PRIMARY KEY (restaurant_id, ordering_key),
  CONSTRAINT capacity_outbox_ordering_blocked_event_key UNIQUE (event_id)
);
-- `events blocked` and the gauge read blocked keys oldest first.
CREATE INDEX IF NOT EXISTS capacity_outbox_ordering_blocked_since_idx
  ON outbox_dispatcher.capacity_outbox_ordering_blocked (blocked_since);
REVOKE ALL ON outbox_dispatcher.capacity_outbox_ordering_blocked FROM PUBLIC;
GRANT SELECT ON outbox_dispatcher.capacity_outbox_ordering_blocked TO app_background;

-- Keys whose head finished while a producer of the key held the key's lock: the completion
-- does not wait for a producer's transaction (that wait, with several keys per producer
-- transaction and per completion batch, deadlocks), it leaves the key here and the daemon's
-- settler promotes the next event once the producer has committed (outbox_ordering_settle).
-- No unique constraint: two completions never wait on each other to record a key.
CREATE TABLE IF NOT EXISTS outbox_dispatcher.capacity_outbox_ordering_unsettled (
  restaurant_id uuid        NOT NULL,
  ordering_key  text        NOT NULL,
  since         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS capacity_outbox_ordering_unsettled_key_idx
  ON outbox_dispatcher.capacity_outbox_ordering_unsettled (restaurant_id, ordering_key);
REVOKE ALL ON outbox_dispatcher.capacity_outbox_ordering_unsettled FROM PUBLIC;

-- The head lookup and the promotion walk a key's active events in sequence order.
-- Partial: unkeyed events and finished ones cost nothing here.
CREATE INDEX IF NOT EXISTS capacity_outbox_ordering_idx
  ON public.capacity_outbox (restaurant_id, ordering_key, ordering_seq)
  WHERE ordering_key IS NOT NULL AND status IN ('pending', 'processing');

-- Producers may set ordering_key; the sequence is the database's to assign.
GRANT INSERT (ordering_key) ON public.capacity_outbox TO app_producer;

---------------------------------------------------------------------------------------
-- Internals (no role but the definer calls them). They run on the hot path of every keyed
-- completion, so they carry no SET clause (a function with one is a GUC save/restore per
-- call and is never inlined): they are only called from the SECURITY DEFINER functions
-- below, which pin search_path, and they name every object schema-qualified.
---------------------------------------------------------------------------------------

-- Producers and operator replays: locks the key's row (creating it if needed) for the rest of
-- the transaction, waiting for another holder. Under REPEATABLE READ / SERIALIZABLE a key row
-- changed or removed after the snapshot raises a serialization failure (40001) instead of
-- letting a stale snapshot misjudge which event is the head; the transaction can be retried.
CREATE OR REPLACE FUNCTION outbox_dispatcher.capacity_outbox_ordering_lock(p_restaurant_id uuid, p_key text)
RETURNS void
LANGUAGE plpgsql VOLATILE
AS $$
BEGIN
  IF current_setting('transaction_isolation') <> 'read committed' THEN
    PERFORM 1 FROM outbox_dispatcher.capacity_outbox_ordering_keys k
    WHERE k.restaurant_id = p_restaurant_id AND k.ordering_key = p_key FOR UPDATE;
  END IF;
  INSERT INTO outbox_dispatcher.capacity_outbox_ordering_keys AS k (restaurant_id, ordering_key)
  VALUES (p_restaurant_id, p_key)
  ON CONFLICT (restaurant_id, ordering_key) DO UPDATE SET ordering_key = EXCLUDED.ordering_key;
END
$$;
REVOKE ALL ON FUNCTION outbox_dispatcher.capacity_outbox_ordering_lock(uuid, text) FROM PUBLIC;

-- The daemon: takes the key's lock only if nobody holds it (never waits for a producer's
-- transaction). The row is rewritten when taken, so a REPEATABLE READ producer that read the
-- key before this change fails with 40001 rather than deciding from a stale snapshot.
CREATE OR REPLACE FUNCTION outbox_dispatcher.capacity_outbox_ordering_try_lock(p_restaurant_id uuid, p_key text)
RETURNS boolean
LANGUAGE plpgsql VOLATILE
AS $$
BEGIN
  WITH free AS (
    SELECT 1 FROM outbox_dispatcher.capacity_outbox_ordering_keys k
    WHERE k.restaurant_id = p_restaurant_id AND k.ordering_key = p_key FOR UPDATE SKIP LOCKED)
  UPDATE outbox_dispatcher.capacity_outbox_ordering_keys k SET ordering_key = k.ordering_key
  WHERE k.restaurant_id = p_restaurant_id AND k.ordering_key = p_key AND EXISTS (SELECT 1 FROM free);
  IF FOUND THEN
    RETURN true;
  END IF;
  IF EXISTS (SELECT 1 FROM outbox_dispatcher.capacity_outbox_ordering_keys k
             WHERE k.restaurant_id = p_restaurant_id AND k.ordering_key = p_key) THEN
    RETURN false; -- held by a producer (or another settler)
  END IF;
  -- No row (not the normal state while the key has an active event): create and hold it.
  INSERT INTO outbox_dispatcher.capacity_outbox_ordering_keys (restaurant_id, ordering_key)
  VALUES (p_restaurant_id, p_key) ON CONFLICT DO NOTHING;
  RETURN FOUND;
END
$$;
REVOKE ALL ON FUNCTION outbox_dispatcher.capacity_outbox_ordering_try_lock(uuid, text) FROM PUBLIC;

-- With the key's lock held: unless a dead head blocks the key or its head is still active,
-- its next waiting event becomes due now; a key left with no active event gives its row up.
-- The head is always the key's lowest-sequence active event (waiting events are inserted
-- behind it; a replayed blocked head keeps its lower sequence), so one ordered probe of the
-- key's active events answers both questions. Called with the lock held, so (READ
-- COMMITTED) it sees every committed event of the key.
CREATE OR REPLACE FUNCTION outbox_dispatcher.capacity_outbox_ordering_advance_locked(p_restaurant_id uuid, p_key text)
RETURNS void
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
  nxt record;
BEGIN
  IF EXISTS (SELECT 1 FROM outbox_dispatcher.capacity_outbox_ordering_blocked b
             WHERE b.restaurant_id = p_restaurant_id AND b.ordering_key = p_key) THEN
    RETURN;
  END IF;
  SELECT o.id, o.created_at, (o.status = 'pending' AND o.next_attempt_at = 'infinity') AS waiting INTO nxt
  FROM public.capacity_outbox o
  WHERE o.restaurant_id = p_restaurant_id AND o.ordering_key = p_key
    AND o.ordering_key IS NOT NULL AND o.status IN ('pending', 'processing')
  ORDER BY o.ordering_seq
  LIMIT 1;
  IF NOT FOUND THEN
    DELETE FROM outbox_dispatcher.capacity_outbox_ordering_keys k
    WHERE k.restaurant_id = p_restaurant_id AND k.ordering_key = p_key;
  ELSIF nxt.waiting THEN
    UPDATE public.capacity_outbox o SET next_attempt_at = pg_catalog.now()
    WHERE o.id = nxt.id AND o.created_at = nxt.created_at;
    PERFORM pg_catalog.pg_notify('capacity_outbox', '');
  END IF;
END
$$;
REVOKE ALL ON FUNCTION outbox_dispatcher.capacity_outbox_ordering_advance_locked(uuid, text) FROM PUBLIC;

-- The daemon's "the key may move on": now if the key's lock is free, else left to the settler.
CREATE OR REPLACE FUNCTION outbox_dispatcher.capacity_outbox_ordering_advance(p_restaurant_id uuid, p_key text)
RETURNS void
LANGUAGE plpgsql VOLATILE
AS $$
BEGIN
  IF outbox_dispatcher.capacity_outbox_ordering_try_lock(p_restaurant_id, p_key) THEN
    PERFORM outbox_dispatcher.capacity_outbox_ordering_advance_locked(p_restaurant_id, p_key);
  ELSE
    INSERT INTO outbox_dispatcher.capacity_outbox_ordering_unsettled (restaurant_id, ordering_key)
    VALUES (p_restaurant_id, p_key);
  END IF;
END
$$;
REVOKE ALL ON FUNCTION outbox_dispatcher.capacity_outbox_ordering_advance(uuid, text) FROM PUBLIC;

---------------------------------------------------------------------------------------
-- Insert: sequence and place in the key's queue.
---------------------------------------------------------------------------------------

-- Takes the key's lock for the rest of the producer's transaction, then the next sequence
-- number: a second producer of the key waits here until the first commits or rolls back,
-- so sequence order is commit order. Returns the sequence and whether the event is the head.
CREATE OR REPLACE FUNCTION outbox_dispatcher.capacity_outbox_ordering_place(
  p_restaurant_id uuid, p_key text, OUT seq bigint, OUT is_head boolean)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  ctx uuid := public.current_restaurant_id();
BEGIN
  IF pg_trigger_depth() < 1 THEN
    RAISE EXCEPTION 'capacity_outbox_ordering_place is only called by the capacity_outbox triggers'
      USING ERRCODE = 'insufficient_privilege';
  END IF;
  IF ctx IS NOT NULL AND ctx IS DISTINCT FROM p_restaurant_id THEN
    RAISE EXCEPTION 'new row violates row-level security policy for table "capacity_outbox"'
      USING ERRCODE = 'insufficient_privilege';
  END IF;
  IF ctx IS NULL AND pg_has_role(session_user, 'app_producer', 'MEMBER')
     AND NOT pg_has_role(session_user, 'app_background', 'MEMBER')
     AND NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = session_user AND (rolsuper OR rolbypassrls)) THEN
    PERFORM public.require_restaurant_context();
  END IF;
  PERFORM outbox_dispatcher.capacity_outbox_ordering_lock(p_restaurant_id, p_key);
  seq := nextval('outbox_dispatcher.capacity_outbox_ordering_seq');
  -- Any active event (head or waiting) or a blocking dead head puts this one behind it.
  is_head := NOT EXISTS (
      SELECT 1 FROM outbox_dispatcher.capacity_outbox_ordering_blocked b
      WHERE b.restaurant_id = p_restaurant_id AND b.ordering_key = p_key)
    AND NOT EXISTS (
      SELECT 1 FROM public.capacity_outbox o
      WHERE o.restaurant_id = p_restaurant_id AND o.ordering_key = p_key
        AND o.ordering_key IS NOT NULL AND o.status IN ('pending', 'processing'));
END
$$;
REVOKE ALL ON FUNCTION outbox_dispatcher.capacity_outbox_ordering_place(uuid, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION outbox_dispatcher.capacity_outbox_ordering_place(uuid, text) TO app_producer, app_background;

-- BEFORE INSERT, SECURITY INVOKER: the producer policy's verdict comes first (as in the dedupe
-- trigger, 0006), so a producer can neither wait on nor learn about another tenant's key.
-- Rows that already carry a sequence are moves (partition rotation, adopt), not new events:
-- they keep their place.
CREATE OR REPLACE FUNCTION outbox_dispatcher.capacity_outbox_ordering_insert()
RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  ctx uuid;
  placed record;
BEGIN
  IF length(NEW.ordering_key) NOT BETWEEN 1 AND 200 OR NEW.ordering_key ~ '[[:cntrl:]]' THEN
    RAISE EXCEPTION 'invalid ordering_key: 1 to 200 characters, no control characters'
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF row_security_active('public.capacity_outbox'::regclass) THEN
    ctx := public.current_restaurant_id();
    IF ctx IS NULL AND pg_has_role(current_user, 'app_producer', 'MEMBER')
       AND NOT pg_has_role(current_user, 'app_background', 'MEMBER') THEN
      ctx := public.require_restaurant_context();
    END IF;
    IF ctx IS NOT NULL AND NEW.restaurant_id IS DISTINCT FROM ctx THEN
      RAISE EXCEPTION 'new row violates row-level security policy for table "capacity_outbox"'
        USING ERRCODE = 'insufficient_privilege';
    END IF;
  END IF;
  placed := outbox_dispatcher.capacity_outbox_ordering_place(NEW.restaurant_id, NEW.ordering_key);
  NEW.ordering_seq := placed.seq;
  IF NOT placed.is_head THEN
    NEW.next_attempt_at := 'infinity';
  END IF;
  RETURN NEW;
END
$$;
REVOKE ALL ON FUNCTION outbox_dispatcher.capacity_outbox_ordering_insert() FROM PUBLIC;

-- Named to sort after capacity_outbox_dedupe_insert: a duplicate the dedupe trigger drops
-- never reaches this one and takes no sequence number.
DROP TRIGGER IF EXISTS capacity_outbox_ordering_insert ON public.capacity_outbox;
CREATE TRIGGER capacity_outbox_ordering_insert
  BEFORE INSERT ON public.capacity_outbox
  FOR EACH ROW
  WHEN (NEW.ordering_key IS NOT NULL AND NEW.ordering_seq IS NULL AND NEW.status = 'pending')
  EXECUTE FUNCTION outbox_dispatcher.capacity_outbox_ordering_insert();

---------------------------------------------------------------------------------------
-- Replay (done/dead -> pending).
---------------------------------------------------------------------------------------

-- The key's blocked head comes back as the head, keeping its sequence (its successors never
-- went out). Any other finished event re-enters at the tail of its key with a new sequence,
-- so the sequence a consumer sees still never goes backwards.
CREATE OR REPLACE FUNCTION outbox_dispatcher.capacity_outbox_ordering_reactivate()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  PERFORM outbox_dispatcher.capacity_outbox_ordering_lock(NEW.restaurant_id, NEW.ordering_key);
  DELETE FROM outbox_dispatcher.capacity_outbox_ordering_blocked b WHERE b.event_id = OLD.id;
  IF FOUND THEN
    RETURN NEW;
  END IF;
  NEW.ordering_seq := nextval('outbox_dispatcher.capacity_outbox_ordering_seq');
  IF EXISTS (SELECT 1 FROM outbox_dispatcher.capacity_outbox_ordering_blocked b
             WHERE b.restaurant_id = NEW.restaurant_id AND b.ordering_key = NEW.ordering_key)
     OR EXISTS (SELECT 1 FROM public.capacity_outbox o
                WHERE o.restaurant_id = NEW.restaurant_id AND o.ordering_key = NEW.ordering_key
                  AND o.ordering_key IS NOT NULL AND o.status IN ('pending', 'processing')) THEN
    NEW.next_attempt_at := 'infinity';
  END IF;
  RETURN NEW;
END
$$;
REVOKE ALL ON FUNCTION outbox_dispatcher.capacity_outbox_ordering_reactivate() FROM PUBLIC;

-- Sorts after capacity_outbox_dedupe_reactivate: a replay the dedupe trigger skips stays dead
-- and never reaches this one.
DROP TRIGGER IF EXISTS capacity_outbox_ordering_reactivate ON public.capacity_outbox;
CREATE TRIGGER capacity_outbox_ordering_reactivate
  BEFORE UPDATE OF status ON public.capacity_outbox
  FOR EACH ROW
  WHEN (OLD.status IN ('done', 'dead') AND NEW.status = 'pending' AND NEW.ordering_key IS NOT NULL)
  EXECUTE FUNCTION outbox_dispatcher.capacity_outbox_ordering_reactivate();

---------------------------------------------------------------------------------------
-- The head finishes: done moves the key on, dead blocks it. Runs in the completion (or
-- rescue, or supersede) statement itself; never waits for a producer.
---------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION outbox_dispatcher.capacity_outbox_ordering_settle()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  IF OLD.status IN ('pending', 'processing') THEN
    -- A waiting event set aside by hand leaves the head where it is.
    IF OLD.status = 'pending' AND OLD.next_attempt_at = 'infinity' THEN
      RETURN NULL;
    END IF;
    IF NEW.status = 'dead' THEN
      INSERT INTO outbox_dispatcher.capacity_outbox_ordering_blocked
        (restaurant_id, ordering_key, event_id, event_created_at)
      VALUES (NEW.restaurant_id, NEW.ordering_key, NEW.id, NEW.created_at)
      ON CONFLICT DO NOTHING;
      RETURN NULL;
    END IF;
    PERFORM outbox_dispatcher.capacity_outbox_ordering_advance(NEW.restaurant_id, NEW.ordering_key);
  ELSIF OLD.status = 'dead' AND NEW.status = 'done' THEN
    -- A blocked head marked done by hand: the key moves on as if it had been skipped.
    DELETE FROM outbox_dispatcher.capacity_outbox_ordering_blocked b WHERE b.event_id = OLD.id;
    IF FOUND THEN
      PERFORM outbox_dispatcher.capacity_outbox_ordering_advance(NEW.restaurant_id, NEW.ordering_key);
    END IF;
  END IF;
  RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION outbox_dispatcher.capacity_outbox_ordering_settle() FROM PUBLIC;

DROP TRIGGER IF EXISTS capacity_outbox_ordering_settle ON public.capacity_outbox;
CREATE TRIGGER capacity_outbox_ordering_settle
  AFTER UPDATE OF status ON public.capacity_outbox
  FOR EACH ROW
  WHEN (OLD.status IS DISTINCT FROM NEW.status AND NEW.status IN ('done', 'dead')
        AND NEW.ordering_key IS NOT NULL)
  EXECUTE FUNCTION outbox_dispatcher.capacity_outbox_ordering_settle();

---------------------------------------------------------------------------------------
-- Skip: a dead head is set aside (it stays dead, replayable) and its key moves on. Used by
-- the daemon for routes with ordering.onDeadHead = skip and by `events skip`.
-- Returns 'skipped', or 'not_blocking' when the event does not block a key (nothing changed).
---------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION outbox_dispatcher.capacity_outbox_ordering_skip(p_event_id uuid, p_note text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  b outbox_dispatcher.capacity_outbox_ordering_blocked;
BEGIN
  DELETE FROM outbox_dispatcher.capacity_outbox_ordering_blocked x WHERE x.event_id = p_event_id
  RETURNING x.* INTO b;
  IF NOT FOUND THEN
    RETURN 'not_blocking';
  END IF;
  UPDATE public.capacity_outbox o
  SET last_error = left('skipped (ordering key moved on' || COALESCE(': ' || p_note, '') || '); '
                        || COALESCE(o.last_error, ''), 4000)
  WHERE o.id = b.event_id AND o.created_at = b.event_created_at;
  PERFORM outbox_dispatcher.capacity_outbox_ordering_advance(b.restaurant_id, b.ordering_key);
  RETURN 'skipped';
END
$$;
REVOKE ALL ON FUNCTION outbox_dispatcher.capacity_outbox_ordering_skip(uuid, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION outbox_dispatcher.capacity_outbox_ordering_skip(uuid, text) TO app_background;

---------------------------------------------------------------------------------------
-- The settler: moves on keys whose completion found the key's lock held by a producer.
-- Called by the daemon every few hundred milliseconds; costs one index probe when idle.
-- Returns how many keys it settled (keys still held stay for the next call).
---------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION outbox_dispatcher.capacity_outbox_ordering_settle_pending(p_limit integer)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  k record;
  n integer := 0;
BEGIN
  FOR k IN SELECT DISTINCT u.restaurant_id, u.ordering_key
           FROM (SELECT restaurant_id, ordering_key FROM outbox_dispatcher.capacity_outbox_ordering_unsettled
                 ORDER BY since LIMIT p_limit) u
  LOOP
    IF outbox_dispatcher.capacity_outbox_ordering_try_lock(k.restaurant_id, k.ordering_key) THEN
      DELETE FROM outbox_dispatcher.capacity_outbox_ordering_unsettled u
      WHERE u.restaurant_id = k.restaurant_id AND u.ordering_key = k.ordering_key;
      PERFORM outbox_dispatcher.capacity_outbox_ordering_advance_locked(k.restaurant_id, k.ordering_key);
      n := n + 1;
    ELSE
      -- Still held (a long producer transaction): to the back, so it cannot starve the rest.
      UPDATE outbox_dispatcher.capacity_outbox_ordering_unsettled u SET since = now()
      WHERE u.restaurant_id = k.restaurant_id AND u.ordering_key = k.ordering_key;
    END IF;
  END LOOP;
  RETURN n;
END
$$;
REVOKE ALL ON FUNCTION outbox_dispatcher.capacity_outbox_ordering_settle_pending(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION outbox_dispatcher.capacity_outbox_ordering_settle_pending(integer) TO app_background;

---------------------------------------------------------------------------------------
-- The claim returns the event's ordering key and sequence (sinks deliver the sequence).
-- Only the returned columns change: the walk, its planner settings and the claim cursor are
-- migration 0004's, unchanged (0004 has landed and is not edited; a RETURNS TABLE change
-- needs DROP + CREATE, in this migration's transaction, so callers never see it missing).
---------------------------------------------------------------------------------------
DROP FUNCTION IF EXISTS outbox_dispatcher.claim_batch(text, integer, integer, integer, timestamptz);
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
  )
  SELECT c.id, c.created_at::text, c.created_at, c.restaurant_id, c.event_type,
         CASE WHEN c.measured_bytes > p_max_payload_bytes THEN NULL ELSE c.payload END,
         c.measured_bytes, c.dedupe_key, c.idempotency_key, c.headers, c.attempts, c.due_at,
         c.ordering_key, c.ordering_seq
  FROM claimed c;
END
$$;
REVOKE ALL ON FUNCTION outbox_dispatcher.claim_batch(text, integer, integer, integer, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION outbox_dispatcher.claim_batch(text, integer, integer, integer, timestamptz) TO app_background;
