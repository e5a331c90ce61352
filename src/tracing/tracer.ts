import type { Logger } from '../kernel/log.ts';
import type { TracingSettings } from './settings.ts';

/** One delivery attempt as the dispatcher sees it: what a dispatch span describes. */
export interface DeliveryAttempt {
  eventId: string;
  eventType: string;
  /** 1 on the first attempt. */
  attempt: number;
  /** The event's forwarded headers (traceparent present only when valid W3C). */
  headers: Readonly<Record<string, string>>;
  sinkName: string;
  /** messaging.system: http, nats, rabbitmq, log, noop, ... */
  sinkType: string;
  /** messaging.destination.name: subject, exchange, endpoint; the sink name when unknown. */
  destination: string;
}

export interface AttemptSpan {
  /** The headers to send: the attempt's, with traceparent/tracestate naming the dispatch span. */
  readonly headers: Readonly<Record<string, string>>;
  /** Ends the span with the attempt's outcome; error text marks it failed. */
  end(outcome: { kind: 'done' | 'retry' | 'dead' | 'release'; error?: string }): void;
}

/** Dispatch spans. Absent (undefined) when tracing is off: the hot path tests one reference. */
export interface DispatchTracer {
  startAttempt(attempt: DeliveryAttempt): AttemptSpan;
  /** Exports what is buffered and stops; bounded by the exporter's timeout. */
  shutdown(): Promise<void>;
}

/**
 * The tracer for these settings, or undefined when tracing is off. The OpenTelemetry SDK is
 * imported only here and only when on, so a daemon with tracing off never loads it.
 */
export async function startTracing(settings: TracingSettings, log: Logger): Promise<DispatchTracer | undefined> {
  if (!settings.enabled) return undefined;
  const { createOtelTracer } = await import('./otel.ts');
  const tracer = createOtelTracer(settings, log);
  log.info({ endpoint: settings.url, serviceName: settings.serviceName, sampler: settings.sampler }, 'tracing on: dispatch spans exported with OTLP/HTTP');
  return tracer;
}
