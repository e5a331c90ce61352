// Two builds of the daemon draining the same workloads in one run, interleaved round by round,
// so machine noise hits both alike (issue 11: "unkeyed throughput within 10% of before").
//
//   npm run build && flock /tmp/cpu.lock env BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \
//     BENCH_BEFORE_MAIN=/path/to/old/dist/main.js node bench/compare-builds.ts
//
//   BENCH_DATABASE_URL   superuser URL of the PostgreSQL to use (required)
//   BENCH_BEFORE_MAIN    dist/main.js of the "before" build (required; built with its own npm ci && npm run build)
//   BENCH_ROUNDS         rounds (default 3); each round runs every variant once, the order flipped every round
//   BENCH_EVENTS         events per drain (default 100000)
//   BENCH_WORKLOADS      comma list (default unkeyed,cold):
//                          unkeyed: the `ordering` section's unkeyed drain (no-op events, no ordering key,
//                                   50 tenants, analyzed)
//                          cold:    the `drain` section's cold burst (~200-byte payloads, dedupe keys,
//                                   20 tenants, never analyzed)
//   BENCH_SETTINGS       daemon settings for both builds, e.g. "OUTBOX_BATCH_SIZE=500 OUTBOX_CONCURRENCY=100"
//                        (default none: each build's defaults)
//   BENCH_CURRENT_EXTRA  settings for a third variant, this build with them (e.g. "OUTBOX_FAIR_SHARE_PERCENT=0")
//
// Every database is migrated by the build under test (its own `migrate` command), so the old
// build runs on the schema it shipped with. One worker, no-op sink, CPU of node and of every
// PostgreSQL process per event. Prints a table per workload and the ratio of the medians.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { MAIN, median, round } from './lib.ts';
import { dispatcherDrain, type DrainResult } from './sections/drain.ts';

const url = process.env.BENCH_DATABASE_URL;
const before = process.env.BENCH_BEFORE_MAIN;
if (!url || !before) throw new Error('BENCH_DATABASE_URL and BENCH_BEFORE_MAIN are required');
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const EVENTS = Number(process.env.BENCH_EVENTS ?? 100_000);
const WORKLOADS = (process.env.BENCH_WORKLOADS ?? 'unkeyed,cold').split(',') as ('unkeyed' | 'cold')[];
const settings = (s = '') => Object.fromEntries(s.split(' ').filter(Boolean).map((kv) => kv.split('=') as [string, string]));
const SETTINGS = settings(process.env.BENCH_SETTINGS);

interface Variant {
  name: string;
  main: string;
  env: Record<string, string>;
}
const variants: Variant[] = [
  { name: 'before', main: before, env: SETTINGS },
  { name: 'current', main: MAIN, env: SETTINGS },
];
if (process.env.BENCH_CURRENT_EXTRA) {
  variants.push({ name: `current ${process.env.BENCH_CURRENT_EXTRA}`, main: MAIN, env: { ...SETTINGS, ...settings(process.env.BENCH_CURRENT_EXTRA) } });
}

const log = (s: string) => process.stderr.write(`${s}\n`);
interface Row {
  workload: string;
  round: number;
  variant: string;
  /** 1-minute load average when the run started: other work on the machine shows here. */
  load: number;
  result: DrainResult;
}
const rows: Row[] = [];
log(`before: ${before}\ncurrent: ${MAIN}\nsettings: ${JSON.stringify(SETTINGS)}`);
for (let r = 1; r <= ROUNDS; r++) {
  const order = r % 2 ? variants : [...variants].reverse();
  for (const workload of WORKLOADS) {
    for (const v of order) {
      const load = round(os.loadavg()[0]!, 2);
      const result = await dispatcherDrain(url, EVENTS, 1, 'noop', v.env, { cold: workload === 'cold', label: workload, main: v.main });
      rows.push({ workload, round: r, variant: v.name, load, result });
      log(`round ${r} ${workload} ${v.name}: ${JSON.stringify(result)}`);
    }
  }
}

const lines: string[] = [];
for (const workload of WORKLOADS) {
  lines.push('', `${workload}, ${EVENTS.toLocaleString()} events, 1 worker, no-op sink:`);
  lines.push('| round | build | events/s | node CPU µs/event | postgres CPU µs/event | WAL bytes/event | commits/event | load |', '|---|---|---|---|---|---|---|---|');
  for (const x of rows.filter((x) => x.workload === workload)) {
    const d = x.result;
    lines.push(`| ${x.round} | ${x.variant} | ${d.eventsPerSec.toLocaleString()} | ${d.nodeCpuPerEventUs} | ${d.postgresCpuPerEventUs} | ${d.walBytesPerEvent} | ${d.commitsPerEvent} | ${x.load} |`);
  }
  const med = (v: string, f: (d: DrainResult) => number) => median(rows.filter((x) => x.workload === workload && x.variant === v).map((x) => f(x.result)));
  for (const v of variants) {
    lines.push(`median ${v.name}: ${Math.round(med(v.name, (d) => d.eventsPerSec)).toLocaleString()}/s, node ${med(v.name, (d) => d.nodeCpuPerEventUs!)} µs/event, postgres ${med(v.name, (d) => d.postgresCpuPerEventUs!)} µs/event`);
  }
  for (const v of variants.slice(1)) {
    // Same-round ratios too: a round's runs are minutes apart at most, so drift between rounds cancels.
    const rate = (name: string, r: number) => rows.find((x) => x.workload === workload && x.variant === name && x.round === r)!.result.eventsPerSec;
    const paired = Array.from({ length: ROUNDS }, (_, i) => round(rate(v.name, i + 1) / rate('before', i + 1), 3));
    lines.push(`ratio ${v.name}/before: of the medians ${round(med(v.name, (d) => d.eventsPerSec) / med('before', (d) => d.eventsPerSec), 3)}; by round ${paired.join(', ')} (median ${median(paired)})`);
  }
}
process.stdout.write(`${lines.join('\n')}\n`);
const dir = fileURLToPath(new URL('results/', import.meta.url));
fs.mkdirSync(dir, { recursive: true });
fs.writeFileSync(path.join(dir, `compare-builds-${new Date().toISOString().replace(/[:.]/g, '-')}.json`), `${JSON.stringify({ before, current: MAIN, settings: SETTINGS, rows }, null, 2)}\n`);
