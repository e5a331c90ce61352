-- On-call controls (docs/adr/0014-sink-pause-and-audit-trail.md): an audit trail of operator
-- actions, and sink pauses that every replica obeys.
--
-- The CLI's operator commands connect with the daemon's login (app_background). They write
-- these tables only through the SECURITY DEFINER functions below, which take "who" from the
-- session itself (session_user, the role setting), never from the caller: a login that may
-- run an operator command cannot write an audit row in someone else's name, nor rewrite or
-- delete one.

---------------------------------------------------------------------------------------
-- Audit trail.
---------------------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS outbox_dispatcher.operator_audit (
  id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  at           timestamptz NOT NULL DEFAULT now(),
  -- The login the command connected as, and the role it worked as (SET ROLE / startup option).
  login_role   text        NOT NULL,
  work_role    text        NOT NULL,
  -- The operating-system user who ran the CLI, as the CLI reports it (not verifiable here).
  os_user      text,
  action       text        NOT NULL,
  command      text        NOT NULL,
  filter       jsonb       NOT NULL DEFAULT '{}'::jsonb,
  -- Rows (events, sinks, DDL statements) the action changed so far. A batched action adds to
  -- it in the same transaction as each batch, so the count never runs ahead of the change.
  rows         bigint      NOT NULL DEFAULT 0,
  finished_at  timestamptz,
  result       text,
  CONSTRAINT operator_audit_action CHECK (action ~ '^[a-z][a-z_.-]{0,62}$'),
  CONSTRAINT operator_audit_command CHECK (length(command) BETWEEN 1 AND 200),
  CONSTRAINT operator_audit_os_user CHECK (os_user IS NULL OR length(os_user) <= 200),
  CONSTRAINT operator_audit_result CHECK (result IS NULL OR length(result) <= 2000)
);
CREATE INDEX IF NOT EXISTS operator_audit_at_idx ON outbox_dispatcher.operator_audit (at);
REVOKE ALL ON outbox_dispatcher.operator_audit FROM PUBLIC;
GRANT SELECT ON outbox_dispatcher.operator_audit TO app_background;

-- Opens an audit entry and returns its id. Call it in the transaction that makes the change
-- (or before the first batch of a batched change, which then adds its rows per batch).
CREATE OR REPLACE FUNCTION outbox_dispatcher.operator_audit_begin(
  p_action text, p_command text, p_filter jsonb, p_os_user text)
RETURNS bigint
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
  INSERT INTO outbox_dispatcher.operator_audit (login_role, work_role, os_user, action, command, filter)
  VALUES (session_user, COALESCE(NULLIF(current_setting('role'), 'none'), session_user),
          left(p_os_user, 200), p_action, left(p_command, 200), COALESCE(p_filter, '{}'::jsonb))
  RETURNING id
$$;

-- Adds rows to an open entry of this login; with p_result, closes it.
CREATE OR REPLACE FUNCTION outbox_dispatcher.operator_audit_add(p_id bigint, p_rows bigint, p_result text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  UPDATE outbox_dispatcher.operator_audit a
  SET rows        = a.rows + COALESCE(p_rows, 0),
      finished_at = CASE WHEN p_result IS NULL THEN NULL ELSE now() END,
      result      = left(p_result, 2000)
  WHERE a.id = p_id AND a.login_role = session_user AND a.finished_at IS NULL;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'operator audit entry % is not open for this login', p_id USING ERRCODE = 'no_data_found';
  END IF;
END
$$;

REVOKE ALL ON FUNCTION outbox_dispatcher.operator_audit_begin(text, text, jsonb, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION outbox_dispatcher.operator_audit_add(bigint, bigint, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION outbox_dispatcher.operator_audit_begin(text, text, jsonb, text) TO app_background;
GRANT EXECUTE ON FUNCTION outbox_dispatcher.operator_audit_add(bigint, bigint, text) TO app_background;

---------------------------------------------------------------------------------------
-- Sink pauses. A row here pauses the sink on every replica (each polls this table).
---------------------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS outbox_dispatcher.sink_pauses (
  sink        text        PRIMARY KEY,
  paused_at   timestamptz NOT NULL DEFAULT now(),
  login_role  text        NOT NULL,
  os_user     text,
  reason      text        NOT NULL,
  CONSTRAINT sink_pauses_sink CHECK (sink ~ '^[A-Za-z0-9_.:-]{1,64}$'),
  CONSTRAINT sink_pauses_reason CHECK (length(reason) BETWEEN 1 AND 500)
);
REVOKE ALL ON outbox_dispatcher.sink_pauses FROM PUBLIC;
GRANT SELECT ON outbox_dispatcher.sink_pauses TO app_background;

-- Events of a paused sink that a worker claimed and gave back ("parked"): pending, the
-- claim's attempt not counted, next_attempt_at = the parked horizon below, so the claim
-- (which walks the dispatch index from the near end) never reads them again. Waiting events
-- of an ordering key (0010) use 'infinity' and are not in this table: parked and waiting are
-- told apart by both. Only a key's head is ever claimed, so parking keeps the key's order.
CREATE TABLE IF NOT EXISTS outbox_dispatcher.sink_parked (
  event_id         uuid        NOT NULL,
  event_created_at timestamptz NOT NULL,
  sink             text        NOT NULL,
  parked_at        timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT sink_parked_pkey PRIMARY KEY (event_id, event_created_at)
);
CREATE INDEX IF NOT EXISTS sink_parked_sink_idx ON outbox_dispatcher.sink_parked (sink);
REVOKE ALL ON outbox_dispatcher.sink_parked FROM PUBLIC;
GRANT SELECT ON outbox_dispatcher.sink_parked TO app_background;

-- The next_attempt_at of a parked event: finite (so never 'infinity', a waiting event's
-- mark) and beyond any real retry.
CREATE OR REPLACE FUNCTION outbox_dispatcher.sink_parked_horizon()
RETURNS timestamptz
LANGUAGE sql IMMUTABLE
AS $$ SELECT '9999-12-31 00:00:00+00'::timestamptz $$;
GRANT EXECUTE ON FUNCTION outbox_dispatcher.sink_parked_horizon() TO app_background;

-- Pauses a sink: 'paused', or 'already_paused' (the first pause's who, since and reason stay).
CREATE OR REPLACE FUNCTION outbox_dispatcher.sink_pause(p_sink text, p_reason text, p_os_user text, p_command text)
RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  audit_id bigint := outbox_dispatcher.operator_audit_begin('sink.pause', p_command,
                       jsonb_build_object('sink', p_sink, 'reason', p_reason), p_os_user);
BEGIN
  INSERT INTO outbox_dispatcher.sink_pauses (sink, login_role, os_user, reason)
  VALUES (p_sink, session_user, left(p_os_user, 200), p_reason)
  ON CONFLICT (sink) DO NOTHING;
  IF NOT FOUND THEN
    PERFORM outbox_dispatcher.operator_audit_add(audit_id, 0, 'already_paused');
    RETURN 'already_paused';
  END IF;
  PERFORM outbox_dispatcher.operator_audit_add(audit_id, 1, 'paused');
  RETURN 'paused';
END
$$;

-- Resumes a sink and makes its parked events due again, in one transaction; returns how many
-- events were made due, or NULL when the sink was not paused.
CREATE OR REPLACE FUNCTION outbox_dispatcher.sink_resume(p_sink text, p_os_user text, p_command text)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  audit_id bigint := outbox_dispatcher.operator_audit_begin('sink.resume', p_command,
                       jsonb_build_object('sink', p_sink), p_os_user);
  n bigint;
BEGIN
  -- Deleting the pause row waits for any park still holding it (FOR SHARE in sink_park):
  -- every park either committed before (and is made due below) or sees no pause.
  DELETE FROM outbox_dispatcher.sink_pauses WHERE sink = p_sink;
  IF NOT FOUND THEN
    PERFORM outbox_dispatcher.operator_audit_add(audit_id, 0, 'not_paused');
    RETURN NULL;
  END IF;
  n := outbox_dispatcher.sink_unpark(p_sink);
  PERFORM outbox_dispatcher.operator_audit_add(audit_id, n, format('resumed; %s parked event(s) due', n));
  RETURN n;
END
$$;

-- Makes the parked events of p_sink due again: one statement, through sink_parked's index
-- and each event's primary key. Returns how many.
CREATE OR REPLACE FUNCTION outbox_dispatcher.sink_unpark(p_sink text)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  n bigint;
BEGIN
  WITH gone AS (
    DELETE FROM outbox_dispatcher.sink_parked p WHERE p.sink = p_sink
    RETURNING p.event_id, p.event_created_at
  ), due AS (
    UPDATE public.capacity_outbox o SET next_attempt_at = now()
    FROM gone g
    WHERE o.id = g.event_id AND o.created_at = g.event_created_at
      AND o.status = 'pending' AND o.next_attempt_at = outbox_dispatcher.sink_parked_horizon()
    RETURNING 1
  )
  SELECT count(*) INTO n FROM due;
  IF n > 0 THEN
    PERFORM pg_notify('capacity_outbox', '');
  END IF;
  RETURN n;
END
$$;

-- A worker gives a claimed event of a paused sink back: pending, attempt not counted,
-- parked. Only while the pause row exists (held FOR SHARE until commit, see sink_resume) and
-- only for the worker's own lease at that attempt. true when parked; false: send it.
CREATE OR REPLACE FUNCTION outbox_dispatcher.sink_park(
  p_sink text, p_worker text, p_id uuid, p_created_at timestamptz, p_attempt integer)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  PERFORM 1 FROM outbox_dispatcher.sink_pauses WHERE sink = p_sink FOR SHARE;
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  UPDATE public.capacity_outbox o
  SET status = 'pending', attempts = o.attempts - 1,
      next_attempt_at = outbox_dispatcher.sink_parked_horizon(),
      locked_by = NULL, locked_until = NULL
  WHERE o.id = p_id AND o.created_at = p_created_at
    AND o.status = 'processing' AND o.locked_by = p_worker AND o.attempts = p_attempt;
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  INSERT INTO outbox_dispatcher.sink_parked (event_id, event_created_at, sink)
  VALUES (p_id, p_created_at, p_sink)
  ON CONFLICT (event_id, event_created_at) DO UPDATE SET sink = EXCLUDED.sink, parked_at = now();
  RETURN true;
END
$$;

-- Parked events whose sink is no longer paused (its pause row removed by hand, or the sink
-- renamed away): made due again. The daemon calls it on each pause poll; when nothing is
-- parked it is one index probe.
CREATE OR REPLACE FUNCTION outbox_dispatcher.sink_unpark_orphans()
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  s text;
  n bigint := 0;
BEGIN
  FOR s IN SELECT DISTINCT p.sink FROM outbox_dispatcher.sink_parked p
           WHERE NOT EXISTS (SELECT 1 FROM outbox_dispatcher.sink_pauses x WHERE x.sink = p.sink) LOOP
    -- The same lock order as sink_resume, so a pause arriving meanwhile is not undone.
    PERFORM 1 FROM outbox_dispatcher.sink_pauses WHERE sink = s FOR SHARE;
    IF NOT FOUND THEN
      n := n + outbox_dispatcher.sink_unpark(s);
    END IF;
  END LOOP;
  RETURN n;
END
$$;

REVOKE ALL ON FUNCTION outbox_dispatcher.sink_pause(text, text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION outbox_dispatcher.sink_resume(text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION outbox_dispatcher.sink_unpark(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION outbox_dispatcher.sink_park(text, text, uuid, timestamptz, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION outbox_dispatcher.sink_unpark_orphans() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION outbox_dispatcher.sink_pause(text, text, text, text) TO app_background;
GRANT EXECUTE ON FUNCTION outbox_dispatcher.sink_resume(text, text, text) TO app_background;
GRANT EXECUTE ON FUNCTION outbox_dispatcher.sink_park(text, text, uuid, timestamptz, integer) TO app_background;
GRANT EXECUTE ON FUNCTION outbox_dispatcher.sink_unpark_orphans() TO app_background;
