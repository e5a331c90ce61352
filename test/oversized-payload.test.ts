import { describe, expect } from 'vitest';
import { claimBatch } from '../src/db/queries/outbox.ts';
import { recordingSink, startDaemon } from './support/daemon.ts';
import { statusCounts, waitFor, type TestDatabase } from './support/db.ts';
import { it } from './support/fixtures.ts';

// Issue 10, item 7 (repro 14): a payload over OUTBOX_MAX_PAYLOAD_BYTES is measured in the
// claim, in SQL, and never sent to the worker; the events claimed with it are unaffected.

const MAX = 1_048_576;

async function seed(db: TestDatabase) {
  await db.query(
    `INSERT INTO capacity_outbox (restaurant_id, event_type, payload, next_attempt_at)
     SELECT gen_random_uuid(), 'innocent', jsonb_build_object('i', g), now() - interval '1 min' FROM generate_series(1, 20) g`,
  );
  // About 30 MB of JSON text that compresses to a small stored value (repro 14 used 189 MB).
  await db.query(
    `INSERT INTO capacity_outbox (restaurant_id, event_type, payload, next_attempt_at)
     SELECT gen_random_uuid(), 'huge', jsonb_build_object('blob', (SELECT jsonb_agg(repeat('x', 200) || g) FROM generate_series(1, 150000) g)),
            now() - interval '30 s'`,
  );
  // Under the limit but compressed: measured exactly, and delivered.
  await db.query(
    `INSERT INTO capacity_outbox (restaurant_id, event_type, payload, next_attempt_at)
     SELECT gen_random_uuid(), 'large.ok', jsonb_build_object('blob', repeat('y', 600000)), now() - interval '20 s'`,
  );
  const { rows } = await db.query<{ stored: number; text: number }>(
    "SELECT pg_column_size(payload) AS stored, octet_length(payload::text) AS text FROM capacity_outbox WHERE event_type = 'huge'",
  );
  expect(rows[0]!.stored).toBeLessThan(MAX); // the stored size alone would not catch it
  expect(rows[0]!.text).toBeGreaterThan(25 * MAX);
  return rows[0]!.text;
}

describe('oversized payloads', () => {
  it('the claim returns an oversized payload as NULL with its size, and the rest of the batch intact', async ({ db }) => {
    const textBytes = await seed(db);
    const rows = await claimBatch(db.workerDb(), { workerId: 'w', limit: 100, leaseMs: 30_000, maxPayloadBytes: MAX });
    expect(rows).toHaveLength(22);
    const huge = rows.find((r) => r.event_type === 'huge')!;
    expect(huge.payload).toBeNull();
    expect(huge.payload_bytes).toBe(textBytes);
    const large = rows.find((r) => r.event_type === 'large.ok')!;
    expect(large.payload_bytes).toBe(600_000 + '{"blob": ""}'.length);
    expect((large.payload as { blob: string }).blob).toHaveLength(600_000);
    const innocent = rows.filter((r) => r.event_type === 'innocent');
    expect(innocent).toHaveLength(20);
    for (const r of innocent) {
      expect(r.payload).toMatchObject({ i: expect.any(Number) });
      expect(r.payload_bytes).toBeNull(); // small and uncompressed: not measured
    }
  });

  it('the daemon dead-letters it as malformed with its size, and delivers the rest', async ({ db }) => {
    const textBytes = await seed(db);
    const sink = recordingSink('test');
    const daemon = await startDaemon(db, { sinks: { test: sink } });
    try {
      await waitFor(async () => {
        const c = await statusCounts(db);
        return c.done === 21 && c.dead === 1;
      }, { what: '21 done, 1 dead' });
    } finally {
      await daemon.stop();
    }
    const { rows } = await db.query("SELECT status, last_error, attempts FROM capacity_outbox WHERE event_type = 'huge'");
    expect(rows[0]).toMatchObject({ status: 'dead', attempts: 1 });
    expect(rows[0].last_error).toBe(`malformed: payload is ${textBytes} bytes, over OUTBOX_MAX_PAYLOAD_BYTES (${MAX})`);
    expect(sink.calls.map((c) => c.event.eventType).sort()).toEqual([...Array(20).fill('innocent'), 'large.ok']);
    const { rows: m } = await db.query("SELECT count(*)::int AS n FROM capacity_outbox WHERE event_type <> 'huge' AND attempts <> 1");
    expect(m[0].n).toBe(0);
  });
});
