import http from 'node:http';
import pg from 'pg';
import { sleep } from '../kernel/service.ts';
import { asProducer } from '../tenancy/producer.ts';

// Synthetic incidents for staging: each provokes the condition one alert watches, so
// on-call can prove alerting end to end. They act on a database you point them at and
// print how to undo what they did. Never run them against production.

export interface IncidentOutput {
  say(line: string): void;
}

/** Poison events: payloads that are JSON arrays, which the dispatcher dead-letters as malformed. */
export async function poisonEvents(client: pg.ClientBase, opts: { tenant: string; count: number; type: string }, out: IncidentOutput): Promise<string[]> {
  const r = await asProducer(client, opts.tenant, () =>
    client.query<{ id: string }>(
      `INSERT INTO capacity_outbox (restaurant_id, event_type, payload)
       SELECT $1::uuid, $2, jsonb_build_array('incident', g) FROM generate_series(1, $3::int) g RETURNING id`,
      [opts.tenant, opts.type, opts.count],
    ),
  );
  out.say(`inserted ${r.rowCount} poison events (type ${opts.type}, tenant ${opts.tenant}); expect OutboxDeadLettersIncreasing`);
  out.say(`undo: they end dead; leave them (replay would dead-letter them again)`);
  return r.rows.map((x) => x.id);
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
  const r = await client.query(
    `INSERT INTO capacity_outbox (restaurant_id, event_type, payload, next_attempt_at)
     SELECT $1::uuid, $2, jsonb_build_object('incident', 'backlog', 'n', g), now() - $4::int * interval '1 second'
     FROM generate_series(1, $3::int) g`,
    [opts.tenant, opts.type, opts.count, opts.ageSeconds],
  );
  out.say(`inserted ${r.rowCount} events overdue by ${opts.ageSeconds} s (type ${opts.type}); expect OutboxLagObjectiveBreached (and OutboxBacklogGrowing above 1000)`);
  out.say(`undo: let the dispatchers drain them, or as the owner: DELETE FROM capacity_outbox WHERE event_type = '${opts.type}' AND status = 'pending';`);
  return r.rowCount ?? 0;
}

/** Claim latency: repeatedly holds a table lock that the claim's UPDATE must wait for. Owner only. */
export async function claimLatency(client: pg.ClientBase, opts: { durationMs: number; holdMs: number }, out: IncidentOutput, signal?: AbortSignal): Promise<number> {
  out.say(`holding EXCLUSIVE locks on capacity_outbox for ${opts.holdMs} ms at a time for ${Math.round(opts.durationMs / 1000)} s; expect OutboxClaimLatencyHigh`);
  const end = Date.now() + opts.durationMs;
  let rounds = 0;
  while (Date.now() < end && !signal?.aborted) {
    await client.query('BEGIN');
    await client.query('LOCK TABLE capacity_outbox IN EXCLUSIVE MODE');
    await sleep(opts.holdMs, signal);
    await client.query('COMMIT');
    rounds++;
    await sleep(Math.max(5, Math.round(opts.holdMs / 4)), signal);
  }
  out.say(`released; ${rounds} lock rounds. Nothing to undo.`);
  return rounds;
}

/** Runway low: drops empty future partitions of capacity_outbox. Owner only; refuses non-empty ones. */
export async function runwayLow(client: pg.ClientBase, out: IncidentOutput): Promise<string[]> {
  const { rows } = await client.query<{ name: string }>(
    `SELECT partition_name AS name FROM outbox_dispatcher.partition_report('capacity_outbox')
     WHERE NOT is_default AND lower_bound > now() ORDER BY lower_bound`,
  );
  const dropped: string[] = [];
  for (const { name } of rows) {
    const n = await client.query<{ n: string }>(`SELECT count(*) AS n FROM ${pg.escapeIdentifier(name)}`);
    if (Number(n.rows[0]!.n) > 0) {
      out.say(`kept ${name}: it holds rows`);
      continue;
    }
    await client.query(`DROP TABLE ${pg.escapeIdentifier(name)}`);
    dropped.push(name);
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
