import { describe, expect, it } from 'vitest';
import { TenantQueue } from '../src/dispatch/tenant-queue.ts';

// The worker's local scheduling (ADR 0012): bounded concurrency, tenants take turns.

const gate = () => {
  let open!: () => void;
  const opened = new Promise<void>((r) => (open = r));
  return { open, opened };
};

describe('TenantQueue', () => {
  it('never runs more than its concurrency at once', async () => {
    const q = new TenantQueue(3);
    let running = 0;
    let peak = 0;
    await Promise.all(
      Array.from({ length: 50 }, (_, i) =>
        q.run(`t${i % 4}`, async () => {
          running++;
          peak = Math.max(peak, running);
          await new Promise((r) => setTimeout(r, 1));
          running--;
        }),
      ),
    );
    expect(peak).toBe(3);
    expect(q.active).toBe(0);
    expect(q.queued).toBe(0);
  });

  it("starts a second tenant's task at the next free slot, ahead of the first tenant's queue", async () => {
    const q = new TenantQueue(1);
    const order: string[] = [];
    const first = gate();
    const done: Promise<void>[] = [q.run('A', async () => { order.push('A0'); await first.opened; })];
    for (let i = 1; i <= 100; i++) done.push(q.run('A', async () => void order.push(`A${i}`)));
    done.push(q.run('B', async () => void order.push('B0')));
    done.push(q.run('B', async () => void order.push('B1')));
    expect(q.queued).toBe(102);
    first.open();
    await Promise.all(done);
    // Turns alternate while both have work; within a tenant, first in first out.
    expect(order.slice(0, 5)).toEqual(['A0', 'A1', 'B0', 'A2', 'B1']);
    expect(order.filter((x) => x.startsWith('A'))).toEqual(Array.from({ length: 101 }, (_, i) => `A${i}`));
  });

  it('settles as the task does, and a task that throws frees its slot', async () => {
    const q = new TenantQueue(1);
    await expect(q.run('A', async () => 42)).resolves.toBe(42);
    await expect(q.run('A', () => { throw new Error('sync'); })).rejects.toThrow('sync');
    await expect(q.run('A', async () => { throw new Error('async'); })).rejects.toThrow('async');
    await expect(q.run('B', async () => 'still runs')).resolves.toBe('still runs');
    expect(q.active).toBe(0);
  });

  it('rejects a concurrency that is not a positive integer', () => {
    expect(() => new TenantQueue(0)).toThrow(RangeError);
    expect(() => new TenantQueue(1.5)).toThrow(RangeError);
  });
});
