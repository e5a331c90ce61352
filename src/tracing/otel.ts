import { diag, DiagLogLevel, ROOT_CONTEXT, SpanKind, SpanStatusCode, trace, type Context, type TextMapGetter, type TextMapSetter } from '@opentelemetry/api';
import { W3CTraceContextPropagator } from '@opentelemetry/core';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { defaultResource, resourceFromAttributes } from '@opentelemetry/resources';
import {
  AlwaysOffSampler,
  AlwaysOnSampler,
  BatchSpanProcessor,
  ParentBasedSampler,
  TraceIdRatioBasedSampler,
  TracerProvider,
  type Sampler,
} from '@opentelemetry/sdk-trace';
import { ATTR_ERROR_TYPE, ATTR_SERVICE_NAME, ATTR_SERVICE_VERSION } from '@opentelemetry/semantic-conventions';
import type { Logger } from '../kernel/log.ts';
import { VERSION } from '../kernel/version.ts';
import type { TracingSettings } from './settings.ts';
import type { AttemptSpan, DeliveryAttempt, DispatchTracer } from './tracer.ts';

// Messaging semantic conventions (v1.x "incubating" names, spelled out so the stable
// package is enough).
const MESSAGING_SYSTEM = 'messaging.system';
const MESSAGING_DESTINATION_NAME = 'messaging.destination.name';
const MESSAGING_MESSAGE_ID = 'messaging.message.id';
const MESSAGING_OPERATION_TYPE = 'messaging.operation.type';
const MESSAGING_OPERATION_NAME = 'messaging.operation.name';

const getter: TextMapGetter<Readonly<Record<string, string>>> = {
  keys: (carrier) => Object.keys(carrier),
  get: (carrier, key) => carrier[key],
};
const setter: TextMapSetter<Record<string, string>> = {
  set: (carrier, key, value) => {
    carrier[key] = value;
  },
};

function sampler(s: Extract<TracingSettings, { enabled: true }>['sampler']): Sampler {
  const root = s.ratio >= 1 ? new AlwaysOnSampler() : s.ratio <= 0 ? new AlwaysOffSampler() : new TraceIdRatioBasedSampler(s.ratio);
  return s.parentBased ? new ParentBasedSampler({ root }) : root;
}

export function createOtelTracer(settings: Extract<TracingSettings, { enabled: true }>, log: Logger): DispatchTracer {
  const otelLog = log.child({ component: 'tracing' });
  // Export failures (collector down) are logged, never thrown into a delivery.
  diag.setLogger(
    {
      error: (msg, ...args) => otelLog.warn({ detail: args.map(String).join(' ') }, `opentelemetry: ${msg}`),
      warn: (msg, ...args) => otelLog.warn({ detail: args.map(String).join(' ') }, `opentelemetry: ${msg}`),
      info: () => undefined,
      debug: () => undefined,
      verbose: () => undefined,
    },
    { logLevel: DiagLogLevel.WARN, suppressOverrideMessage: true },
  );
  const resource = defaultResource().merge(
    resourceFromAttributes({ ...settings.resourceAttributes, [ATTR_SERVICE_NAME]: settings.serviceName, [ATTR_SERVICE_VERSION]: VERSION }),
  );
  const exporter = new OTLPTraceExporter({ url: settings.url });
  const provider = new TracerProvider({
    resource,
    sampler: sampler(settings.sampler),
    spanProcessors: [new BatchSpanProcessor({ exporter, ...settings.batch })],
  });
  // Not registered globally: the daemon owns its provider and tests run several in one process.
  const tracer = provider.getTracer('outbox-dispatcher', VERSION);
  const propagator = new W3CTraceContextPropagator();

  let failures = 0;
  // Tracing must never cost a delivery: a failure here sends the message untraced.
  const untraced = (a: DeliveryAttempt, err: unknown): AttemptSpan => {
    if (failures++ % 1000 === 0) otelLog.warn({ err, failures }, 'starting a dispatch span failed; sending untraced');
    return { headers: a.headers, end: () => undefined };
  };

  return {
    startAttempt(a: DeliveryAttempt): AttemptSpan {
      try {
        return start(a);
      } catch (err) {
        return untraced(a, err);
      }
    },
    async shutdown() {
      await provider.shutdown();
    },
  };

  function start(a: DeliveryAttempt): AttemptSpan {
    // Only a valid traceparent reaches here (src/dispatch/headers.ts); without one the
    // dispatch span is a root span.
    const parent: Context = a.headers.traceparent ? propagator.extract(ROOT_CONTEXT, a.headers, getter) : ROOT_CONTEXT;
    const operation = a.sinkType === 'http' ? 'send' : 'publish';
    const span = tracer.startSpan(
      `${operation} ${a.destination}`,
      {
        kind: SpanKind.PRODUCER,
        attributes: {
          [MESSAGING_SYSTEM]: a.sinkType,
          [MESSAGING_DESTINATION_NAME]: a.destination,
          [MESSAGING_MESSAGE_ID]: a.eventId,
          [MESSAGING_OPERATION_TYPE]: 'send',
          [MESSAGING_OPERATION_NAME]: operation,
          'outbox.event_type': a.eventType,
          'outbox.sink': a.sinkName,
          'outbox.attempt': a.attempt,
        },
      },
      parent,
    );
    // The consumer nests under this delivery: same trace id as the producer's, and the
    // dispatch span as its parent. The producer's tracestate is carried on unchanged.
    const headers: Record<string, string> = { ...a.headers };
    propagator.inject(trace.setSpan(parent, span), headers, setter);
    return {
      headers,
      end(outcome) {
        try {
          span.setAttribute('outbox.outcome', outcome.kind);
          if (outcome.error !== undefined) {
            span.setAttribute(ATTR_ERROR_TYPE, outcome.kind === 'dead' ? 'permanent' : 'retryable');
            span.setStatus({ code: SpanStatusCode.ERROR, message: outcome.error });
          }
          span.end();
        } catch (err) {
          otelLog.warn({ err }, 'ending a dispatch span failed');
        }
      },
    };
  }
}
