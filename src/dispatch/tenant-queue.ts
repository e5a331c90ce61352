/**
 * Bounded concurrency that takes turns between tenants (docs/adr/0012-tenant-fairness.md).
 *
 * The claim's fair lane gets a second tenant's events into a batch; this makes them start
 * next. A worker holds up to concurrency + 2 × batch claimed events, so with a first-in
 * first-out queue (p-limit) a tenant's new events waited behind about a thousand of another
 * tenant's already-claimed ones: at 2,000 sends/s that is half a second. Here each tenant has
 * its own queue and a freed slot goes to the next tenant in turn, so an event of a tenant with
 * nothing in flight starts at the next free slot. Within a tenant the order is first in, first
 * out (claim order). Per-key ordering is unaffected: a key has at most one event claimed.
 */
export class TenantQueue {
  readonly #concurrency: number;
  /** Tenants with queued tasks, in turn order; each appears once. */
  readonly #turns: string[] = [];
  readonly #queues = new Map<string, (() => void)[]>();
  #active = 0;
  #queued = 0;

  constructor(concurrency: number) {
    if (!Number.isInteger(concurrency) || concurrency < 1) throw new RangeError(`concurrency must be a positive integer, got ${concurrency}`);
    this.#concurrency = concurrency;
  }

  /** Tasks running now. */
  get active(): number {
    return this.#active;
  }

  /** Tasks waiting for a slot. */
  get queued(): number {
    return this.#queued;
  }

  /** Runs `task` when a slot is free and it is `tenant`'s turn; settles as the task does. */
  run<T>(tenant: string, task: () => Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const start = () => {
        this.#active++;
        // A task that throws synchronously still frees its slot.
        Promise.resolve()
          .then(task)
          .then(resolve, reject)
          .finally(() => {
            this.#active--;
            this.#next();
          });
      };
      if (this.#active < this.#concurrency && this.#queued === 0) return start();
      let q = this.#queues.get(tenant);
      if (q === undefined) {
        q = [];
        this.#queues.set(tenant, q);
        this.#turns.push(tenant);
      }
      q.push(start);
      this.#queued++;
    });
  }

  #next(): void {
    while (this.#active < this.#concurrency && this.#turns.length > 0) {
      const tenant = this.#turns.shift()!;
      const q = this.#queues.get(tenant)!;
      const start = q.shift()!;
      if (q.length > 0) this.#turns.push(tenant);
      else this.#queues.delete(tenant);
      this.#queued--;
      start();
    }
  }
}
