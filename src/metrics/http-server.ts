import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Registry } from 'prom-client';
import { ConfigError } from '../config/errors.ts';
import type { LivenessReport } from '../kernel/heartbeat.ts';
import type { Service } from '../kernel/service.ts';
import type { Logger } from '../kernel/log.ts';

export interface ReadinessReport {
  ready: boolean;
  checks: Record<string, { ok: boolean; detail?: string }>;
}

export interface OpsServerOptions {
  host: string;
  port: number;
  registry: Registry;
  /** /readyz: may the orchestrator send traffic (and count this replica)? */
  readiness: () => Promise<ReadinessReport>;
  /** /healthz: are the loops making progress? Unset: alive while the process serves. */
  liveness?: () => LivenessReport;
}

/** /metrics (Prometheus), /healthz (loops making progress), /readyz (database and dispatcher). */
export class OpsServer implements Service {
  readonly name = 'ops-server';
  readonly #opts: OpsServerOptions;
  readonly #log: Logger;
  #server: http.Server | undefined;
  #starting: Promise<void> | undefined;
  #stopping: Promise<void> | undefined;

  constructor(opts: OpsServerOptions, log: Logger) {
    this.#opts = opts;
    this.#log = log.child({ component: 'ops-server' });
  }

  /** The bound port (useful with METRICS_PORT=0). */
  get port(): number | undefined {
    return (this.#server?.address() as AddressInfo | null)?.port;
  }

  start(): Promise<void> {
    if (this.#stopping) return Promise.resolve();
    this.#starting ??= this.#listen();
    return this.#starting;
  }

  async #listen(): Promise<void> {
    const server = http.createServer((req, res) => {
      this.#handle(req, res).catch((err: unknown) => {
        this.#log.error({ err, path: req.url }, 'ops endpoint failed');
        if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain' });
        res.end('internal error\n');
      });
    });
    this.#server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err: NodeJS.ErrnoException) => {
        this.#server = undefined;
        reject(
          err.code === 'EADDRINUSE' || err.code === 'EACCES'
            ? new ConfigError('METRICS_PORT', `cannot listen on ${this.#opts.host}:${this.#opts.port}: ${err.code === 'EADDRINUSE' ? 'address already in use' : 'permission denied'}`)
            : err,
        );
      });
      server.listen(this.#opts.port, this.#opts.host, () => {
        server.removeAllListeners('error');
        resolve();
      });
    });
    this.#log.info({ host: this.#opts.host, port: this.port }, 'serving /metrics, /healthz, /readyz');
  }

  async #handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' }).end();
      return;
    }
    switch (path) {
      case '/metrics': {
        const body = await this.#opts.registry.metrics();
        res.writeHead(200, { 'content-type': this.#opts.registry.contentType }).end(body);
        return;
      }
      case '/healthz': {
        // 503 when the claim loop or the completer has stalled (e.g. a black-holed database
        // connection): a restart gets fresh connections. Not ready is /readyz's business.
        const report = this.#opts.liveness?.() ?? { live: true, stalled: [] };
        if (report.live) {
          res.writeHead(200, { 'content-type': 'application/json' }).end('{"status":"ok"}\n');
        } else {
          res.writeHead(503, { 'content-type': 'application/json' }).end(`${JSON.stringify({ status: 'stalled', stalled: report.stalled })}\n`);
        }
        return;
      }
      case '/readyz': {
        const report = await this.#opts.readiness();
        res.writeHead(report.ready ? 200 : 503, { 'content-type': 'application/json' }).end(`${JSON.stringify(report)}\n`);
        return;
      }
      default:
        res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
    }
  }

  stop(): Promise<void> {
    this.#stopping ??= this.#close();
    return this.#stopping;
  }

  /** Waits for a listen under way (closing a server that is not listening yet would leave it open). */
  async #close(): Promise<void> {
    await this.#starting?.catch(() => undefined);
    const server = this.#server;
    if (!server) return;
    this.#server = undefined;
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    server.closeAllConnections();
    await closed;
  }
}
