// `node bench/tracing.ts`: drain throughput with tracing off and on (README "Tracing",
// docs/performance.md). Runs dist/ (npm run build first) or BENCH_MAIN, so the same
// script measures a previous commit's build for the before/after comparison:
//
//   BENCH_DATABASE_URL   superuser URL (required here)
//   BENCH_EVENTS         events per drain (default 20000)
//   BENCH_TRACING        off | on | both (default both)
//   BENCH_ROUNDS         alternating rounds (default 3); each round drains once per variant
import { tracingDrain } from './sections/tracing.ts';

const url = process.env.BENCH_DATABASE_URL;
if (!url) throw new Error('BENCH_DATABASE_URL is required');
const events = Number(process.env.BENCH_EVENTS ?? 20_000);
const which = (process.env.BENCH_TRACING ?? 'both') as 'off' | 'on' | 'both';
const rounds = Number(process.env.BENCH_ROUNDS ?? 3);
const TUNING = { OUTBOX_BATCH_SIZE: '500', OUTBOX_CONCURRENCY: '100' };

process.stdout.write(`| round | run | events/s | node CPU µs/event | max RSS MB |\n|---|---|---|---|---|\n`);
for (let r = 1; r <= rounds; r++) {
  const runs = which === 'both' ? [false, true] : [which === 'on'];
  for (const on of runs) {
    const d = await tracingDrain(url, events, TUNING, on);
    process.stdout.write(`| ${r} | ${d.name} | ${d.eventsPerSec.toLocaleString()} | ${d.nodeCpuPerEventUs ?? ''} | ${d.maxRssMb ?? ''} |\n`);
  }
}
