-- Helpers the planner can inline, and a claim-time helper whose plan is cached
-- (docs/adr/0006-backlog-proof-claim.md, "Functions on the claim path").
--
-- Found with perf on a backend running the claim bench's committed claims (1M rows over nine
-- partitions, claims of 100): about a fifth of PostgreSQL's time was fmgr_sql, parsing and
-- planning the same three SQL functions again in every statement that called them.
--
-- * public.current_restaurant_id() sits in the daemon's RLS policy on capacity_outbox (the
--   producer policy calls require_restaurant_context(), which stays as it is) and in the insert
--   triggers, once per inserted row. A SET clause on a function forbids inlining, and makes each call a GUC
--   save/restore plus a fresh parse and plan of its body. It pinned search_path so that a
--   caller's search_path could not swap current_setting() or the text "=" that NULLIF uses
--   for its own and read another tenant's rows. A SQL-standard body (RETURN ...) gives the
--   same protection another way: it is parsed here, under the search_path set below, and
--   stored as a parse tree, so every name in it is bound now, not at call time. With no SET
--   clause the planner inlines it: the policy's InitPlan evaluates current_setting() directly.
-- * outbox_dispatcher.uuid_v7(), the id column's default, was the same per inserted row.
--   Written the same way, the default becomes an inline expression. Still VOLATILE; still
--   executable only by the roles granted in 0012 (the planner does not inline a function the
--   caller may not execute, so the permission error stays).
-- * capacity_outbox_release_claimed_keys() runs once per claim. As a SQL function its DELETE
--   over every partition was planned on every call; as plpgsql the plan is cached per session.
--   Its semantics are unchanged: VOLATILE, so its statement takes a snapshot that sees the
--   calling claim's UPDATE. The cached plan is made under the planner settings of claim_batch,
--   its one caller in the daemon (a function's SET clauses hold for the functions it calls).
--
-- Measured on that bench (committed claims of 100 from the worker's cursor, head lane only):
-- p50 5.5-6.3 ms before, 3.8-4.5 ms after.

SET LOCAL search_path = pg_catalog, pg_temp;

CREATE OR REPLACE FUNCTION public.current_restaurant_id()
RETURNS uuid
LANGUAGE sql STABLE PARALLEL SAFE
RETURN NULLIF(pg_catalog.current_setting('app.restaurant_id', true), '')::pg_catalog.uuid;

CREATE OR REPLACE FUNCTION outbox_dispatcher.uuid_v7()
RETURNS uuid
LANGUAGE sql VOLATILE PARALLEL SAFE
-- A version-4 uuid with its first 6 bytes replaced by the millisecond clock, and the version
-- nibble turned from 4 (0100) into 7 (0111) by setting its two low bits. (overlay ... PLACING
-- and substring ... FROM are SQL syntax, which the grammar itself maps to pg_catalog.)
RETURN pg_catalog.encode(
         pg_catalog.set_bit(pg_catalog.set_bit(
           overlay(pg_catalog.uuid_send(pg_catalog.gen_random_uuid())
                   PLACING substring(pg_catalog.int8send(pg_catalog.floor(EXTRACT(epoch FROM pg_catalog.clock_timestamp()) * 1000)::bigint) FROM 3)
                   FROM 1 FOR 6),
           52, 1), 53, 1),
         'hex')::pg_catalog.uuid;

CREATE OR REPLACE FUNCTION outbox_dispatcher.capacity_outbox_release_claimed_keys(p_event_ids uuid[])
RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  n integer;
BEGIN
  WITH freed AS (
    DELETE FROM outbox_dispatcher.capacity_outbox_active_keys k
    WHERE k.event_id = ANY (p_event_ids)
      -- "IS NOT FALSE", not a plain "status = 'pending'": each event must be found through its
      -- primary key (migration 0012 says what the plain form was planned as).
      AND NOT EXISTS (SELECT 1 FROM public.capacity_outbox o
                      WHERE o.id = k.event_id AND o.created_at = k.event_created_at
                        AND (o.status = 'pending') IS NOT FALSE)
    RETURNING 1)
  SELECT count(*)::integer INTO n FROM freed;
  RETURN n;
END
$$;
