-- Which pending event holds a dedupe key, read from the key table itself (issue 14).
--
-- `enqueue` reports the event that holds the key of a dropped duplicate. It used to find it
-- by restating the trigger's key (tenant, type, dedupe and idempotency keys with NULL as '')
-- against capacity_outbox, a second definition of a key that could drift from the trigger's,
-- read through an index that does not cover the keys. The key table is the definition: this
-- function reads it by its primary key. SECURITY DEFINER because no role may read the key
-- table directly; it answers only for the tenant of the caller's context (another tenant's key
-- reads as not held, the same answer as a free key), and a producer without a context gets
-- require_restaurant_context()'s error.
CREATE OR REPLACE FUNCTION outbox_dispatcher.capacity_outbox_key_holder(
  p_restaurant_id uuid, p_event_type text, p_dedupe_key text, p_idempotency_key text)
RETURNS uuid
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT k.event_id
  FROM outbox_dispatcher.capacity_outbox_active_keys k
  WHERE p_restaurant_id = public.require_restaurant_context()
    AND k.restaurant_id = p_restaurant_id
    AND k.event_type = p_event_type
    AND k.dedupe_key = COALESCE(p_dedupe_key, '')
    AND k.idempotency_key = COALESCE(p_idempotency_key, '')
$$;
REVOKE ALL ON FUNCTION outbox_dispatcher.capacity_outbox_key_holder(uuid, text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION outbox_dispatcher.capacity_outbox_key_holder(uuid, text, text, text) TO app_producer;
