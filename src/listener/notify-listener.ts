import * as pgListen from 'pg-listen';
import type { Subscriber } from 'pg-listen';
import { reconnectDelayMs, sleep, type Service } from '../lifecycle/service.ts';
import type { Logger } from '../log.ts';
import type { DispatcherMetrics } from '../metrics/metrics.ts';

// pg-listen is CommonJS with an `exports.default`; loaders disagree on which layer
// `import default` yields, so take the function wherever it is.
type CreateSubscriber = (typeof import('pg-listen'))['default'];
const pgListenDefault = (pgListen as unknown as { default: CreateSubscriber | { default: CreateSubscriber } }).default;
const createSubscriber: CreateSubscriber = typeof pgListenDefault === 'function' ? pgListenDefault : pgListenDefault.default;

/** The channel the capacity_outbox insert trigger notifies (migrations/0002). */
export const OUTBOX_CHANNEL = 'capacity_outbox';

export interface NotifyListenerOptions {
  connectionString: string;
  channel?: string;
  /** A notification arrived: events may be due. */
  onNotify: () => void;
  /** (Re)connected: notifications may have been missed, so look now. */
  onConnected: () => void;
  /** Connect, query and TCP keepalive bounds (ADR 0009); unset: pg's defaults, keepalive on. */
  timeouts?: { connectTimeoutMs: number; queryTimeoutMs: number; keepAliveInitialDelayMs: number };
}

/**
 * LISTENs on its own connection (pg-listen) and reconnects with capped, jittered
 * backoff for as long as the daemon runs. Notifications are only a latency hint;
 * while disconnected the dispatcher still polls.
 */
export class NotifyListener implements Service {
  readonly name = 'notify-listener';
  readonly #opts: NotifyListenerOptions;
  readonly #log: Logger;
  readonly #metrics: DispatcherMetrics;
  readonly #stop = new AbortController();
  #subscriber: Subscriber | undefined;
  #loop: Promise<void> | undefined;
  #connected = false;

  constructor(opts: NotifyListenerOptions, log: Logger, metrics: DispatcherMetrics) {
    this.#opts = opts;
    this.#log = log.child({ component: 'notify-listener' });
    this.#metrics = metrics;
  }

  get connected(): boolean {
    return this.#connected;
  }

  async start(): Promise<void> {
    this.#loop ??= this.#connectLoop();
  }

  /** Connects (again) until it succeeds or the daemon stops. */
  async #connectLoop(): Promise<void> {
    for (let attempt = 0; !this.#stop.signal.aborted; attempt++) {
      const sub = this.#create();
      try {
        await sub.connect();
        await sub.listenTo(this.#opts.channel ?? OUTBOX_CHANNEL);
        this.#subscriber = sub;
        if (this.#stop.signal.aborted) await sub.close().catch(() => undefined);
        return;
      } catch (err) {
        await sub.close().catch(() => undefined);
        this.#setConnected(false);
        this.#metrics.listenerReconnects.inc();
        const delay = reconnectDelayMs(attempt, 250, 30_000);
        this.#log.warn({ err, retryInMs: delay }, 'LISTEN connection failed; falling back to polling until it returns');
        await sleep(delay, this.#stop.signal);
      }
    }
  }

  #create(): Subscriber {
    const channel = this.#opts.channel ?? OUTBOX_CHANNEL;
    const sub = createSubscriber(
      {
        connectionString: this.#opts.connectionString,
        application_name: 'outbox-dispatcher-listener',
        // A black-holed LISTEN connection fails its paranoid check instead of hanging on it.
        keepAlive: true,
        ...(this.#opts.timeouts
          ? {
              keepAliveInitialDelayMillis: this.#opts.timeouts.keepAliveInitialDelayMs,
              connectionTimeoutMillis: this.#opts.timeouts.connectTimeoutMs,
              query_timeout: this.#opts.timeouts.queryTimeoutMs,
            }
          : {}),
      },
      {
        parse: (payload: string) => payload,
        paranoidChecking: 15_000,
        retryLimit: Infinity,
        retryTimeout: 0,
        retryInterval: (attempt: number) => reconnectDelayMs(attempt, 250, 30_000),
      },
    );
    sub.notifications.on(channel, () => this.#opts.onNotify());
    sub.events.on('connected', () => {
      this.#setConnected(true);
      this.#opts.onConnected();
    });
    sub.events.on('reconnect', (attempt: number) => {
      this.#setConnected(false);
      this.#metrics.listenerReconnects.inc();
      if (attempt === 1) this.#log.warn('LISTEN connection lost; reconnecting (polling meanwhile)');
    });
    sub.events.on('error', (err: Error) => {
      // pg-listen gave up on this client; start over with a fresh one.
      this.#setConnected(false);
      this.#log.error({ err }, 'LISTEN connection failed');
      if (this.#subscriber === sub && !this.#stop.signal.aborted) {
        this.#subscriber = undefined;
        void sub.close().catch(() => undefined);
        this.#loop = this.#connectLoop();
      }
    });
    return sub;
  }

  #setConnected(up: boolean): void {
    if (up && !this.#connected) this.#log.info('LISTEN connection up');
    this.#connected = up;
    this.#metrics.listenerConnected.set(up ? 1 : 0);
  }

  async stop(): Promise<void> {
    this.#stop.abort();
    await this.#loop;
    const sub = this.#subscriber;
    this.#subscriber = undefined;
    if (sub) await sub.close().catch(() => undefined);
    this.#setConnected(false);
  }
}
