-- One rotator at a time across every replica, without session state.
-- The rotator used a session advisory lock, which a transaction-mode pooler (PgBouncer,
-- Supavisor) cannot hold: the unlock may run on another server session, leaving the lock
-- held forever there, or the lock may be taken on a session that another client reuses.
-- A lease row is taken and released by single statements, so it works through any pooler,
-- and a replica that dies holding it frees it when the lease expires (ADR 0010).
CREATE TABLE IF NOT EXISTS outbox_dispatcher.maintenance_leases (
  name        text        PRIMARY KEY,
  holder      text        NOT NULL,
  acquired_at timestamptz NOT NULL DEFAULT now(),
  expires_at  timestamptz NOT NULL,
  CONSTRAINT maintenance_leases_name CHECK (name ~ '^[a-z_][a-z0-9_.]{0,62}$'),
  CONSTRAINT maintenance_leases_holder CHECK (length(holder) BETWEEN 1 AND 300)
);
REVOKE ALL ON outbox_dispatcher.maintenance_leases FROM PUBLIC;

-- Takes (or renews, for the same holder) the lease `p_name` for `p_ttl_ms`; true when held.
-- ON CONFLICT ... WHERE updates only an expired lease or one's own: two replicas racing
-- serialise on the row, and exactly one of them gets a row back.
CREATE OR REPLACE FUNCTION outbox_dispatcher.maintenance_lease_take(p_name text, p_holder text, p_ttl_ms integer)
RETURNS boolean
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
  INSERT INTO outbox_dispatcher.maintenance_leases AS l (name, holder, acquired_at, expires_at)
  VALUES (p_name, p_holder, clock_timestamp(), clock_timestamp() + p_ttl_ms * interval '1 millisecond')
  ON CONFLICT (name) DO UPDATE
    SET holder      = EXCLUDED.holder,
        acquired_at = CASE WHEN l.holder = EXCLUDED.holder THEN l.acquired_at ELSE EXCLUDED.acquired_at END,
        expires_at  = EXCLUDED.expires_at
    WHERE l.expires_at < clock_timestamp() OR l.holder = EXCLUDED.holder
  RETURNING true
$$;

-- Gives the lease up early (only its holder can); false when it was not held by p_holder.
CREATE OR REPLACE FUNCTION outbox_dispatcher.maintenance_lease_release(p_name text, p_holder text)
RETURNS boolean
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
  WITH gone AS (
    DELETE FROM outbox_dispatcher.maintenance_leases WHERE name = p_name AND holder = p_holder RETURNING 1
  )
  SELECT EXISTS (SELECT 1 FROM gone)
$$;

REVOKE ALL ON FUNCTION outbox_dispatcher.maintenance_lease_take(text, text, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION outbox_dispatcher.maintenance_lease_release(text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION outbox_dispatcher.maintenance_lease_take(text, text, integer) TO app_background;
GRANT EXECUTE ON FUNCTION outbox_dispatcher.maintenance_lease_release(text, text) TO app_background;
