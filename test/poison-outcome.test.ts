import { describe, expect } from 'vitest';
import { createKysely, createPool } from '../src/db/pool.ts';
import { claimBatch, type Completion } from '../src/db/queries/outbox.ts';
import { safeText } from '../src/domain/safe-text.ts';
import { Completer } from '../src/dispatch/completer.ts';
import { createLogger } from '../src/kernel/log.ts';
import { DispatcherMetrics } from '../src/metrics/metrics.ts';
import { produce, tenantId, waitFor } from './support/db.ts';
import { startDaemon } from './support/daemon.ts';
import { startReceiver } from './support/http-receiver.ts';
import { freePort } from './support/ports.ts';
import { it } from './support/fixtures.ts';

// Review finding 1 (repro 17): one outcome PostgreSQL refuses (a NUL byte in an error
// text copied from a response body) failed the whole batched completion UPDATE, and the
// completer retried that batch forever: the worker kept sending but recorded nothing.

describe('safeText', () => {
  it('escapes NUL and other control characters visibly, keeps tab and newline', () => {
    expect(safeText('upstream\u0000error')).toBe('upstream\\u0000error');
    expect(safeText('a\u001b[31mred\u007f\u0085')).toBe('a\\u001b[31mred\\u007f\\u0085');
    expect(safeText('line 1\n\tline 2')).toBe('line 1\n\tline 2');
  });

  it('replaces lone surrogates (invalid UTF-8 after decoding) and bounds the length on a code point', () => {
    expect(safeText('bad \ud800 half')).toBe('bad \ufffd half');
    expect(safeText('x'.repeat(5000))).toHaveLength(4000);
    expect(safeText('x'.repeat(5000)).endsWith('…')).toBe(true);
    const emoji = safeText(`${'a'.repeat(8)}😀😀`, 10);
    expect(emoji).toBe(`${'a'.repeat(8)}…`);
    expect(emoji.isWellFormed()).toBe(true);
  });
});

describe('outcomes the database refuses', () => {
  it('a NUL byte in a sink response is stored escaped and the worker keeps recording outcomes', async ({ fileDb: db }) => {
    const receiver = await startReceiver((r) => (r.json.eventType === 'nul.bad' ? { status: 503, body: 'upstream\u0000error' } : { status: 200 }));
    const t = tenantId();
    const [bad, ...good] = await produce(db.producerUrl, t, [{ type: 'nul.bad' }, ...Array.from({ length: 5 }, (_, i) => ({ type: 'nul.good', payload: { i } }))]);
    const daemon = await startDaemon(db, {
      routes: { routes: [{ match: 'nul.*', sink: { type: 'http', url: receiver.url, timeoutMs: 2000 } }] },
      env: { OUTBOX_BACKOFF_BASE_MS: '60000', OUTBOX_BACKOFF_MAX_MS: '60000', OUTBOX_LEASE_MS: '60000' },
    });
    try {
      const rows = await waitFor(async () => {
        const r = await db.query('SELECT id, status, attempts, last_error FROM capacity_outbox WHERE restaurant_id = $1', [t]);
        return r.rows.every((row) => row.attempts >= 1 && row.status !== 'processing') ? r.rows : undefined;
      }, { what: 'every outcome written', timeoutMs: 20_000 });
      const byId = new Map(rows.map((r) => [r.id, r]));
      for (const id of good) expect(byId.get(id)).toMatchObject({ status: 'done' });
      expect(byId.get(bad)).toMatchObject({ status: 'pending', attempts: 1, last_error: 'HTTP 503: upstream\\u0000error' });
      expect(await daemon.metrics.completionFlushErrors.get()).toMatchObject({ values: [{ value: 0 }] });
    } finally {
      await daemon.stop();
      await receiver.close();
    }
  }, 40_000);

  it('splits a refused batch: the others are written, the bad outcome is rewritten safely or dropped, never retried as is', async ({ fileDb: db }) => {
    const t = tenantId();
    await produce(db.producerUrl, t, Array.from({ length: 6 }, (_, i) => ({ type: 'split.case', payload: { i } })));
    const worker = db.workerDb();
    const metrics = new DispatcherMetrics();
    const completer = new Completer(worker, createLogger('silent'), metrics, { workerId: 'w-split', stopTimeoutMs: 5000 });
    const claimed = (await claimBatch(worker, { workerId: 'w-split', limit: 100, leaseMs: 60_000, maxPayloadBytes: 1_048_576 })).filter((r) => (r.payload as { i: number }).i !== undefined);
    expect(claimed).toHaveLength(6);
    const item = (i: number, outcome: Completion['outcome'], over: Partial<Completion> = {}): Completion => ({
      id: claimed[i]!.id,
      createdAtKey: claimed[i]!.created_at_key,
      attempt: claimed[i]!.attempts,
      outcome,
      ...over,
    });
    // 22003 (bigint out of range): the outcome's own values are bad; the rewrite bounds the delay.
    completer.add(item(0, { kind: 'retry', delayMs: 1e20, error: 'HTTP 503' }));
    completer.add(item(1, { kind: 'done' }));
    // 22003 (integer out of range) in the row key: nothing can be rewritten; dropped, lease expires.
    completer.add(item(2, { kind: 'done' }, { attempt: 2 ** 40 }));
    completer.add(item(3, { kind: 'done' }));
    completer.add(item(4, { kind: 'dead', error: 'permanent: HTTP 400', reason: 'permanent' }));
    completer.add(item(5, { kind: 'retry', delayMs: 1000, error: 'HTTP 502' }));
    await completer.flush();
    expect(completer.pending).toBe(0);
    await completer.stop();

    const { rows } = await db.query('SELECT id, status, last_error, locked_by, next_attempt_at > now() + interval \'1 hour\' AS far FROM capacity_outbox WHERE restaurant_id = $1', [t]);
    const byId = new Map(rows.map((r) => [r.id, r]));
    expect(byId.get(claimed[0]!.id)).toMatchObject({
      status: 'pending',
      locked_by: null,
      far: true,
      last_error: 'the outcome (retry) was refused by the database (SQLSTATE 22003); its error text was dropped',
    });
    expect(byId.get(claimed[1]!.id)).toMatchObject({ status: 'done' });
    expect(byId.get(claimed[2]!.id)).toMatchObject({ status: 'processing', locked_by: 'w-split' }); // rescued after its lease
    expect(byId.get(claimed[3]!.id)).toMatchObject({ status: 'done' });
    expect(byId.get(claimed[4]!.id)).toMatchObject({ status: 'dead', last_error: 'permanent: HTTP 400' });
    expect(byId.get(claimed[5]!.id)).toMatchObject({ status: 'pending', last_error: 'HTTP 502' });
    const refused = await metrics.completionsRefused.get();
    expect(Object.fromEntries(refused.values.map((v) => [v.labels.result, v.value]))).toEqual({ rewritten: 1, dropped: 1 });
    expect((await metrics.completionFlushErrors.get()).values[0]?.value ?? 0).toBe(0);
  });

  it('keeps the batch and retries with backoff when the database is unreachable (not a data error)', async ({ fileDb: db }) => {
    const down = createKysely(createPool({ connectionString: `postgres://nobody@127.0.0.1:${await freePort()}/none`, max: 1, applicationName: 'test' }));
    const metrics = new DispatcherMetrics();
    const completer = new Completer(down, createLogger('silent'), metrics, { workerId: 'w-down', stopTimeoutMs: 300 });
    completer.add({ id: '00000000-0000-4000-8000-000000000000', createdAtKey: '2026-11-30 00:00:00+00', attempt: 1, outcome: { kind: 'done' } });
    await completer.flush();
    expect(completer.pending).toBe(1);
    expect((await metrics.completionFlushErrors.get()).values[0]!.value).toBeGreaterThanOrEqual(1);
    await completer.stop();
    expect(completer.pending).toBe(1);
    expect((await metrics.completionsRefused.get()).values.every((v) => v.value === 0)).toBe(true);
    await down.destroy();
  });
});
