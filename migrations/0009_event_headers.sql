-- Optional producer headers: a JSON object of string values (W3C trace context and other
-- metadata) that sinks forward with the message. Nullable with no default, so adding it
-- rewrites nothing. Validated by the dispatcher, not by a constraint: a producer's
-- transaction never fails on it; a malformed object is dead-lettered with the reason.
ALTER TABLE public.capacity_outbox ADD COLUMN IF NOT EXISTS headers jsonb;

GRANT INSERT (headers) ON public.capacity_outbox TO app_producer;
