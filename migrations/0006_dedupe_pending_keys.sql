-- Dedupe revision (docs/adr/0001-active-event-dedupe.md, "Revision 2026-11-30").
-- 1. A key is held only while its event is *pending* (queued, payload not yet handed to a
--    worker). Once a worker claims the event the key is free, so a newer event of the same
--    key is accepted and delivered after it instead of being dropped unseen.
-- 2. An event going back to pending (retry, release, expired lease) while a newer event of
--    its key is queued is superseded by that newer event: it ends 'done' with a last_error
--    naming the newer event and dispatched_at NULL (the newer one carries the key's latest
--    state and is delivered instead). A replayed dead event whose key is taken stays dead.
-- 3. The insert trigger checks the tenant before touching the key table, so a producer can
--    no longer learn whether another tenant holds a key (RLS WITH CHECK runs only after
--    BEFORE ROW triggers).
-- 4. REPEATABLE READ / SERIALIZABLE producers: ON CONFLICT DO NOTHING raises 40001 when the
--    conflicting key row is invisible to the snapshot; those isolation levels use a plain
--    INSERT whose unique violation is caught, so the duplicate is dropped, not the transaction.

-- Takes the key for an event becoming pending. Returns the id of the event holding the key
-- afterwards: p_event_id when taken, the holder's id when another pending event has it (NULL
-- when that holder is not visible to a REPEATABLE READ snapshot). SECURITY DEFINER (no role may touch the key table directly);
-- it re-checks the tenant so that calling it directly reveals nothing about other tenants.
CREATE OR REPLACE FUNCTION outbox_dispatcher.capacity_outbox_take_key(
  p_restaurant_id uuid, p_event_type text, p_dedupe_key text, p_idempotency_key text,
  p_event_id uuid, p_event_created_at timestamptz)
RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  ctx uuid := public.current_restaurant_id();
  holder uuid;
BEGIN
  IF pg_trigger_depth() < 1 THEN
    RAISE EXCEPTION 'capacity_outbox_take_key is only called by the capacity_outbox triggers'
      USING ERRCODE = 'insufficient_privilege';
  END IF;
  IF ctx IS NOT NULL AND ctx IS DISTINCT FROM p_restaurant_id THEN
    RAISE EXCEPTION 'new row violates row-level security policy for table "capacity_outbox"'
      USING ERRCODE = 'insufficient_privilege';
  END IF;
  -- Without a context only a producer login is refused (as RLS refuses it); the daemon and
  -- maintenance work across tenants with no context set.
  IF ctx IS NULL AND pg_has_role(session_user, 'app_producer', 'MEMBER')
     AND NOT pg_has_role(session_user, 'app_background', 'MEMBER')
     AND NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = session_user AND (rolsuper OR rolbypassrls)) THEN
    PERFORM public.require_restaurant_context();
  END IF;

  IF current_setting('transaction_isolation') = 'read committed' THEN
    INSERT INTO outbox_dispatcher.capacity_outbox_active_keys
      (restaurant_id, event_type, dedupe_key, idempotency_key, event_id, event_created_at)
    VALUES (p_restaurant_id, p_event_type, p_dedupe_key, p_idempotency_key, p_event_id, p_event_created_at)
    ON CONFLICT (restaurant_id, event_type, dedupe_key, idempotency_key) DO NOTHING;
    IF FOUND THEN
      RETURN p_event_id;
    END IF;
  ELSE
    -- A plain INSERT checks the unique index against committed rows whatever the snapshot,
    -- where ON CONFLICT would raise a serialization failure (the subtransaction is the price,
    -- paid only at these isolation levels).
    BEGIN
      INSERT INTO outbox_dispatcher.capacity_outbox_active_keys
        (restaurant_id, event_type, dedupe_key, idempotency_key, event_id, event_created_at)
      VALUES (p_restaurant_id, p_event_type, p_dedupe_key, p_idempotency_key, p_event_id, p_event_created_at);
      RETURN p_event_id;
    EXCEPTION WHEN unique_violation THEN
      NULL;
    END;
  END IF;
  SELECT k.event_id INTO holder FROM outbox_dispatcher.capacity_outbox_active_keys k
  WHERE k.restaurant_id = p_restaurant_id AND k.event_type = p_event_type
    AND k.dedupe_key = p_dedupe_key AND k.idempotency_key = p_idempotency_key;
  RETURN holder;
END
$$;
REVOKE ALL ON FUNCTION outbox_dispatcher.capacity_outbox_take_key(uuid, text, text, text, uuid, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION outbox_dispatcher.capacity_outbox_take_key(uuid, text, text, text, uuid, timestamptz)
  TO app_producer, app_background;

-- BEFORE INSERT: runs as the inserting role (SECURITY INVOKER) so the tenant check below sees
-- the same role RLS will; the key table is only reached through capacity_outbox_take_key.
CREATE OR REPLACE FUNCTION outbox_dispatcher.capacity_outbox_acquire_key()
RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  ctx    uuid;
  holder uuid;
BEGIN
  IF TG_OP = 'INSERT' AND row_security_active('public.capacity_outbox'::regclass) THEN
    -- The same verdict, and the same error, as the RLS WITH CHECK that would run after us:
    -- a producer gets "tenant context missing" or an RLS violation for another tenant's row
    -- whether or not that tenant holds the key.
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

  holder := outbox_dispatcher.capacity_outbox_take_key(NEW.restaurant_id, NEW.event_type,
    COALESCE(NEW.dedupe_key, ''), COALESCE(NEW.idempotency_key, ''), NEW.id, NEW.created_at);
  IF holder IS NOT DISTINCT FROM NEW.id THEN
    RETURN NEW;
  END IF;
  IF TG_OP = 'UPDATE' AND OLD.status = 'processing' THEN
    -- Retry, release or expired lease of an event whose key a newer queued event took:
    -- the newer event carries the key's latest state and is delivered instead.
    NEW.status := 'done';
    NEW.last_error := 'superseded by event ' || COALESCE(holder::text, '?')
      || ' (same dedupe key, queued while this one was in flight)';
    NEW.locked_by := NULL;
    NEW.locked_until := NULL;
    RETURN NEW;
  END IF;
  -- A duplicate insert, or a replay of a dead/done event while another event holds the key:
  -- skip the row (INSERT reports 0 rows; the replay leaves the event as it was).
  RETURN NULL;
END
$$;
-- Firing a trigger needs no EXECUTE on its function; the function it calls does (granted above).
REVOKE ALL ON FUNCTION outbox_dispatcher.capacity_outbox_acquire_key() FROM PUBLIC;

DROP TRIGGER IF EXISTS capacity_outbox_dedupe_insert ON public.capacity_outbox;
CREATE TRIGGER capacity_outbox_dedupe_insert
  BEFORE INSERT ON public.capacity_outbox
  FOR EACH ROW
  WHEN (NEW.status = 'pending'
        AND (NEW.dedupe_key IS NOT NULL OR NEW.idempotency_key IS NOT NULL))
  EXECUTE FUNCTION outbox_dispatcher.capacity_outbox_acquire_key();

-- Any move back to pending re-takes the key: replay (dead/done -> pending) as before, and now
-- also retry/release/rescue (processing -> pending), since a claim gave the key up.
DROP TRIGGER IF EXISTS capacity_outbox_dedupe_reactivate ON public.capacity_outbox;
CREATE TRIGGER capacity_outbox_dedupe_reactivate
  BEFORE UPDATE OF status ON public.capacity_outbox
  FOR EACH ROW
  WHEN (OLD.status <> 'pending' AND NEW.status = 'pending'
        AND (NEW.dedupe_key IS NOT NULL OR NEW.idempotency_key IS NOT NULL))
  EXECUTE FUNCTION outbox_dispatcher.capacity_outbox_acquire_key();

-- Leaving pending (claim, or an operator marking a pending event done/dead) frees the key.
DROP TRIGGER IF EXISTS capacity_outbox_dedupe_release ON public.capacity_outbox;
CREATE TRIGGER capacity_outbox_dedupe_release
  AFTER UPDATE OF status ON public.capacity_outbox
  FOR EACH ROW
  WHEN (OLD.status = 'pending' AND NEW.status <> 'pending'
        AND (OLD.dedupe_key IS NOT NULL OR OLD.idempotency_key IS NOT NULL))
  EXECUTE FUNCTION outbox_dispatcher.capacity_outbox_release_key();

DROP TRIGGER IF EXISTS capacity_outbox_dedupe_delete ON public.capacity_outbox;
CREATE TRIGGER capacity_outbox_dedupe_delete
  AFTER DELETE ON public.capacity_outbox
  FOR EACH ROW
  WHEN (OLD.status = 'pending'
        AND (OLD.dedupe_key IS NOT NULL OR OLD.idempotency_key IS NOT NULL))
  EXECUTE FUNCTION outbox_dispatcher.capacity_outbox_release_key();

-- Under the old rule processing events held their keys; free them, or they would never be
-- released (the release trigger now fires only when an event leaves pending).
DELETE FROM outbox_dispatcher.capacity_outbox_active_keys k
WHERE NOT EXISTS (SELECT 1 FROM public.capacity_outbox o
                  WHERE o.id = k.event_id AND o.created_at = k.event_created_at AND o.status = 'pending');
