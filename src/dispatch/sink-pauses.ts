import type { Kysely } from 'kysely';
import { Gauge, type Registry } from 'prom-client';
import { pausedSinks, unparkOrphans } from '../db/queries/sink-pauses.ts';
import type { Database } from '../db/schema.ts';
import { everyMs, PeriodicService } from '../kernel/periodic-service.ts';
import type { Logger } from '../kernel/log.ts';

/** How often each replica reads the pauses: "every replica obeys within seconds". */
export const SINK_PAUSE_POLL_MS = 1000;

/**
 * Which sinks are paused (outbox_dispatcher.sink_pauses, written by `sinks pause`), read by
 * every replica on a short interval (docs/adr/0014-sink-pause-and-audit-trail.md). The
 * dispatcher asks it after each claim; an event of a paused sink is parked, not sent. The
 * park itself re-checks the pause row in the database, so a replica that has not yet seen a
 * resume sends instead of parking.
 */
export class SinkPauseWatcher extends PeriodicService<void> {
  readonly #db: Kysely<Database>;
  #paused = new Map<string, Date>();
  #stopped = false;

  constructor(db: Kysely<Database>, log: Logger, registry: Registry, sinkNames: Iterable<string>, opts: { intervalMs?: number } = {}) {
    super('sink-pauses', everyMs(opts.intervalMs ?? SINK_PAUSE_POLL_MS, 0.1), log);
    this.#db = db;
    const names = [...sinkNames];
    const paused = () => this.#paused;
    // Every configured sink has both series from the start (0), so alerts and dashboards see them.
    new Gauge({
      name: 'outbox_sink_paused',
      help: 'Whether the sink is paused (`outbox-dispatcher sinks pause`): 1 paused, 0 sending. As this replica last read it (every second).',
      labelNames: ['sink'],
      registers: [registry],
      collect() {
        for (const sink of names) this.set({ sink }, paused().has(sink) ? 1 : 0);
      },
    });
    new Gauge({
      name: 'outbox_sink_paused_seconds',
      help: 'How long the sink has been paused; 0 while it is not.',
      labelNames: ['sink'],
      registers: [registry],
      collect() {
        for (const sink of names) {
          const since = paused().get(sink);
          this.set({ sink }, since ? Math.max(0, Math.round((Date.now() - since.getTime()) / 1000)) : 0);
        }
      },
    });
  }

  isPaused(sink: string): boolean {
    return this.#paused.has(sink);
  }

  override async start(): Promise<void> {
    // Read once before the dispatcher's first claim (it starts after this service), so a pause
    // in force at start-up is obeyed from the first event.
    if (!this.#stopped) await this.runOnce().catch((err: unknown) => this.onError(err));
    await super.start();
  }

  protected onError(err: unknown): void {
    this.log.warn({ err }, 'reading sink pauses failed');
  }

  async runOnce(): Promise<void> {
    const next = await pausedSinks(this.#db);
    for (const [sink, since] of next) if (!this.#paused.has(sink)) this.log.warn({ sink, since }, 'sink paused: its events are parked, unattempted, until "sinks resume"');
    for (const sink of this.#paused.keys()) if (!next.has(sink)) this.log.info({ sink }, 'sink resumed');
    this.#paused = next;
    const unparked = await unparkOrphans(this.#db);
    if (unparked > 0) this.log.info({ unparked }, 'parked events of sinks no longer paused are due again');
  }

  override async stop(): Promise<void> {
    this.#stopped = true;
    await super.stop();
  }
}
