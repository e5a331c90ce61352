-- Roles and tenancy helpers (plan, Epic F). Roles are cluster-wide, so creation
-- tolerates a concurrent migration of another database in the same cluster.

DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'app_background') THEN
    BEGIN
      CREATE ROLE app_background NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
    END;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'app_producer') THEN
    BEGIN
      CREATE ROLE app_producer NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
    END;
  END IF;
END
$$;

-- The daemon's own bookkeeping lives apart from the platform's public schema.
CREATE SCHEMA IF NOT EXISTS outbox_dispatcher;
REVOKE ALL ON SCHEMA outbox_dispatcher FROM PUBLIC;

-- Roles that may call require_restaurant_context() without a tenant (they get
-- NULL, which matches no row, instead of an error). Empty by default; only the
-- schema owner can add to it.
CREATE TABLE IF NOT EXISTS public.tenant_context_exempt_roles (
  role_name name PRIMARY KEY,
  reason text NOT NULL,
  added_at timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON public.tenant_context_exempt_roles FROM PUBLIC;
GRANT SELECT ON public.tenant_context_exempt_roles TO PUBLIC;

CREATE OR REPLACE FUNCTION public.current_restaurant_id()
RETURNS uuid
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog
AS $$
  SELECT NULLIF(current_setting('app.restaurant_id', true), '')::uuid
$$;

CREATE OR REPLACE FUNCTION public.require_restaurant_context()
RETURNS uuid
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog
AS $$
DECLARE
  tenant uuid := public.current_restaurant_id();
BEGIN
  IF tenant IS NOT NULL THEN
    RETURN tenant;
  END IF;
  IF EXISTS (
    SELECT 1
    FROM public.tenant_context_exempt_roles e
    JOIN pg_roles r ON r.rolname = e.role_name
    WHERE pg_has_role(current_user, r.oid, 'MEMBER')
  ) THEN
    RETURN NULL;
  END IF;
  RAISE EXCEPTION 'tenant context missing: app.restaurant_id is not set for role %', current_user
    USING ERRCODE = 'insufficient_privilege',
          HINT = 'call public.set_restaurant_context(<restaurant uuid>) in the same transaction first';
END
$$;

CREATE OR REPLACE FUNCTION public.set_restaurant_context(p_restaurant_id uuid)
RETURNS uuid
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog
AS $$
BEGIN
  IF p_restaurant_id IS NULL THEN
    RAISE EXCEPTION 'set_restaurant_context: restaurant id must not be null'
      USING ERRCODE = 'null_value_not_allowed';
  END IF;
  -- Transaction-local: a pooled connection never leaks one tenant into the next.
  PERFORM set_config('app.restaurant_id', p_restaurant_id::text, true);
  RETURN p_restaurant_id;
END
$$;

REVOKE ALL ON FUNCTION public.current_restaurant_id() FROM PUBLIC;
REVOKE ALL ON FUNCTION public.require_restaurant_context() FROM PUBLIC;
REVOKE ALL ON FUNCTION public.set_restaurant_context(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.current_restaurant_id() TO PUBLIC;
GRANT EXECUTE ON FUNCTION public.require_restaurant_context() TO PUBLIC;
GRANT EXECUTE ON FUNCTION public.set_restaurant_context(uuid) TO PUBLIC;
