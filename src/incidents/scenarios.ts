import http from 'node:http';
import pg from 'pg';
import { sleep } from '../kernel/service.ts';
import { dropIfEmpty, futurePartitions, holdOutboxLock, insertOverdueEvents } from '../db/queries/incidents.ts';
import { asProducer, insertEvents } from '../db/queries/producer.ts';

// Synthetic incidents for staging: each provokes the condition one alert watches, so
// on-call can prove alerting end to end. They act on a database you point them at and
// print how to undo what they did. Never run them against production.

export interface IncidentOutput {
  say(line: string): void;
}

/** Poison events: payloads that are JSON arrays, which the dispatcher dead-letters as malformed. */
export async function poisonEvents(client: pg.ClientBase, opts: { tenant: string; count: number; type: string }, out: IncidentOutput): Promise<string[]> {
  const events = Array.from({ length: opts.count }, (_, i) => ({ type: opts.type, payload: ['incident', i + 1] }));
  const ids = await asProducer(client, opts.tenant, () => insertEvents(client, opts.tenant, events));
  out.say(`inserted ${ids.length} poison events (type ${opts.type}, tenant ${opts.tenant}); expect OutboxDeadLettersIncreasing`);
  out.say(`undo: they end dead; leave them (replay would dead-letter them again)`);
  return ids;
}

/**
 * Backlog surge: events already overdue by `ageSeconds`, as if dispatch had stalled.
 * Needs the table owner (producers cannot set next_attempt_at).
 */
export async function backlogSurge(
  client: pg.ClientBase,
  opts: { tenant: string; count: number; type: string; ageSeconds: number },
  out: IncidentOutput,
): Promise<number> {
  const n = await insertOverdueEvents(client, opts);
  out.say(`inserted ${n} events overdue by ${opts.ageSeconds} s (type ${opts.type}); expect OutboxLagObjectiveBreached (and OutboxBacklogGrowing above 1000)`);
  out.say(`undo: let the dispatchers drain them, or as the owner: DELETE FROM capacity_outbox WHERE event_type = '${opts.type}' AND status = 'pending';`);
  return n;
}

/** Claim latency: repeatedly holds a table lock that the claim's UPDATE must wait for. Owner only. */
export async function claimLatency(client: pg.ClientBase, opts: { durationMs: number; holdMs: number }, out: IncidentOutput, signal?: AbortSignal): Promise<number> {
  out.say(`holding EXCLUSIVE locks on capacity_outbox for ${opts.holdMs} ms at a time for ${Math.round(opts.durationMs / 1000)} s; expect OutboxClaimLatencyHigh`);
  const end = Date.now() + opts.durationMs;
  let rounds = 0;
  while (Date.now() < end && !signal?.aborted) {
    await holdOutboxLock(client, opts.holdMs, signal);
    rounds++;
    await sleep(Math.max(5, Math.round(opts.holdMs / 4)), signal);
  }
  out.say(`released; ${rounds} lock rounds. Nothing to undo.`);
  return rounds;
}

/** Runway low: drops empty future partitions of capacity_outbox. Owner only; refuses non-empty ones. */
export async function runwayLow(client: pg.ClientBase, out: IncidentOutput): Promise<string[]> {
  const dropped: string[] = [];
  for (const name of await futurePartitions(client)) {
    if (await dropIfEmpty(client, name)) dropped.push(name);
    else out.say(`kept ${name}: it holds rows`);
  }
  out.say(`dropped empty future partitions: ${dropped.join(', ') || '(none)'}; expect OutboxPartitionRunwayLow after the next rotation-free hour`);
  out.say('undo: outbox-dispatcher partitions rotate');
  return dropped;
}

/** Sink outage: an HTTP sink that answers every request with `status` until the duration ends. */
export async function sinkOutage(
  opts: { host: string; port: number; status: number; durationMs: number },
  out: IncidentOutput,
  signal?: AbortSignal,
): Promise<number> {
  let requests = 0;
  const server = http.createServer((req, res) => {
    requests++;
    req.resume();
    res.writeHead(opts.status, { 'content-type': 'text/plain', 'retry-after': '1' }).end('synthetic outage\n');
  });
  // A port in use is an operator's problem to fix, not a crash: reject, so the CLI says it in one line.
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port, opts.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  out.say(`failing sink on http://${opts.host}:${opts.port}/ answering ${opts.status} for ${Math.round(opts.durationMs / 1000)} s; point a staging route at it; expect OutboxDispatchErrorRatioHigh`);
  await sleep(opts.durationMs, signal);
  server.closeAllConnections();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  out.say(`outage over after ${requests} requests; retried events are delivered once the route points back at the real sink.`);
  return requests;
}

/** Dispatcher down: freezes a local dispatcher process (SIGSTOP) so its scrapes fail, then resumes it. */
export async function dispatcherDown(opts: { pid: number; durationMs: number }, out: IncidentOutput, signal?: AbortSignal): Promise<void> {
  try {
    process.kill(opts.pid, 'SIGSTOP');
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    throw Object.assign(new Error(`cannot signal pid ${opts.pid}: ${e.code === 'ESRCH' ? 'no such process' : e.message}`), { code: e.code, syscall: e.syscall });
  }
  out.say(`froze dispatcher pid ${opts.pid} for ${Math.round(opts.durationMs / 1000)} s; expect OutboxDispatcherDown (leases it held expire and other replicas rescue its events)`);
  try {
    await sleep(opts.durationMs, signal);
  } finally {
    process.kill(opts.pid, 'SIGCONT');
    out.say(`resumed pid ${opts.pid}`);
  }
}
