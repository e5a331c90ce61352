-- Per-key ordering: the key settling statements get the plan they were written for, whatever the
-- planner's statistics say (the same measure ADR 0006 took for the claim).
--
-- Found by profiling a keyed drain (100,000 events over 10,000 keys, one worker): the batch
-- settle of migration 0017 took 75 µs per keyed event, over half of the drain's time. Its first
-- two statements join the completed batch's ids to capacity_outbox by primary key, but with a
-- filter on status the planner expected one row per partition and chose a Seq Scan of every
-- partition, materialised once per call: two full scans of the table for every completion batch,
-- growing with the table (100,000 rows read to find 500). The head lookup of each key read the
-- key's whole queue and sorted it (Append + Sort) instead of the first entry of the ordering
-- index, so a key with a deep queue cost its depth on every settle, as did the per-key
-- capacity_outbox_ordering_advance_locked used by the trigger and the settler.
--
-- With these settings local to the functions the only plans left are the intended ones: primary-
-- key probes for the batch, one ordering-index descent per key (Merge Append over partitions).
-- Hash joins stay allowed: the batch's own key sets (at most a batch each) are compared by hash;
-- with hash joins off those anti-joins became nested loops of batch x batch comparisons.
-- test/ordering-plans.test.ts checks the executed plans with never-analyzed, stale and fresh
-- statistics.
ALTER FUNCTION outbox_dispatcher.capacity_outbox_ordering_settle_completed(uuid[], timestamptz[])
  SET enable_seqscan = off
  SET enable_sort = off
  SET enable_bitmapscan = off
  SET enable_mergejoin = off
  SET enable_material = off;

ALTER FUNCTION outbox_dispatcher.capacity_outbox_ordering_advance_locked(uuid, text)
  SET enable_seqscan = off
  SET enable_sort = off
  SET enable_bitmapscan = off;
