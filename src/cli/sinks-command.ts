import { loadEnvConfig } from '../config/env.ts';
import { compileRoutes, DEFAULT_EMBEDDED_ROUTES, findRoute, loadRoutesFile, type Route } from '../config/routes.ts';
import { liveReplicaSinkStatus, type ReplicaSinkStatus } from '../db/queries/replica-status.ts';
import { listPauses, pauseSink, recentFailures, resumeSink, type SinkPause } from '../db/queries/sink-pauses.ts';
import { EXIT } from '../kernel/exit-codes.ts';
import { actorFor } from './actor.ts';
import { withDatabase } from './connection.ts';
import { printJson, table } from './output.ts';
import { UsageError } from './parse.ts';

interface SinkOptions {
  json?: boolean;
  databaseUrl?: string;
}

const SINK_NAME = /^[A-Za-z0-9_.:-]{1,64}$/;

/**
 * The sinks configured here (OUTBOX_ROUTES, or the embedded default without DATABASE_URL), or
 * undefined when this environment names no routes: the CLI then knows only the paused ones.
 */
function configuredRoutes(env: NodeJS.ProcessEnv, databaseUrl: string | undefined): Route[] | undefined {
  const config = loadEnvConfig(env);
  const file = config.routesSource ? loadRoutesFile(config.routesSource) : !(databaseUrl ?? config.databaseUrl) ? DEFAULT_EMBEDDED_ROUTES : undefined;
  return file ? compileRoutes(file, config.dispatch.leaseMs) : undefined;
}

function configuredSinks(env: NodeJS.ProcessEnv, databaseUrl: string | undefined): { name: string; type: string; match: string[] }[] | undefined {
  const routes = configuredRoutes(env, databaseUrl);
  if (!routes) return undefined;
  const bySink = new Map<string, { name: string; type: string; match: string[] }>();
  for (const r of routes) {
    const s = bySink.get(r.sinkName) ?? { name: r.sinkName, type: r.sink.type, match: [] };
    s.match.push(r.match);
    bySink.set(r.sinkName, s);
  }
  return [...bySink.values()];
}

function parseSinkName(name: string, env: NodeJS.ProcessEnv, databaseUrl: string | undefined): string {
  if (!SINK_NAME.test(name)) throw new UsageError('<name> must be a sink name: letters, digits and _ . : - (1-64)');
  const sinks = configuredSinks(env, databaseUrl);
  if (sinks && !sinks.some((s) => s.name === name)) {
    throw new UsageError(`no sink ${JSON.stringify(name)} in the routes (OUTBOX_ROUTES); configured: ${sinks.map((s) => s.name).join(', ')}`);
  }
  return name;
}

export async function sinksPauseCommand(name: string, opts: SinkOptions & { reason?: string }, env: NodeJS.ProcessEnv = process.env): Promise<number> {
  const sink = parseSinkName(name, env, opts.databaseUrl);
  const reason = opts.reason?.trim();
  if (!reason || reason.length > 500 || /[\u0000-\u001f]/.test(reason)) throw new UsageError('sinks pause needs --reason <text> (1 to 500 characters): it is shown to everyone who looks');
  const result = await withDatabase(opts, env, (db) => pauseSink(db, sink, reason, actorFor('sinks pause', env)));
  if (opts.json) printJson({ sink, result });
  else if (result === 'paused') process.stdout.write(`paused ${sink}: every replica stops sending to it within seconds; its events stay pending and spend no attempts\n`);
  else process.stdout.write(`${sink} was already paused; the first pause (who, since, reason) stands: see "sinks status"\n`);
  return EXIT.OK;
}

export async function sinksResumeCommand(name: string, opts: SinkOptions, env: NodeJS.ProcessEnv = process.env): Promise<number> {
  const sink = parseSinkName(name, env, opts.databaseUrl);
  const due = await withDatabase(opts, env, (db) => resumeSink(db, sink, actorFor('sinks resume', env)));
  if (opts.json) printJson({ sink, result: due === undefined ? 'not_paused' : 'resumed', madeDue: due ?? 0 });
  else if (due === undefined) process.stdout.write(`${sink} was not paused; nothing changed\n`);
  else process.stdout.write(`resumed ${sink}: ${due} parked event(s) are due again\n`);
  return due === undefined ? EXIT.FAILURE : EXIT.OK;
}

export interface SinkStatus {
  sink: string;
  type: string | null;
  /** Route patterns sending to it; null when this environment has no routes. */
  match: string[] | null;
  paused: boolean;
  pause: Omit<SinkPause, 'sink'> | null;
  /** Events created in the last hour, routed to it, that failed: retrying, dead, and a recent error; null when routes are unknown here. */
  recent: { retrying: number; dead: number; last_error: string | null } | null;
  /** Its circuit state across the live replicas, e.g. `closed (2 replicas)`, `open on worker-a`; `unknown` when none reports. */
  circuit: string;
  /** Sends to it running now, summed over the live replicas; null when none reports. */
  in_flight: number | null;
  /** Each live replica's report (refreshed within three of its report intervals). */
  replicas: Omit<ReplicaSinkStatus, 'sink'>[];
}

/** At most this many replicas are named per state in the text summary. */
const NAMED_REPLICAS = 3;

/** One line for a sink's circuit across replicas: all closed is a count, anything else names who. */
export function circuitSummary(replicas: readonly Pick<ReplicaSinkStatus, 'worker_id' | 'circuit'>[]): string {
  if (replicas.length === 0) return 'unknown (no replica reporting)';
  const byState = new Map<string, string[]>();
  for (const r of replicas) byState.set(r.circuit, [...(byState.get(r.circuit) ?? []), r.worker_id]);
  const closed = byState.get('closed');
  if (byState.size === 1 && closed) return `closed (${closed.length} replica${closed.length === 1 ? '' : 's'})`;
  const named = (workers: string[]) =>
    workers.length > NAMED_REPLICAS ? `${workers.slice(0, NAMED_REPLICAS).join(', ')} and ${workers.length - NAMED_REPLICAS} more` : workers.join(', ');
  return (['open', 'half_open', 'closed'] as const)
    .filter((state) => byState.has(state))
    .map((state) => `${state} on ${named(byState.get(state)!)}`)
    .join('; ');
}

/** Failures are counted over this window (`sinks status`). */
const RECENT_SECONDS = 3600;

export async function sinksStatusCommand(opts: SinkOptions, env: NodeJS.ProcessEnv = process.env): Promise<number> {
  const routes = configuredRoutes(env, opts.databaseUrl);
  const configured = configuredSinks(env, opts.databaseUrl);
  const [pauses, failures, replicaRows] = await withDatabase(
    opts,
    env,
    async (db) => [await listPauses(db), routes ? await recentFailures(db, RECENT_SECONDS) : [], await liveReplicaSinkStatus(db)] as const,
  );
  // Each failing type counts for the sink its route sends it to (first match wins, as in the daemon).
  const recent = new Map<string, { retrying: number; dead: number; last_error: string | null }>();
  for (const f of failures) {
    const sink = routes && findRoute(routes, f.event_type)?.sinkName;
    if (!sink) continue;
    const r = recent.get(sink) ?? { retrying: 0, dead: 0, last_error: null };
    recent.set(sink, { retrying: r.retrying + f.retrying, dead: r.dead + f.dead, last_error: r.last_error ?? f.last_error });
  }
  const names = new Set([...(configured ?? []).map((s) => s.name), ...pauses.map((p) => p.sink), ...replicaRows.map((r) => r.sink)]);
  const status: SinkStatus[] = [...names].sort().map((name) => {
    const c = configured?.find((s) => s.name === name);
    const p = pauses.find((x) => x.sink === name);
    const { sink: _s, ...pause } = p ?? ({} as SinkPause);
    const replicas = replicaRows.filter((r) => r.sink === name).map(({ sink: _r, ...r }) => r);
    return {
      sink: name,
      type: c?.type ?? null,
      match: c?.match ?? null,
      paused: p !== undefined,
      pause: p ? pause : null,
      recent: routes ? (recent.get(name) ?? { retrying: 0, dead: 0, last_error: null }) : null,
      circuit: circuitSummary(replicas),
      in_flight: replicas.length > 0 ? replicas.reduce((n, r) => n + r.in_flight, 0) : null,
      replicas,
    };
  });
  const replicaCount = new Set(replicaRows.map((r) => r.worker_id)).size;
  const perReplica =
    `circuit and in flight: as reported by ${replicaCount} live replica${replicaCount === 1 ? '' : 's'} (each reports every OUTBOX_STATUS_REPORT_MS; one silent for three of its intervals is not counted)`;
  if (opts.json) {
    printJson({ sinks: status, routesKnown: configured !== undefined, liveReplicas: replicaCount, perReplica });
    return EXIT.OK;
  }
  process.stdout.write(
    `${table(
      status.map((s) => ({
        sink: s.sink,
        type: s.type ?? '?',
        paused: s.paused ? 'PAUSED' : 'no',
        circuit: s.circuit,
        'in flight': s.in_flight ?? '?',
        since: s.pause?.paused_at ?? '',
        by: s.pause ? `${s.pause.login_role}${s.pause.os_user ? ` (os user ${s.pause.os_user})` : ''}` : '',
        parked: s.pause ? s.pause.parked : '',
        reason: s.pause?.reason ?? '',
        'retrying/dead (1 h)': s.recent ? `${s.recent.retrying}/${s.recent.dead}` : '?',
        last_error: s.recent?.last_error?.replace(/\s+/g, ' ').slice(0, 60) ?? '',
      })),
    )}\n`,
  );
  if (configured === undefined) process.stdout.write('\n(OUTBOX_ROUTES is not set here: only paused sinks are listed)\n');
  process.stdout.write(`\n${perReplica}\n`);
  return EXIT.OK;
}
