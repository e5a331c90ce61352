// `npm run bench`: the reproducible benchmark (not part of npm test). Prints a table and
// writes bench/results/latest.json. Every throughput is also given as a ratio to the bare
// SQL loop measured in the same run, so machine noise between runs cancels out.
//
//   BENCH_DATABASE_URL   superuser URL of the PostgreSQL to use (default: embedded, .data/bench-postgres)
//   BENCH_EVENTS         events per drain (default 100000)
//   BENCH_CLAIM_SIZES    table sizes for claim latency (default 100000,1000000,10000000)
//   BENCH_BACKLOG        backlog for the memory run (default 1000000)
//   BENCH_QUICK=1        a small smoke run (10k events, 100k rows, 100k backlog)
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { ensureEmbeddedCluster } from '../src/embedded/cluster.ts';
import { createLogger } from '../src/log.ts';
import { round } from './lib.ts';
import { claimLatency, type ClaimLatencyResult } from './sections/claim-latency.ts';
import { bareLoop, dispatcherDrain, graphileDrain, pgBossDrain, type DrainResult } from './sections/drain.ts';
import { memoryUnderBacklog } from './sections/memory.ts';
import { producerThroughput } from './sections/producer.ts';

const quick = process.env.BENCH_QUICK === '1';
const EVENTS = Number(process.env.BENCH_EVENTS ?? (quick ? 10_000 : 100_000));
const SIZES = (process.env.BENCH_CLAIM_SIZES ?? (quick ? '100000' : '100000,1000000,10000000')).split(',').map(Number);
const BACKLOG = Number(process.env.BENCH_BACKLOG ?? (quick ? 100_000 : 1_000_000));
/** The dispatcher's throughput settings (README "Tuning"). */
const TUNING = { OUTBOX_BATCH_SIZE: '500', OUTBOX_CONCURRENCY: '100' };

const log = (s: string) => process.stderr.write(`${s}\n`);

async function database(): Promise<{ url: string; stop: () => Promise<void> }> {
  if (process.env.BENCH_DATABASE_URL) return { url: process.env.BENCH_DATABASE_URL, stop: async () => {} };
  const dir = path.resolve(fileURLToPath(new URL('..', import.meta.url)), '.data/bench-postgres');
  const cluster = await ensureEmbeddedCluster({ dir, port: 54330, log: createLogger('warn') });
  return { url: cluster.url({ database: 'postgres', as: 'superuser' }), stop: () => cluster.stop() };
}

async function main() {
  const started = Date.now();
  const { url, stop } = await database();
  const c = new pg.Client(url);
  await c.connect();
  const server = (await c.query<{ v: string }>('SHOW server_version')).rows[0]!.v;
  const sync = (await c.query<{ v: string }>('SHOW synchronous_commit')).rows[0]!.v;
  await c.end();
  const machine = { cpus: os.cpus().length, cpuModel: os.cpus()[0]?.model, memoryGiB: round(os.totalmem() / 2 ** 30), node: process.version, postgres: server, synchronous_commit: sync };
  log(`machine: ${JSON.stringify(machine)}`);
  try {
    const claims: ClaimLatencyResult[] = [];
    for (const size of SIZES) {
      log(`claim latency, ${size.toLocaleString()} rows`);
      claims.push(await claimLatency(url, size, 300, log));
    }

    const drains: DrainResult[] = [];
    const step = async (label: string, fn: () => Promise<DrainResult>) => {
      log(label);
      try {
        drains.push(await fn());
      } catch (err) {
        log(`  failed: ${(err as Error).message}`);
      }
    };
    await step('bare SQL loop, 2 connections', () => bareLoop(url, EVENTS, 2, 500));
    await step('bare SQL loop, 4 connections', () => bareLoop(url, EVENTS, 4, 500));
    await step('dispatcher, 1 worker, noop', () => dispatcherDrain(url, EVENTS, 1, 'noop', TUNING));
    await step('dispatcher, 2 workers, noop', () => dispatcherDrain(url, EVENTS, 2, 'noop', TUNING));
    await step('dispatcher, 1 worker, http', () => dispatcherDrain(url, EVENTS, 1, 'http', TUNING));
    await step('dispatcher, 2 workers, http', () => dispatcherDrain(url, EVENTS, 2, 'http', TUNING));
    await step('graphile-worker', () => graphileDrain(url, EVENTS));
    await step('pg-boss', () => pgBossDrain(url, EVENTS));

    log('producer throughput');
    const producers = [await producerThroughput(url, EVENTS, 4, true), await producerThroughput(url, EVENTS, 4, false)];

    log(`memory, ${BACKLOG.toLocaleString()}-event backlog`);
    const memory = await memoryUnderBacklog(url, BACKLOG, TUNING, log);

    const bare = Math.max(...drains.filter((d) => d.name.startsWith('bare')).map((d) => d.eventsPerSec));
    const ours = Math.max(...drains.filter((d) => d.name.includes('noop sink')).map((d) => d.eventsPerSec));
    const peers = Math.max(...drains.filter((d) => /graphile|pg-boss/.test(d.name)).map((d) => d.eventsPerSec));
    const ratio = (n: number) => round(n / bare, 2);
    const targets = {
      noopDrainVsBareLoop: { value: ratio(ours), target: '>= 0.80', met: ours / bare >= 0.8 },
      noopDrainVsBestPeer: { value: round(ours / peers, 2), target: '>= 1.25', met: ours / peers >= 1.25 },
      claimP99At100k: { valueMs: claims.find((x) => x.rows === 100_000)?.p99Ms, target: '< 10 ms', met: (claims.find((x) => x.rows === 100_000)?.p99Ms ?? Infinity) < 10 },
      claimP99At10M: { valueMs: claims.find((x) => x.rows === 10_000_000)?.p99Ms, target: '< 2 ms', met: (claims.find((x) => x.rows === 10_000_000)?.p99Ms ?? Infinity) < 2 },
      workerRssUnderBacklog: { valueMb: memory.maxRssMb, target: '< 150 MB, flat', met: memory.maxRssMb < 150 },
    };

    const lines: string[] = ['', `outbox-dispatcher benchmark (${new Date().toISOString()}, ${Math.round((Date.now() - started) / 1000)} s)`, ''];
    lines.push('Claim latency (100 rows, worker role, RLS, dedupe triggers; 1% due):');
    lines.push('| rows | due | p50 ms | p99 ms | plan |', '|---|---|---|---|---|');
    for (const x of claims) lines.push(`| ${x.rows.toLocaleString()} | ${x.due.toLocaleString()} | ${x.p50Ms} | ${x.p99Ms} | ${x.plan.slice(0, 140)} |`);
    lines.push('', `Drain ${EVENTS.toLocaleString()} no-op events (ratio = events/s divided by the best bare SQL loop, ${bare.toLocaleString()}/s):`);
    lines.push('| run | events/s | ratio | node CPU µs/event | postgres CPU µs/event | WAL bytes/event | commits/event | max RSS MB |', '|---|---|---|---|---|---|---|---|');
    for (const d of drains) {
      lines.push(`| ${d.name} | ${d.eventsPerSec.toLocaleString()} | ${ratio(d.eventsPerSec)} | ${d.nodeCpuPerEventUs ?? ''} | ${d.postgresCpuPerEventUs ?? ''} | ${d.walBytesPerEvent ?? ''} | ${d.commitsPerEvent ?? ''} | ${d.maxRssMb ?? ''} |`);
    }
    lines.push('', 'Producer inserts (producer contract, app_producer, tenant context):', '| run | events/s | duplicates dropped |', '|---|---|---|');
    for (const p of producers) lines.push(`| ${p.name} | ${p.eventsPerSec.toLocaleString()} | ${p.duplicatesDropped} |`);
    lines.push('', `Memory: idle RSS ${memory.idleRssMb} MB; while a ${BACKLOG.toLocaleString()} backlog drains (${memory.eventsPerSec.toLocaleString()}/s): max ${memory.maxRssMb} MB, by decile ${memory.rssByDecileMb.join(' ')} MB`);
    lines.push('', 'Targets:');
    for (const [k, v] of Object.entries(targets)) lines.push(`- ${k}: ${JSON.stringify(v)}`);
    process.stdout.write(`${lines.join('\n')}\n`);

    const result = { machine, settings: { events: EVENTS, claimSizes: SIZES, backlog: BACKLOG, tuning: TUNING }, claims, drains, producers, memory, targets };
    const dir = fileURLToPath(new URL('results/', import.meta.url));
    fs.mkdirSync(dir, { recursive: true });
    fs.writeFileSync(path.join(dir, 'latest.json'), `${JSON.stringify(result, null, 2)}\n`);
    fs.writeFileSync(path.join(dir, `${new Date().toISOString().replace(/[:.]/g, '-')}.json`), `${JSON.stringify(result, null, 2)}\n`);
    log(`wrote bench/results/latest.json`);
  } finally {
    await stop();
  }
}

await main();
