import crypto from 'node:crypto';
import * as pgListen from 'pg-listen';
import type { Subscriber } from 'pg-listen';
import { reconnectDelayMs, sleep, type Service } from '../kernel/service.ts';
import type { Logger } from '../kernel/log.ts';
import type { DispatcherMetrics } from '../metrics/metrics.ts';
import { OUTBOX_CHANNEL } from '../db/queries/notify.ts';

// pg-listen is CommonJS with an `exports.default`; loaders disagree on which layer
// `import default` yields, so take the function wherever it is.
type CreateSubscriber = (typeof import('pg-listen'))['default'];
const pgListenDefault = (pgListen as unknown as { default: CreateSubscriber | { default: CreateSubscriber } }).default;
const createSubscriber: CreateSubscriber = typeof pgListenDefault === 'function' ? pgListenDefault : pgListenDefault.default;

/** How long the start-up self-test waits for its own notification. */
const SELF_TEST_TIMEOUT_MS = 5000;
const SELF_TEST_PREFIX = 'outbox-dispatcher:self-test:';

export interface NotifyListenerOptions {
  /** OUTBOX_LISTEN_URL, or DATABASE_URL when that is unset. */
  connectionString: string;
  channel?: string;
  /**
   * Sends a notification over another connection (the daemon's pool) for the self-test.
   * A pooler in transaction mode hands the LISTEN's server connection to other clients, so
   * notifications never reach this listener; only a notification sent by someone else shows that.
   */
  notify?: (channel: string, payload: string) => Promise<void>;
  selfTestTimeoutMs?: number;
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
 * while disconnected the dispatcher still polls. After the first LISTEN it checks that a
 * notification really arrives; when none does (a transaction-mode pooler), it warns once,
 * sets outbox_listener_polling_only, and closes the connection: polling does the work.
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
  #selfTested = false;
  #selfTestWaiter: { token: string; arrived: () => void } | undefined;

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
        if (this.#stop.signal.aborted) {
          await sub.close().catch(() => undefined);
          return;
        }
        // Up only once LISTEN is in place: a commit between the connection and the LISTEN sends
        // a notification nobody hears, so the wake-up here makes the dispatcher claim after it.
        this.#setConnected(true);
        this.#opts.onConnected();
        if (!this.#selfTested) await this.#selfTest(sub);
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
    sub.notifications.on(channel, (payload: unknown) => {
      if (typeof payload === 'string' && payload.startsWith(SELF_TEST_PREFIX)) {
        if (this.#selfTestWaiter?.token === payload) this.#selfTestWaiter.arrived();
        return;
      }
      this.#opts.onNotify();
    });
    sub.events.on('connected', () => {
      // pg-listen reconnected this subscriber and listens again (the first connection is
      // reported by #connectLoop, once its LISTEN is in place).
      if (this.#subscriber !== sub) return;
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

  /** NOTIFY from another connection and wait for it here; inconclusive tests are not repeated. */
  async #selfTest(sub: Subscriber): Promise<void> {
    const notify = this.#opts.notify;
    if (!notify) return;
    this.#selfTested = true;
    const token = `${SELF_TEST_PREFIX}${crypto.randomUUID()}`;
    const timeoutMs = this.#opts.selfTestTimeoutMs ?? SELF_TEST_TIMEOUT_MS;
    let timer: NodeJS.Timeout | undefined;
    const arrived = new Promise<boolean>((resolve) => {
      this.#selfTestWaiter = { token, arrived: () => resolve(true) };
      timer = setTimeout(() => resolve(false), timeoutMs);
      this.#stop.signal.addEventListener('abort', () => resolve(true), { once: true });
    });
    try {
      await notify(this.#opts.channel ?? OUTBOX_CHANNEL, token);
    } catch (err) {
      clearTimeout(timer);
      this.#selfTestWaiter = undefined;
      this.#log.warn({ err }, 'LISTEN self-test could not send its notification; assuming notifications work');
      return;
    }
    const ok = await arrived;
    clearTimeout(timer);
    this.#selfTestWaiter = undefined;
    if (ok || this.#stop.signal.aborted) return;
    this.#log.warn(
      { waitedMs: timeoutMs },
      'notifications do not arrive on the LISTEN connection (a transaction-mode pooler such as PgBouncer or Supavisor in transaction mode ' +
        'does not keep LISTEN); relying on polling every OUTBOX_POLL_INTERVAL_MS. Set OUTBOX_LISTEN_URL to a direct or session-mode URL for prompt wake-ups',
    );
    this.#metrics.listenerPollingOnly.set(1);
    // The LISTEN only occupies a pooled server connection to no effect: let it go.
    this.#subscriber = undefined;
    sub.events.removeAllListeners('error');
    await sub.close().catch(() => undefined);
    this.#setConnected(false);
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
