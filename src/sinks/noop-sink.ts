import type { Sink } from './types.ts';

/** Acknowledges at once: for benchmarks and for dry-running a routes file. */
export class NoopSink implements Sink {
  readonly type = 'noop';
  readonly timeoutMs = 0;
  readonly name: string;

  constructor(name: string) {
    this.name = name;
  }

  async send(): Promise<void> {}
}
