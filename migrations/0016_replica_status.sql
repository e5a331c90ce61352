-- What each replica's sinks look like from inside it (issue 13: `sinks status` shows circuit
-- state and events in flight). A circuit breaker and the sends in flight live in one process;
-- every replica writes its own rows here every OUTBOX_STATUS_REPORT_MS, so one command sees
-- them all. A row is a report, not a control: nothing reads it to decide what to send.
CREATE TABLE IF NOT EXISTS outbox_dispatcher.replica_sink_status (
  worker_id   text        NOT NULL,
  sink        text        NOT NULL,
  circuit     text        NOT NULL,
  in_flight   integer     NOT NULL,
  -- The replica's report interval: a row not refreshed within 3 of them is a gone replica's.
  report_ms   integer     NOT NULL,
  updated_at  timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT replica_sink_status_pkey PRIMARY KEY (worker_id, sink),
  CONSTRAINT replica_sink_status_worker CHECK (length(worker_id) BETWEEN 1 AND 200),
  CONSTRAINT replica_sink_status_sink CHECK (sink ~ '^[A-Za-z0-9_.:-]{1,64}$'),
  CONSTRAINT replica_sink_status_circuit CHECK (circuit IN ('closed', 'open', 'half_open')),
  CONSTRAINT replica_sink_status_in_flight CHECK (in_flight BETWEEN 0 AND 1000000),
  CONSTRAINT replica_sink_status_report_ms CHECK (report_ms BETWEEN 1 AND 3600000)
);
REVOKE ALL ON outbox_dispatcher.replica_sink_status FROM PUBLIC;
GRANT SELECT ON outbox_dispatcher.replica_sink_status TO app_background;

-- One replica's report, in one statement: its rows for p_rows (a jsonb array of
-- {sink, circuit, in_flight}) are written, its rows for sinks not in p_rows are removed (an
-- empty array: the replica is stopping), and any replica's rows not refreshed for an hour
-- (a replica that died) are removed. Returns the number of rows written. The daemon's login
-- writes the table only through this function.
CREATE OR REPLACE FUNCTION outbox_dispatcher.replica_sink_status_report(p_worker text, p_report_ms integer, p_rows jsonb)
RETURNS integer
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
  WITH r AS (
    SELECT x.sink, x.circuit, x.in_flight
    FROM jsonb_to_recordset(COALESCE(p_rows, '[]'::jsonb)) AS x(sink text, circuit text, in_flight integer)
  ), written AS (
    INSERT INTO outbox_dispatcher.replica_sink_status AS s (worker_id, sink, circuit, in_flight, report_ms, updated_at)
    SELECT p_worker, r.sink, r.circuit, r.in_flight, p_report_ms, now() FROM r
    ON CONFLICT (worker_id, sink) DO UPDATE
      SET circuit = EXCLUDED.circuit, in_flight = EXCLUDED.in_flight, report_ms = EXCLUDED.report_ms, updated_at = EXCLUDED.updated_at
    RETURNING 1
  ), removed AS (
    -- This replica's own rows are either written above or removed here, never both.
    DELETE FROM outbox_dispatcher.replica_sink_status s
    WHERE CASE WHEN s.worker_id = p_worker THEN NOT EXISTS (SELECT 1 FROM r WHERE r.sink = s.sink)
               ELSE s.updated_at < now() - interval '1 hour' END
    RETURNING 1
  )
  SELECT count(*)::integer FROM written
$$;
REVOKE ALL ON FUNCTION outbox_dispatcher.replica_sink_status_report(text, integer, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION outbox_dispatcher.replica_sink_status_report(text, integer, jsonb) TO app_background;
