-- JIT off in the functions that switch planner methods off (docs/adr/0006-backlog-proof-claim.md,
-- "Functions on the claim path").
--
-- These functions pin their plans by disabling sorts, bitmaps, sequential scans and some joins
-- (migrations 0004, 0010, 0012, 0014, 0018, 0019). When a plan cannot avoid a disabled method (a
-- partition without the index the walk expects, say), PostgreSQL keeps it and adds 1e10 to its
-- cost, and that cost is far above jit_above_cost (100,000 by default, and JIT is on by default
-- wherever the server is built with LLVM, Supabase included): every execution of the statement
-- would then be compiled to machine code again, about half a second each time on this machine
-- (measured while profiling the settle: 535 ms of JIT for a 5 ms statement). A claim or a settle
-- never runs long enough to repay that; a slow plan should stay only slow.
ALTER FUNCTION outbox_dispatcher.claim_batch(text, integer, integer, integer, timestamptz) SET jit = off;
ALTER FUNCTION outbox_dispatcher.claim_batch(text, integer, integer, integer, timestamptz, uuid, integer, integer, integer) SET jit = off;
ALTER FUNCTION outbox_dispatcher.capacity_outbox_ordering_advance_locked(uuid, text) SET jit = off;
ALTER FUNCTION outbox_dispatcher.capacity_outbox_ordering_settle_keys(uuid[], text[], uuid[], timestamptz[]) SET jit = off;
ALTER FUNCTION outbox_dispatcher.capacity_outbox_ordering_settle_completed(uuid[], timestamptz[]) SET jit = off;
