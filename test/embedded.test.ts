import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { runCli, startWorkerProcess } from './support/cli.ts';
import { waitFor } from './support/db.ts';
import { freePort } from './support/ports.ts';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'outbox-embedded-'));
fs.chmodSync(dir, 0o755);
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

function portOpen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.once('connect', () => (s.destroy(), resolve(true)));
    s.once('error', () => resolve(false));
  });
}

describe('the embedded default (no DATABASE_URL)', () => {
  it('starts PostgreSQL, migrates, dispatches an enqueued event to the log sink, and stops cleanly', async () => {
    const port = await freePort();
    const env = { OUTBOX_EMBEDDED_DIR: path.join(dir, 'pg'), OUTBOX_EMBEDDED_PORT: String(port), OUTBOX_POLL_INTERVAL_MS: '200' };
    const worker = startWorkerProcess(env);
    try {
      const started = await worker.waitForLog((l) => l.msg === 'starting', 45_000);
      // Even here the daemon logs in as its least-privilege role, never the superuser.
      expect(started.database).toMatch(/^postgres:\/\/outbox_dispatcher:\*\*\*@127\.0\.0\.1:/);
      await worker.waitForLog((l) => l.msg === 'outbox dispatcher running');

      const r = await runCli(['enqueue', '--type', 'booking.created', '--tenant', '11111111-1111-4111-8111-111111111111', '--payload', '{"bookingId":7}'], env);
      expect(r.code, r.stderr).toBe(0);
      const id = /enqueued ([0-9a-f-]{36})/.exec(r.stdout)?.[1];
      expect(id).toBeDefined();
      const line = await worker.waitForLog((l) => l.msg === 'event delivered to log sink' && l.eventId === id);
      expect(line).toMatchObject({ eventType: 'booking.created', restaurantId: '11111111-1111-4111-8111-111111111111', attempt: 1 });
      expect(line.payload).toBeUndefined();
      expect(worker.output()).not.toContain('bookingId');
      // enqueue attached to the daemon's server and left it running.
      expect(await portOpen(port)).toBe(true);
    } finally {
      worker.child.kill('SIGTERM');
    }
    expect(await worker.exited).toEqual({ code: 0, signal: null });
    await waitFor(async () => !(await portOpen(port)), { what: 'embedded PostgreSQL to stop' });
    const creds = fs.statSync(path.join(dir, 'pg.credentials.json'));
    expect(creds.mode & 0o077).toBe(0);
  }, 120_000);
});
