import v8 from 'node:v8';

/**
 * How far V8 lets the old generation grow past what survived the last full collection before
 * it collects again: 100 %, twice the live heap. V8's own factor, picked from its GC speed against the allocation
 * rate, goes up to 4× while a backlog drains: the claimed window's rows, promises and closures
 * are promoted (they outlive two scavenges) and die soon after, so old space filled with that
 * garbage to 2-4 × the live heap (live ~25 MB, old space ~95 MB, worker RSS ~195 MB during a
 * 1M drain). At 2 × the live heap a 100k cold burst peaks at ~126 MB for ~2 µs more node CPU
 * per event and the same throughput; 30 % gave ~114 MB but +25 % node CPU per event and 6 % less
 * throughput (more full collections), so 100 (docs/performance.md "Memory").
 *
 * Not a cap: the limit follows the live heap, so a window of 1 MiB payloads still gets the
 * memory it needs (V8's own maximum heap size is unchanged); larger live heaps only mean more
 * frequent full collections.
 */
export const HEAP_GROWING_PERCENT = 100;

/**
 * The V8 flag to apply, or undefined when the process was started with its own
 * `--heap-growing-percent` (node's command line; NODE_OPTIONS does not accept it).
 */
export function heapGrowthFlag(execArgv: readonly string[]): string | undefined {
  if (execArgv.some((arg) => /^--heap[-_]growing[-_]percent(=|$)/.test(arg))) return undefined;
  return `--heap-growing-percent=${HEAP_GROWING_PERCENT}`;
}

/**
 * Applies heapGrowthFlag to this process. V8 reads the factor at every full collection, so
 * setting it after start-up takes effect from the next one (measured: docs/performance.md).
 */
export function tuneHeapGrowth(execArgv: readonly string[] = process.execArgv): void {
  const flag = heapGrowthFlag(execArgv);
  if (flag) v8.setFlagsFromString(flag);
}
