import { describe, expect } from 'vitest';
import { claimBatch } from '../src/db/queries/outbox.ts';
import { partitionStatus } from '../src/partitions/status.ts';
import { runCli } from './support/cli.ts';
import { it } from './support/fixtures.ts';

// The incident scenarios not covered end to end against Prometheus (alerting.e2e.test.ts)
// are checked here for the condition they must create.

describe('incident scenarios', () => {
  it('runway-low drops empty future partitions (runway under the alert threshold) and partitions rotate restores it', async ({ fileDb: db }) => {
    const r = await runCli(['incident', 'runway-low', '--database-url', db.adminUrl]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain('dropped empty future partitions');
    const [low] = await partitionStatus(db.workerDb(), new Date());
    expect(low!.runwaySeconds!).toBeLessThan(60 * 86400);
    const fix = await runCli(['partitions', 'rotate'], { DATABASE_URL: db.workerUrl, LOG_LEVEL: 'warn' });
    expect(fix.code, fix.stderr).toBe(0);
    const [ok] = await partitionStatus(db.workerDb(), new Date());
    expect(ok!.runwaySeconds!).toBeGreaterThan(85 * 86400);
    // Both changed partitions: both are in the audit trail (ADR 0014), with who and how many.
    const audit = await db.query("SELECT action, login_role, rows::int AS rows, result FROM outbox_dispatcher.operator_audit ORDER BY id");
    expect(audit.rows.map((a) => [a.action, a.result === null ? null : a.result.split(';')[0]])).toEqual([
      ['incident.runway-low', 'done'],
      ['partitions.rotate', 'ok'],
    ]);
    expect(audit.rows[0].rows).toBeGreaterThan(0);
    expect(audit.rows[1].login_role).toBe(new URL(db.workerUrl).username);
  }, 240_000); // two CLI starts; slow only on a loaded machine

  it('claim-latency pushes the claim statement past the 10 ms budget while it runs', async ({ fileDb: db }) => {
    const incident = runCli(['incident', 'claim-latency', '--duration', '3', '--hold', '80', '--database-url', db.adminUrl]);
    const worker = db.workerDb();
    await new Promise((r) => setTimeout(r, 500));
    const timings: number[] = [];
    for (let i = 0; i < 10; i++) {
      const t0 = performance.now();
      await claimBatch(worker, { workerId: 'w', limit: 10, leaseMs: 1000, maxPayloadBytes: 1_048_576 });
      timings.push(performance.now() - t0);
    }
    const r = await incident;
    expect(r.code, r.stderr).toBe(0);
    expect(Math.max(...timings)).toBeGreaterThan(10);
  });

  it('rejects unknown scenarios', async ({ fileDb: db }) => {
    const r = await runCli(['incident', 'meteor']);
    expect(r.code).toBe(64);
    expect(r.stderr).toContain('unknown scenario');
  });
});
