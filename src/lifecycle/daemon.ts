import type { Kysely } from 'kysely';
import type pg from 'pg';
import type { CircuitSettings, EnvConfig } from '../config/env.ts';
import { findRoute, type Route } from '../config/routes.ts';
import { poolRole } from '../db/login-role.ts';
import { clientQueryTimeoutMs, createKysely, createPool } from '../db/pool.ts';
import { notify } from '../db/queries/notify.ts';
import { ping } from '../db/queries/session.ts';
import type { Database } from '../db/schema.ts';
import { Completer } from '../dispatch/completer.ts';
import { Dispatcher } from '../dispatch/dispatcher.ts';
import { CIRCUIT_STATE_VALUE, SinkCircuits } from '../dispatch/circuit-breaker.ts';
import { OrderingSettler } from '../dispatch/ordering-settler.ts';
import { LeaseRescuer } from '../dispatch/rescuer.ts';
import { NotifyListener } from '../listener/notify-listener.ts';
import type { Logger } from '../kernel/log.ts';
import { OpsServer, type ReadinessReport } from '../metrics/http-server.ts';
import { BacklogSampler } from '../metrics/backlog-sampler.ts';
import { DispatcherMetrics } from '../metrics/metrics.ts';
import { PartitionMetrics } from '../metrics/partition-metrics.ts';
import { PartitionSampler } from '../partitions/partition-sampler.ts';
import { PartitionMaintenance } from '../partitions/maintenance.ts';
import type { Sink } from '../sinks/types.ts';
import { TenantScope } from '../tenancy/scope.ts';
import type { TracingSettings } from '../tracing/settings.ts';
import { startTracing, type DispatchTracer } from '../tracing/tracer.ts';
import { claimLoopBoundMs, completerBoundMs, Heartbeat, Watchdog } from '../kernel/heartbeat.ts';
import { serviceOf, sleep, type Service } from '../kernel/service.ts';
import { SinkPauseWatcher } from '../dispatch/sink-pauses.ts';
import { ReplicaStatusReporter } from '../dispatch/replica-status.ts';

/** How long shutdown waits for connections to close before leaving them to process exit. */
const CLOSE_BOUND_MS = 5000;

export interface DaemonOptions {
  config: EnvConfig;
  /** The login role's URL (a member of app_background with INHERIT; may be a transaction pooler). */
  connectionString: string;
  /** Direct or session-mode URL used only for LISTEN; default connectionString. */
  listenConnectionString?: string | undefined;
  /** Sessions switch to app_background with a startup option (privileged login; see preflight). */
  roleSwitch?: boolean;
  routes: readonly Route[];
  sinks: ReadonlyMap<string, Sink>;
  log: Logger;
  metrics?: DispatcherMetrics;
  /** OTEL_* settings (src/tracing/settings.ts); default off. */
  tracing?: TracingSettings;
  /** The calendar partition maintenance sees (tests inject one). */
  now?: () => Date;
}

/**
 * The composition root of the running daemon: builds the long-lived services and declares,
 * once, the order they stop in (`stages`, first to last); they start in the reverse order.
 * Stop order: listener, rescuer, ordering settler, partition maintenance and backlog sampler
 * together (no more wake-ups, DDL or sampling), dispatcher (stop claiming, drain, release),
 * completer (final flush) with the sink-pause watcher and the replica status reporter, sinks,
 * tracer provider (export the last spans), ops server (scrapable while draining), pool.
 */
export class Daemon {
  readonly pool: pg.Pool;
  readonly db: Kysely<Database>;
  readonly metrics: DispatcherMetrics;
  readonly completer: Completer;
  readonly dispatcher: Dispatcher;
  readonly rescuer: LeaseRescuer;
  readonly orderingSettler: OrderingSettler;
  readonly listener: NotifyListener;
  readonly server: OpsServer;
  /** Undefined when PARTITION_ROTATION=false. */
  readonly partitions: PartitionMaintenance | undefined;
  /** Undefined when PARTITION_SAMPLE_MS=0. */
  readonly partitionSampler: PartitionSampler | undefined;
  /** Undefined when OUTBOX_BACKLOG_SAMPLE_MS=0. */
  readonly backlog: BacklogSampler | undefined;
  /** What /healthz checks: the claim loop and the completer keep making progress. */
  readonly watchdog = new Watchdog();
  /** Stop order, first stage to last; services in one stage stop together. Start runs it backwards. */
  readonly stages: readonly (readonly Service[])[];
  /** Operator pauses of sinks, polled from the database (ADR 0014). */
  readonly sinkPauses: SinkPauseWatcher;
  /** Each sink's circuit breaker in this replica. */
  readonly circuits: SinkCircuits;
  /** Writes this replica's circuit states and sends in flight for `sinks status` (migration 0016). */
  readonly replicaStatus: ReplicaStatusReporter;
  readonly #opts: DaemonOptions;
  readonly #log: Logger;
  #stopping: Promise<void> | undefined;
  #starting: Promise<void> | undefined;
  #tracer: DispatchTracer | undefined;

  #circuits(settings: CircuitSettings, sinkNames: Iterable<string>): SinkCircuits {
    const circuits = new SinkCircuits(settings, (sink, state) => {
      this.metrics.circuitState.set({ sink }, CIRCUIT_STATE_VALUE[state]);
      this.metrics.circuitTransitions.inc({ sink, state });
      const fields = { sink, state, openMs: settings.openMs };
      if (state === 'open') this.#log.warn(fields, 'sink circuit opened: its events wait without spending attempts until a probe succeeds');
      else this.#log.info(fields, state === 'closed' ? 'sink circuit closed: sending again' : 'sink circuit half-open: probing');
    });
    // Every sink's series exists from the start (0 = closed), so alerts see it.
    for (const sink of sinkNames) this.metrics.circuitState.set({ sink }, CIRCUIT_STATE_VALUE.closed);
    return circuits;
  }

  constructor(opts: DaemonOptions) {
    this.#opts = opts;
    const { config, log } = opts;
    this.#log = log;
    const d = config.dispatch;
    this.pool = createPool({
      connectionString: opts.connectionString,
      max: config.poolSize,
      applicationName: `outbox-dispatcher:${d.workerId}`.slice(0, 63),
      role: poolRole(opts.roleSwitch ?? false),
      timeouts: config.db,
    });
    this.db = createKysely(this.pool);
    this.metrics = opts.metrics ?? new DispatcherMetrics();
    const queryTimeoutMs = clientQueryTimeoutMs(config.db);
    const claimBeat = this.watchdog.add(
      new Heartbeat('dispatcher', claimLoopBoundMs(d.pollIntervalMs, queryTimeoutMs), { idle: () => this.dispatcher.state !== 'running' }),
    );
    const completerBeat = this.watchdog.add(
      new Heartbeat('completer', completerBoundMs(queryTimeoutMs), { idle: () => this.completer.pending === 0 }),
    );
    // A batch of outcomes is written as soon as a claim's worth is ready: the dispatcher's
    // window counts unwritten outcomes, so waiting for more would stall the next claim.
    // Two writers when the pool leaves room for them beside the claim and the periodic services
    // (the default 4); with a smaller pool a second writer would only queue for a connection.
    this.completer = new Completer(this.db, log, this.metrics, {
      workerId: d.workerId,
      heartbeat: completerBeat,
      maxBatch: Math.min(500, d.batchSize),
      maxWriters: Math.max(1, Math.min(2, config.poolSize - 2)),
    });
    this.sinkPauses = new SinkPauseWatcher(this.db, log, this.metrics.registry, opts.sinks.keys());
    this.circuits = this.#circuits(config.circuit, opts.sinks.keys());
    this.dispatcher = new Dispatcher({
      db: this.db,
      log,
      metrics: this.metrics,
      completer: this.completer,
      routes: opts.routes,
      sinks: opts.sinks,
      tenantScope: new TenantScope(this.db),
      settings: d,
      heartbeat: claimBeat,
      circuits: this.circuits,
      pauses: this.sinkPauses,
    });
    this.replicaStatus = new ReplicaStatusReporter(this.db, log, {
      workerId: d.workerId,
      intervalMs: config.statusReportMs,
      source: { sinkNames: [...opts.sinks.keys()], circuits: this.circuits, sendingTo: (sink) => this.dispatcher.sendingTo(sink) },
    });
    this.rescuer = new LeaseRescuer(this.db, log, this.metrics, {
      intervalMs: d.rescueIntervalMs,
      maxAttempts: d.maxAttempts,
      retryHorizonMs: d.retryHorizonMs,
      skipKeyOnDead: (eventType) => findRoute(opts.routes, eventType)?.onDeadHead === 'skip',
      onRequeued: () => this.dispatcher.poke(),
    });
    this.orderingSettler = new OrderingSettler(this.db, log, { intervalMs: 250, onSettled: () => this.dispatcher.poke() });
    this.listener = new NotifyListener(
      {
        connectionString: opts.listenConnectionString ?? opts.connectionString,
        notify: (channel, payload) => notify(this.db, channel, payload),
        onNotify: () => this.dispatcher.poke(),
        onConnected: () => this.dispatcher.poke(),
        timeouts: { connectTimeoutMs: config.db.connectTimeoutMs, queryTimeoutMs, keepAliveInitialDelayMs: config.db.keepAliveInitialDelayMs },
      },
      log,
      this.metrics,
    );
    const partitionMetrics = config.partitions.rotation || config.partitions.sampleMs > 0 ? new PartitionMetrics(this.metrics.registry) : undefined;
    this.partitions = config.partitions.rotation
      ? new PartitionMaintenance(this.db, log, partitionMetrics!, { cron: config.partitions.cron, now: opts.now, lockTimeoutMs: config.partitions.lockTimeoutMs })
      : undefined;
    this.partitionSampler = config.partitions.sampleMs > 0
      ? new PartitionSampler(this.db, log, partitionMetrics!, { intervalMs: config.partitions.sampleMs, now: opts.now })
      : undefined;
    this.backlog = config.backlog.sampleMs > 0
      ? new BacklogSampler(this.db, log, this.metrics, { intervalMs: config.backlog.sampleMs, cap: config.backlog.countCap })
      : undefined;
    this.server = new OpsServer(
      { host: config.metrics.host, port: config.metrics.port, registry: this.metrics.registry, readiness: () => this.readiness(), liveness: () => this.watchdog.check() },
      log,
    );
    // Every step that talks to PostgreSQL is bounded: statements by the query timeout, and
    // closing connections (which waits for the server's goodbye, never sent on a black-holed
    // path) by CLOSE_BOUND_MS. Shutdown never hangs on the database.
    this.stages = [
      [this.rescuer, this.orderingSettler, this.#bounded(this.listener), ...(this.partitions ? [this.partitions] : []), ...(this.partitionSampler ? [this.partitionSampler] : []), ...(this.backlog ? [this.backlog] : [])],
      [this.dispatcher],
      // Pauses are read before the dispatcher's first claim and until its last; the status
      // report covers the drain, then removes this replica's rows.
      [this.completer, this.sinkPauses, this.#bounded(this.replicaStatus)],
      [serviceOf('sinks', { stop: async () => void (await Promise.all([...opts.sinks.values()].map((s) => s.close?.().catch(() => undefined)))) })],
      // Spans end with their attempts, so all are buffered once the dispatcher has drained; an
      // unreachable collector cannot hold shutdown up.
      [
        this.#bounded(
          serviceOf('tracer provider', {
            start: async () => {
              if (!opts.tracing) return;
              this.#tracer = await startTracing(opts.tracing, log);
              this.dispatcher.traceWith(this.#tracer);
            },
            stop: async () => this.#tracer?.shutdown(),
          }),
        ),
      ],
      [this.server],
      [this.#bounded(serviceOf('database pool', { stop: () => this.db.destroy() }))],
    ];
  }

  /** Every service, in start order. */
  get services(): Service[] {
    return this.stages.toReversed().flat();
  }

  start(): Promise<void> {
    this.#starting ??= this.#start();
    return this.#starting;
  }

  async #start(): Promise<void> {
    for (const service of this.services) await service.start();
    const d = this.#opts.config.dispatch;
    this.#log.info(
      {
        workerId: d.workerId,
        batchSize: d.batchSize,
        concurrency: d.concurrency,
        leaseMs: d.leaseMs,
        routes: this.#opts.routes.map((r) => ({ match: r.match, sink: r.sinkName })),
      },
      'outbox dispatcher running',
    );
  }

  async readiness(): Promise<ReadinessReport> {
    const checks: ReadinessReport['checks'] = {};
    try {
      await Promise.race([
        ping(this.db),
        new Promise((_, reject) => setTimeout(() => reject(new Error('timed out after 2 s')), 2000).unref()),
      ]);
      checks.database = { ok: true };
    } catch (err) {
      checks.database = { ok: false, detail: (err as Error).message };
    }
    const state = this.dispatcher.state;
    checks.dispatcher = { ok: state === 'running', detail: state };
    checks.listener = { ok: true, detail: this.listener.connected ? 'connected' : 'polling only' };
    return { ready: Object.values(checks).every((c) => c.ok), checks };
  }

  stop(): Promise<void> {
    this.#stopping ??= this.#stop();
    return this.#stopping;
  }

  async #stop(): Promise<void> {
    this.#log.info('shutting down: no new claims');
    await this.#starting?.catch(() => undefined);
    for (const stage of this.stages) await Promise.all(stage.map((service) => service.stop()));
    this.#log.info('shutdown complete');
  }

  /** `service` whose stop() gives up waiting after CLOSE_BOUND_MS (its work is left to process exit). */
  #bounded(service: Service): Service {
    const log = this.#log;
    return {
      name: service.name,
      start: () => service.start(),
      async stop() {
        const done = await Promise.race([service.stop().then(() => true, () => true), sleep(CLOSE_BOUND_MS).then(() => false)]);
        if (!done) log.warn({ waitedMs: CLOSE_BOUND_MS }, `closing the ${service.name} did not finish; leaving it to process exit`);
      },
    };
  }
}
