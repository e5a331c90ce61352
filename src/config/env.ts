import os from 'node:os';
import cron from 'node-cron';
import { z } from 'zod';
import { safeText } from '../domain/safe-text.ts';
import { LOG_LEVELS, type LogLevel } from '../kernel/log.ts';
import { ConfigError } from './errors.ts';
import { boolVar, enumVar, intVar, postgresUrlVar, stringVar } from './env-schema.ts';

/** Every environment variable the daemon reads, with its default and bounds. */
export const envSchema = z.object({
  DATABASE_URL: postgresUrlVar(),
  MIGRATION_DATABASE_URL: postgresUrlVar(),
  OUTBOX_LISTEN_URL: postgresUrlVar(),
  OUTBOX_ROUTES: stringVar(),
  METRICS_PORT: intVar(9464, 0, 65535),
  METRICS_HOST: stringVar(),
  OUTBOX_BATCH_SIZE: intVar(500, 1, 5000),
  OUTBOX_CONCURRENCY: intVar(100, 1, 1000),
  OUTBOX_FAIR_SHARE_PERCENT: intVar(25, 0, 100),
  OUTBOX_POLL_INTERVAL_MS: intVar(1000, 10, 600_000),
  OUTBOX_LEASE_MS: intVar(30_000, 1000, 3_600_000),
  OUTBOX_MAX_ATTEMPTS: intVar(10, 1, 1000),
  OUTBOX_BACKOFF_BASE_MS: intVar(1000, 1, 3_600_000),
  OUTBOX_BACKOFF_MAX_MS: intVar(300_000, 1, 86_400_000),
  OUTBOX_RETRY_HORIZON_MS: intVar(86_400_000, 0, 2_592_000_000),
  OUTBOX_CIRCUIT_FAILURE_THRESHOLD: intVar(5, 0, 100_000),
  OUTBOX_CIRCUIT_FAILURE_PERCENT: intVar(90, 1, 100),
  OUTBOX_CIRCUIT_WINDOW_MS: intVar(10_000, 100, 3_600_000),
  OUTBOX_CIRCUIT_OPEN_MS: intVar(30_000, 100, 3_600_000),
  OUTBOX_CIRCUIT_HALF_OPEN_PROBES: intVar(1, 1, 1000),
  OUTBOX_SHUTDOWN_GRACE_MS: intVar(25_000, 0, 600_000),
  OUTBOX_RESCUE_INTERVAL_MS: intVar(5000, 100, 600_000),
  OUTBOX_POOL_SIZE: intVar(4, 2, 200),
  OUTBOX_DB_STATEMENT_TIMEOUT_MS: intVar(15_000, 100, 3_600_000),
  OUTBOX_DB_IDLE_IN_TRANSACTION_TIMEOUT_MS: intVar(60_000, 1000, 3_600_000),
  OUTBOX_DB_CONNECT_TIMEOUT_MS: intVar(10_000, 100, 600_000),
  OUTBOX_DB_KEEPALIVE_MS: intVar(10_000, 1000, 3_600_000),
  OUTBOX_DB_STARTUP_WAIT_MS: intVar(60_000, 0, 3_600_000),
  OUTBOX_MAX_PAYLOAD_BYTES: intVar(1_048_576, 1, 104_857_600),
  OUTBOX_WORKER_ID: stringVar(),
  OUTBOX_BACKLOG_SAMPLE_MS: intVar(15_000, 0, 3_600_000),
  OUTBOX_BACKLOG_COUNT_CAP: intVar(100_000, 1, 100_000_000),
  OUTBOX_STATUS_REPORT_MS: intVar(5000, 100, 600_000),
  OUTBOX_ALLOW_PRIVILEGED_ROLE: boolVar(false),
  OUTBOX_EMBEDDED_DIR: stringVar(),
  OUTBOX_EMBEDDED_PORT: intVar(54329, 1, 65535),
  PARTITION_CRON: stringVar().superRefine((value, ctx) => {
    if (value !== undefined && !cron.validate(value)) {
      ctx.addIssue({ code: 'custom', message: `must be a cron expression such as "17 * * * *" (got ${JSON.stringify(value)})` });
    }
  }),
  PARTITION_ROTATION: boolVar(true),
  PARTITION_LOCK_TIMEOUT_MS: intVar(1000, 10, 60_000),
  PARTITION_SAMPLE_MS: intVar(60_000, 0, 3_600_000),
  LOG_LEVEL: enumVar(LOG_LEVELS, 'info'),
});

/** Hourly at minute 17, UTC: cheap when there is nothing to do, and off the top of the hour. */
export const DEFAULT_PARTITION_CRON = '17 * * * *';

export interface DispatchSettings {
  workerId: string;
  batchSize: number;
  concurrency: number;
  /** Share of each claim filled tenant by tenant (ADR 0012); 0 = oldest first only. */
  fairSharePercent: number;
  pollIntervalMs: number;
  leaseMs: number;
  maxAttempts: number;
  backoffBaseMs: number;
  backoffMaxMs: number;
  /** See RetryPolicy.retryHorizonMs (ADR 0007). */
  retryHorizonMs: number;
  shutdownGraceMs: number;
  rescueIntervalMs: number;
  maxPayloadBytes: number;
}

/** The per-sink circuit breaker (src/dispatch/circuit-breaker.ts, ADR 0007). */
export interface CircuitSettings {
  /** Retryable failures within windowMs needed to open a sink's circuit; 0 disables the breaker. */
  failureThreshold: number;
  /** ...and the share of failures among all results in the window (0-1). */
  failureRatio: number;
  /** The sliding window over which failures are counted. */
  windowMs: number;
  /** How long an open circuit holds its events before half-open probes. */
  openMs: number;
  /** Real sends allowed at once while half-open. */
  halfOpenProbes: number;
}

export interface EnvConfig {
  /** Unset means: run on the embedded PostgreSQL under `embedded.dir`. */
  databaseUrl: string | undefined;
  migrationDatabaseUrl: string | undefined;
  /** Direct or session-mode URL for LISTEN only; unset: DATABASE_URL (ADR 0010). */
  listenUrl: string | undefined;
  routesSource: string | undefined;
  metrics: { port: number; host: string };
  dispatch: DispatchSettings;
  circuit: CircuitSettings;
  poolSize: number;
  /** Database timeouts of the daemon's pool (ADR 0009). */
  db: {
    statementTimeoutMs: number;
    idleInTransactionTimeoutMs: number;
    connectTimeoutMs: number;
    keepAliveInitialDelayMs: number;
    /** How long `run` keeps retrying an unreachable database at start-up before exit 69. */
    startupWaitMs: number;
  };
  /** 0 disables sampling. */
  backlog: { sampleMs: number; countCap: number };
  /** How often this replica writes its per-sink circuit state and sends in flight (`sinks status`). */
  statusReportMs: number;
  allowPrivilegedRole: boolean;
  embedded: { dir: string; port: number };
  /** sampleMs: how often the partition gauges are read from the database (0: only when rotating). */
  partitions: { rotation: boolean; cron: string; lockTimeoutMs: number; sampleMs: number };
  logLevel: LogLevel;
}

/** Validates the environment; throws ConfigError naming the first bad key. */
export function loadEnvConfig(env: NodeJS.ProcessEnv = process.env): EnvConfig {
  const parsed = envSchema.safeParse(env);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    throw new ConfigError(String(issue.path[0] ?? 'environment'), issue.message);
  }
  const e = parsed.data;
  if (e.OUTBOX_BACKOFF_MAX_MS < e.OUTBOX_BACKOFF_BASE_MS) {
    throw new ConfigError(
      'OUTBOX_BACKOFF_MAX_MS',
      `must be at least OUTBOX_BACKOFF_BASE_MS (${e.OUTBOX_BACKOFF_BASE_MS}), got ${e.OUTBOX_BACKOFF_MAX_MS}`,
    );
  }
  // The worker id is written to locked_by: only text the database always accepts.
  if (e.OUTBOX_WORKER_ID !== undefined && e.OUTBOX_WORKER_ID !== safeText(e.OUTBOX_WORKER_ID)) {
    throw new ConfigError('OUTBOX_WORKER_ID', 'must not contain control characters or invalid Unicode');
  }
  const workerId = e.OUTBOX_WORKER_ID ?? safeText(`${os.hostname()}-${process.pid}`, 200);
  if (workerId.length > 200) throw new ConfigError('OUTBOX_WORKER_ID', 'must be at most 200 characters');
  return {
    databaseUrl: e.DATABASE_URL,
    migrationDatabaseUrl: e.MIGRATION_DATABASE_URL,
    listenUrl: e.OUTBOX_LISTEN_URL,
    routesSource: e.OUTBOX_ROUTES,
    metrics: { port: e.METRICS_PORT, host: e.METRICS_HOST ?? '0.0.0.0' },
    dispatch: {
      workerId,
      batchSize: e.OUTBOX_BATCH_SIZE,
      concurrency: e.OUTBOX_CONCURRENCY,
      fairSharePercent: e.OUTBOX_FAIR_SHARE_PERCENT,
      pollIntervalMs: e.OUTBOX_POLL_INTERVAL_MS,
      leaseMs: e.OUTBOX_LEASE_MS,
      maxAttempts: e.OUTBOX_MAX_ATTEMPTS,
      backoffBaseMs: e.OUTBOX_BACKOFF_BASE_MS,
      backoffMaxMs: e.OUTBOX_BACKOFF_MAX_MS,
      retryHorizonMs: e.OUTBOX_RETRY_HORIZON_MS,
      shutdownGraceMs: e.OUTBOX_SHUTDOWN_GRACE_MS,
      rescueIntervalMs: e.OUTBOX_RESCUE_INTERVAL_MS,
      maxPayloadBytes: e.OUTBOX_MAX_PAYLOAD_BYTES,
    },
    circuit: {
      failureThreshold: e.OUTBOX_CIRCUIT_FAILURE_THRESHOLD,
      failureRatio: e.OUTBOX_CIRCUIT_FAILURE_PERCENT / 100,
      windowMs: e.OUTBOX_CIRCUIT_WINDOW_MS,
      openMs: e.OUTBOX_CIRCUIT_OPEN_MS,
      halfOpenProbes: e.OUTBOX_CIRCUIT_HALF_OPEN_PROBES,
    },
    poolSize: e.OUTBOX_POOL_SIZE,
    db: {
      statementTimeoutMs: e.OUTBOX_DB_STATEMENT_TIMEOUT_MS,
      idleInTransactionTimeoutMs: e.OUTBOX_DB_IDLE_IN_TRANSACTION_TIMEOUT_MS,
      connectTimeoutMs: e.OUTBOX_DB_CONNECT_TIMEOUT_MS,
      startupWaitMs: e.OUTBOX_DB_STARTUP_WAIT_MS,
      keepAliveInitialDelayMs: e.OUTBOX_DB_KEEPALIVE_MS,
    },
    backlog: { sampleMs: e.OUTBOX_BACKLOG_SAMPLE_MS, countCap: e.OUTBOX_BACKLOG_COUNT_CAP },
    statusReportMs: e.OUTBOX_STATUS_REPORT_MS,
    allowPrivilegedRole: e.OUTBOX_ALLOW_PRIVILEGED_ROLE,
    embedded: { dir: e.OUTBOX_EMBEDDED_DIR ?? '.data/postgres', port: e.OUTBOX_EMBEDDED_PORT },
    partitions: { rotation: e.PARTITION_ROTATION, cron: e.PARTITION_CRON ?? DEFAULT_PARTITION_CRON, lockTimeoutMs: e.PARTITION_LOCK_TIMEOUT_MS, sampleMs: e.PARTITION_SAMPLE_MS },
    logLevel: e.LOG_LEVEL,
  };
}
