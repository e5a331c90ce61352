import { describe, expect } from 'vitest';
import { startDaemon } from './support/daemon.ts';
import { statusCounts, waitFor } from './support/db.ts';
import { it } from './support/fixtures.ts';

// Issue 9: with a backlog the worker claims full batches (not the handful of slots a
// finished event frees), read from the claim batch-size histogram.

describe('refill', () => {
  it.for([
    { batch: 100, concurrency: 32 },
    { batch: 50, concurrency: 200 },
  ])('claims full batches while a backlog drains (batch $batch, concurrency $concurrency)', async ({ batch, concurrency }, { db }) => {
    const total = 4000;
    await db.query(
      `INSERT INTO capacity_outbox (restaurant_id, event_type, payload, dedupe_key, next_attempt_at)
       SELECT ('00000000-0000-4000-8000-' || lpad((g % 20)::text, 12, '0'))::uuid, 'refill.e', jsonb_build_object('g', g), 'k' || g,
              now() - interval '1 min' + g * interval '1 ms'
       FROM generate_series(1, $1::int) g`,
      [total],
    );
    const daemon = await startDaemon(db, { env: { OUTBOX_BATCH_SIZE: String(batch), OUTBOX_CONCURRENCY: String(concurrency) } });
    try {
      await waitFor(async () => (await statusCounts(db)).done === total, { what: `${total} done`, timeoutMs: 60_000 });
    } finally {
      await daemon.stop();
    }
    const { values } = await daemon.metrics.claimBatchSize.get();
    const sum = values.find((v) => v.metricName === 'outbox_claim_batch_size_sum')!.value;
    const count = values.find((v) => v.metricName === 'outbox_claim_batch_size_count')!.value;
    const bucket = (le: number) => values.find((v) => v.metricName === 'outbox_claim_batch_size_bucket' && v.labels.le === le)!.value;
    const empty = bucket(0);
    expect(sum).toBe(total);
    // Every claim that found events was a full batch: total / batch of them (empty polls
    // after the drain are not refills and are left out).
    expect(count - empty).toBe(total / batch);
    expect(sum / (count - empty)).toBe(batch);
  });

  // The claim cursor follows the head lane only: a fair-lane row (another tenant's event due
  // just now) once moved the cursor past an old backlog, so the next claims found only the
  // newest events and came back short until the next walk from the head.
  it("claims stay full while another tenant's new events come through the fair lane", async ({ db }) => {
    const batch = 100;
    await db.query(
      `INSERT INTO capacity_outbox (restaurant_id, event_type, payload, next_attempt_at)
       SELECT '00000000-0000-4000-8000-00000000000a', 'refill.a', jsonb_build_object('g', g), now() - interval '1 min' + g * interval '1 ms'
       FROM generate_series(1, 3000) g`,
    );
    await db.query(
      `INSERT INTO capacity_outbox (restaurant_id, event_type, payload)
       SELECT '00000000-0000-4000-8000-00000000000b', 'refill.b', jsonb_build_object('g', g) FROM generate_series(1, 30) g`,
    );
    const daemon = await startDaemon(db, { env: { OUTBOX_BATCH_SIZE: String(batch), OUTBOX_CONCURRENCY: '32' } });
    try {
      await waitFor(async () => (await statusCounts(db)).done === 3030, { what: '3030 done', timeoutMs: 60_000 });
    } finally {
      await daemon.stop();
    }
    const { values } = await daemon.metrics.claimBatchSize.get();
    const count = values.find((v) => v.metricName === 'outbox_claim_batch_size_count')!.value;
    const empty = values.find((v) => v.metricName === 'outbox_claim_batch_size_bucket' && v.labels.le === 0)!.value;
    // 30 full claims and the last 30 events: none came back short while the backlog lasted.
    expect(count - empty).toBe(31);
  });
});
