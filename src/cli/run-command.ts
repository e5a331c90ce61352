import { loadEnvConfig, type EnvConfig } from '../config/env.ts';
import { ConfigError } from '../config/errors.ts';
import { compileRoutes, DEFAULT_EMBEDDED_ROUTES, loadRoutesFile, type Route } from '../config/routes.ts';
import { databaseFailure } from '../db/errors.ts';
import { preflight } from '../db/preflight.ts';
import { Daemon } from '../lifecycle/daemon.ts';
import { EXIT, StartupError } from '../kernel/exit-codes.ts';
import { tuneHeapGrowth } from '../kernel/heap.ts';
import { reconnectDelayMs, sleep } from '../kernel/service.ts';
import { exitGracefullyOnSignals } from '../lifecycle/signals.ts';
import { createLogger, redactUrl, type Logger } from '../kernel/log.ts';
import { createSinks } from '../sinks/create-sinks.ts';
import { tracingSettings, type TracingSettings } from '../tracing/settings.ts';
import { resolveConnection } from './connection.ts';

/** Config stage 2: everything `run` needs, validated before any connection is made. */
export function loadRunConfig(env: NodeJS.ProcessEnv): { config: EnvConfig; routes: Route[]; tracing: TracingSettings } {
  const config = loadEnvConfig(env);
  let file = DEFAULT_EMBEDDED_ROUTES;
  if (config.routesSource) file = loadRoutesFile(config.routesSource);
  else if (config.databaseUrl) {
    throw new ConfigError('OUTBOX_ROUTES', 'is required when DATABASE_URL is set: a path to a routes file (JSON or YAML) or inline JSON');
  }
  return { config, routes: compileRoutes(file, config.dispatch.leaseMs), tracing: tracingSettings(env) };
}

export async function runCommand(env: NodeJS.ProcessEnv = process.env): Promise<void> {
  const { config, routes, tracing } = loadRunConfig(env);
  // The daemon only: a long-lived process whose old space otherwise fills with promoted garbage.
  tuneHeapGrowth();
  const log: Logger = createLogger(config.logLevel);
  const sinks = createSinks(routes, log, env);
  const conn = await resolveConnection(config, log, { as: 'dispatcher' });
  let daemon: Daemon | undefined;
  try {
    log.info({ database: redactUrl(conn.url), embedded: Boolean(conn.embedded) }, 'starting');
    const { roleSwitch } = await untilReachable(config.db.startupWaitMs, log, () =>
      preflight(conn.url, { allowPrivilegedRole: config.allowPrivilegedRole, log }),
    );
    // OUTBOX_LISTEN_URL belongs to DATABASE_URL's database; the embedded default needs none.
    const listenUrl = conn.embedded ? undefined : config.listenUrl;
    if (listenUrl) log.info({ listen: redactUrl(listenUrl) }, 'LISTEN uses OUTBOX_LISTEN_URL');
    daemon = new Daemon({ config, connectionString: conn.url, listenConnectionString: listenUrl, roleSwitch, routes, sinks, log, tracing });
    await daemon.start();
  } catch (err) {
    await daemon?.stop().catch(() => undefined);
    await conn.release().catch(() => undefined);
    throw err;
  }
  if (conn.embedded) {
    log.info(
      { dataDir: conn.embedded.dir, port: conn.embedded.credentials.port },
      'embedded PostgreSQL ready; in another terminal try: npm run cli -- enqueue --type booking.created --tenant 11111111-1111-4111-8111-111111111111',
    );
  }
  const d = daemon;
  exitGracefullyOnSignals(async () => {
    await d.stop();
    await conn.release();
  }, log);
}

/**
 * Retries `work` while the database is unreachable (down, restarting, refusing connections),
 * for up to `waitMs`: a replica started during a failover or a PostgreSQL restart waits for it
 * instead of exiting and relying on its supervisor. Other failures (login, privileges, schema)
 * are not transient and surface at once.
 */
async function untilReachable<T>(waitMs: number, log: Logger, work: () => Promise<T>): Promise<T> {
  const deadline = Date.now() + waitMs;
  for (let attempt = 1; ; attempt++) {
    try {
      return await work();
    } catch (err) {
      // Refused connections, and sessions ended under it (57P01 during a restart's fast
      // shutdown, a dropped socket) mid-preflight: all transient, and preflight only reads.
      const unreachable = (err instanceof StartupError && err.exitCode === EXIT.DATABASE_UNAVAILABLE) || databaseFailure(err)?.kind === 'unreachable';
      // The whole wait is used: the last retry is at the deadline, not at the last backoff step
      // before it (which gave up after 1.9 s of a 2.5 s wait, depending on the jitter).
      const remaining = deadline - Date.now();
      if (!unreachable || remaining <= 0) throw err;
      const delay = Math.min(reconnectDelayMs(attempt, 250, 5000), remaining);
      log.warn({ attempt, retryInMs: Math.round(delay), error: (err as Error).message }, 'database not reachable yet; waiting for it (OUTBOX_DB_STARTUP_WAIT_MS)');
      await sleep(delay);
    }
  }
}
