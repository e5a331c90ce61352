import { ConfigError } from '../config/errors.ts';

/**
 * Tracing configuration from the standard OTEL_* variables (README "Tracing"). Pure: no
 * OpenTelemetry module is loaded here, so a daemon with tracing off never loads the SDK.
 *
 * On exactly when OTEL_SDK_DISABLED is not "true" and either OTEL_TRACES_EXPORTER=otlp, or
 * OTEL_TRACES_EXPORTER is unset and an OTLP endpoint (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or
 * OTEL_EXPORTER_OTLP_ENDPOINT) is set. Everything else is off.
 */
export type TracingSettings =
  | { enabled: false }
  | {
      enabled: true;
      /** Full URL spans are POSTed to (OTLP/HTTP, JSON encoding). */
      url: string;
      serviceName: string;
      resourceAttributes: Record<string, string>;
      sampler: SamplerSetting;
      batch: { scheduledDelayMillis: number; maxQueueSize: number; maxExportBatchSize: number; exportTimeoutMillis: number };
    };

export interface SamplerSetting {
  /** ParentBased: follow the producer's sampled flag when it sent a traceparent. */
  parentBased: boolean;
  /** 1 = always on, 0 = always off. */
  ratio: number;
}

const SAMPLERS: Record<string, { parentBased: boolean; ratio?: number }> = {
  always_on: { parentBased: false, ratio: 1 },
  always_off: { parentBased: false, ratio: 0 },
  traceidratio: { parentBased: false },
  parentbased_always_on: { parentBased: true, ratio: 1 },
  parentbased_always_off: { parentBased: true, ratio: 0 },
  parentbased_traceidratio: { parentBased: true },
};

type Env = Readonly<Record<string, string | undefined>>;

const value = (env: Env, key: string): string | undefined => {
  const v = env[key]?.trim();
  return v === undefined || v === '' ? undefined : v;
};

export function tracingSettings(env: Env): TracingSettings {
  const disabled = value(env, 'OTEL_SDK_DISABLED');
  if (disabled !== undefined && !['true', 'false'].includes(disabled.toLowerCase())) {
    throw new ConfigError('OTEL_SDK_DISABLED', `must be true or false, got ${JSON.stringify(disabled)}`);
  }
  if (disabled?.toLowerCase() === 'true') return { enabled: false };

  const exporter = value(env, 'OTEL_TRACES_EXPORTER')?.toLowerCase();
  const tracesEndpoint = value(env, 'OTEL_EXPORTER_OTLP_TRACES_ENDPOINT');
  const endpoint = value(env, 'OTEL_EXPORTER_OTLP_ENDPOINT');
  if (exporter === 'none') return { enabled: false };
  if (exporter !== undefined && exporter !== 'otlp') {
    throw new ConfigError('OTEL_TRACES_EXPORTER', `supports otlp or none, got ${JSON.stringify(exporter)}`);
  }
  if (exporter === undefined && tracesEndpoint === undefined && endpoint === undefined) return { enabled: false };

  for (const key of ['OTEL_EXPORTER_OTLP_TRACES_PROTOCOL', 'OTEL_EXPORTER_OTLP_PROTOCOL']) {
    const protocol = value(env, key);
    if (protocol === undefined) continue;
    if (protocol !== 'http/json') {
      throw new ConfigError(key, `supports http/json only (OTLP over HTTP, JSON encoding; every OpenTelemetry Collector accepts it on /v1/traces), got ${JSON.stringify(protocol)}`);
    }
    break; // the signal-specific setting wins
  }

  // Per the OTLP exporter spec: the signal URL is used as is; the base URL gets /v1/traces.
  const url = tracesEndpoint ?? (endpoint ? `${endpoint.replace(/\/+$/, '')}/v1/traces` : 'http://localhost:4318/v1/traces');
  const key = tracesEndpoint ? 'OTEL_EXPORTER_OTLP_TRACES_ENDPOINT' : 'OTEL_EXPORTER_OTLP_ENDPOINT';
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new ConfigError(key, 'must be an http:// or https:// URL');
  }
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') throw new ConfigError(key, 'must be an http:// or https:// URL');

  return {
    enabled: true,
    url,
    serviceName: value(env, 'OTEL_SERVICE_NAME') ?? 'outbox-dispatcher',
    resourceAttributes: resourceAttributes(value(env, 'OTEL_RESOURCE_ATTRIBUTES')),
    sampler: sampler(env),
    batch: {
      scheduledDelayMillis: count(env, 'OTEL_BSP_SCHEDULE_DELAY', 5000, 0),
      maxQueueSize: count(env, 'OTEL_BSP_MAX_QUEUE_SIZE', 2048, 1),
      maxExportBatchSize: count(env, 'OTEL_BSP_MAX_EXPORT_BATCH_SIZE', 512, 1),
      exportTimeoutMillis: count(env, 'OTEL_BSP_EXPORT_TIMEOUT', 30000, 1),
    },
  };
}

function sampler(env: Env): SamplerSetting {
  const name = (value(env, 'OTEL_TRACES_SAMPLER') ?? 'parentbased_always_on').toLowerCase();
  const known = SAMPLERS[name];
  if (!known) throw new ConfigError('OTEL_TRACES_SAMPLER', `must be one of ${Object.keys(SAMPLERS).join(', ')}, got ${JSON.stringify(name)}`);
  if (known.ratio !== undefined) return { parentBased: known.parentBased, ratio: known.ratio };
  const arg = value(env, 'OTEL_TRACES_SAMPLER_ARG') ?? '1';
  const ratio = Number(arg);
  if (!Number.isFinite(ratio) || ratio < 0 || ratio > 1) throw new ConfigError('OTEL_TRACES_SAMPLER_ARG', `must be a number from 0 to 1, got ${JSON.stringify(arg)}`);
  return { parentBased: known.parentBased, ratio };
}

function count(env: Env, key: string, fallback: number, min: number): number {
  const raw = value(env, key);
  if (raw === undefined) return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < min) throw new ConfigError(key, `must be an integer >= ${min}, got ${JSON.stringify(raw)}`);
  return n;
}

/** OTEL_RESOURCE_ATTRIBUTES: key=value pairs, comma-separated, values percent-encoded. */
function resourceAttributes(raw: string | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  if (!raw) return out;
  for (const pair of raw.split(',')) {
    const at = pair.indexOf('=');
    if (at <= 0) throw new ConfigError('OTEL_RESOURCE_ATTRIBUTES', `expects key=value pairs separated by commas, got ${JSON.stringify(pair.slice(0, 80))}`);
    try {
      out[pair.slice(0, at).trim()] = decodeURIComponent(pair.slice(at + 1).trim());
    } catch {
      throw new ConfigError('OTEL_RESOURCE_ATTRIBUTES', `value of ${pair.slice(0, at).trim()} is not valid percent-encoding`);
    }
  }
  return out;
}
