import { loadEnvConfig } from '../../src/config/env.ts';
import { compileRoutes, parseRoutes, type RoutesFileInput } from '../../src/config/routes.ts';
import { Daemon } from '../../src/lifecycle/daemon.ts';
import { createLogger } from '../../src/kernel/log.ts';
import { createSinks } from '../../src/sinks/create-sinks.ts';
import type { Sink } from '../../src/sinks/types.ts';
import { tracingSettings } from '../../src/tracing/settings.ts';
import type { TestDatabase } from './db.ts';

export const NOOP_ROUTES: RoutesFileInput = { routes: [{ match: '*', sink: { type: 'noop', name: 'test' } }] };

/**
 * An in-process daemon on the test database, connected as the worker login role.
 * `sinks` replaces the sink instances the routes file would build, by sink name.
 */
export async function startDaemon(db: TestDatabase, opts: DaemonTestOptions = {}): Promise<Daemon> {
  const daemon = createDaemon(db, opts);
  await daemon.start();
  return daemon;
}

export interface DaemonTestOptions {
  routes?: RoutesFileInput;
  env?: Record<string, string>;
  sinks?: Record<string, Sink>;
  /** The daemon's DATABASE_URL (default: the worker login, direct). */
  connectionString?: string;
  /** OUTBOX_LISTEN_URL. */
  listenUrl?: string;
}

/** The daemon startDaemon starts, not started. */
export function createDaemon(db: TestDatabase, opts: DaemonTestOptions = {}): Daemon {
  const config = loadEnvConfig({
    METRICS_PORT: '0',
    METRICS_HOST: '127.0.0.1',
    OUTBOX_POLL_INTERVAL_MS: '100',
    OUTBOX_RESCUE_INTERVAL_MS: '200',
    OUTBOX_BACKOFF_BASE_MS: '50',
    OUTBOX_BACKOFF_MAX_MS: '200',
    LOG_LEVEL: 'silent',
    PARTITION_ROTATION: 'false',
    ...opts.env,
  });
  const routes = compileRoutes(parseRoutes(opts.routes ?? NOOP_ROUTES), config.dispatch.leaseMs);
  const log = createLogger(config.logLevel);
  const sinks = createSinks(routes, log, {});
  for (const [name, sink] of Object.entries(opts.sinks ?? {})) sinks.set(name, sink);
  return new Daemon({ config, connectionString: opts.connectionString ?? db.workerUrl, listenConnectionString: opts.listenUrl, routes, sinks, log, tracing: tracingSettings(opts.env ?? {}) });
}

/** A sink that records what it got and answers with `behaviour`. */
export function recordingSink(name = 'test', behaviour: (e: import('../../src/domain/event.ts').OutboxEvent) => Promise<void> | void = () => {}) {
  const calls: { event: import('../../src/domain/event.ts').OutboxEvent; start: number; end: number }[] = [];
  const sink: Sink & { calls: typeof calls } = {
    name,
    type: 'test',
    timeoutMs: 0,
    calls,
    async send(event) {
      const start = Date.now();
      try {
        await behaviour(event);
      } finally {
        calls.push({ event, start, end: Date.now() });
      }
    },
  };
  return sink;
}
