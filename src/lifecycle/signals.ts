import type { Logger } from '../kernel/log.ts';
import { EXIT } from '../kernel/exit-codes.ts';

/**
 * First SIGTERM/SIGINT: graceful shutdown, then exit 0. A second signal exits at
 * once (events still leased are rescued by other replicas when the lease expires).
 */
export function exitGracefullyOnSignals(shutdown: () => Promise<void>, log: Logger): void {
  let received = 0;
  const handler = (signal: NodeJS.Signals) => {
    received++;
    if (received > 1) {
      log.warn({ signal }, 'second signal: exiting immediately');
      process.exit(EXIT.SIGNAL);
    }
    log.info({ signal }, 'shutting down gracefully (send the signal again to exit at once)');
    shutdown().then(
      () => process.exit(EXIT.OK),
      (err: unknown) => {
        log.error({ err }, 'shutdown failed');
        process.exit(EXIT.FAILURE);
      },
    );
  };
  process.on('SIGTERM', handler);
  process.on('SIGINT', handler);
}
