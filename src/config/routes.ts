import fs from 'node:fs';
import path from 'node:path';
import YAML from 'yaml';
import { z } from 'zod';
import { EVENT_TYPE_MATCH_PATTERN, EVENT_TYPE_MATCH_RULE } from '../domain/event.ts';
import { ConfigError } from './errors.ts';
import { maxTimeoutForLease, timeoutFitsLease } from './lease.ts';

const ROUTES_KEY = 'OUTBOX_ROUTES';

const ENV_NAME = /^[A-Z_][A-Z0-9_]{0,127}$/;

const sinkName = z.string().regex(/^[A-Za-z0-9_.:-]{1,64}$/, 'letters, digits and _ . : - only (1-64)');

const httpSinkSchema = z
  .object({
    type: z.literal('http'),
    name: sinkName.optional(),
    url: z
      .string()
      .url()
      .refine((u) => /^https?:\/\//i.test(u), 'must be an http:// or https:// URL'),
    timeoutMs: z.number().int().min(1).max(600_000).default(5000),
    headers: z
      .record(
        z.string().regex(/^[A-Za-z0-9-]{1,128}$/, 'invalid header name'),
        // Node refuses CR/LF and non-Latin-1 at send time (every send would fail); other
        // non-ASCII is mangled on the wire. The value is not echoed: it may be a secret.
        z.string().max(8192).regex(/^[\t\x20-\x7e]*$/, 'header value must be printable ASCII (no newline, control or non-ASCII character)'),
      )
      .default({}),
    hmacSecretEnv: z.string().regex(ENV_NAME, 'must name an environment variable (A-Z, 0-9, _)').optional(),
    /** 4xx statuses this receiver uses for passing trouble (e.g. 401 during a key rotation, 404 during a deploy): retried, not dead-lettered. */
    retryStatuses: z.array(z.number().int().min(400).max(499)).max(100).default([]),
  })
  .strict();

const logSinkSchema = z
  .object({
    type: z.literal('log'),
    name: sinkName.optional(),
    level: z.enum(['info', 'debug', 'warn']).default('info'),
  })
  .strict();

const noopSinkSchema = z.object({ type: z.literal('noop'), name: sinkName.optional() }).strict();

/** Subject / routing-key templates: literal text plus {restaurantId}, {eventType}, {eventId}. */
const template = (what: string) =>
  z
    .string()
    .min(1)
    .max(255)
    .refine((t) => [...t.matchAll(/\{([^}]*)\}/g)].every((m) => ['restaurantId', 'eventType', 'eventId'].includes(m[1]!)), `${what} may only use {restaurantId}, {eventType} and {eventId}`)
    .refine((t) => !/[\s*>]/.test(t.replace(/\{[^}]*\}/g, '')), `${what} must not contain spaces or wildcards`);

const natsSinkSchema = z
  .object({
    type: z.literal('nats'),
    name: sinkName.optional(),
    servers: z.string().min(1).default('nats://127.0.0.1:4222'),
    subject: template('subject'),
    timeoutMs: z.number().int().min(1).max(600_000).default(5000),
  })
  .strict();

const rabbitMqSinkSchema = z
  .object({
    type: z.literal('rabbitmq'),
    name: sinkName.optional(),
    url: z.string().regex(/^amqps?:\/\//, 'must be an amqp:// or amqps:// URL').default('amqp://guest:guest@127.0.0.1:5672'),
    exchange: z.string().max(255).default(''),
    routingKey: template('routingKey'),
    timeoutMs: z.number().int().min(1).max(600_000).default(5000),
    /**
     * Publish with the AMQP mandatory flag: a message no queue is bound for comes back
     * and the send fails (retried). false opts out: the broker drops such messages and
     * the event counts as delivered.
     */
    mandatory: z.boolean().default(true),
    /** AMQP heartbeat: a silently dead connection is detected within about two periods. 0 disables. */
    heartbeatSeconds: z.number().int().min(0).max(600).default(10),
  })
  .strict();

/**
 * Per-key ordering (docs/adr/0011-per-key-ordering.md). onDeadHead: what a dead-lettered
 * keyed event does to the events queued behind it: `block` (default; they wait until it is
 * replayed or skipped) or `skip` (it stays dead and the key moves on).
 */
const orderingSchema = z.object({ onDeadHead: z.enum(['block', 'skip']).default('block') }).strict();
export type OnDeadHead = z.output<typeof orderingSchema>['onDeadHead'];

export const sinkConfigSchema = z.discriminatedUnion('type', [httpSinkSchema, logSinkSchema, noopSinkSchema, natsSinkSchema, rabbitMqSinkSchema]);

export const routesFileSchema = z
  .object({
    routes: z
      .array(
        z
          .object({
            match: z.string().regex(EVENT_TYPE_MATCH_PATTERN, EVENT_TYPE_MATCH_RULE),
            sink: sinkConfigSchema,
            ordering: orderingSchema.default({ onDeadHead: 'block' }),
          })
          .strict(),
      )
      .min(1, 'needs at least one route'),
  })
  .strict();

export type SinkConfig = z.output<typeof sinkConfigSchema>;
export type HttpSinkConfig = z.output<typeof httpSinkSchema>;
export type NatsSinkConfig = z.output<typeof natsSinkSchema>;
export type RabbitMqSinkConfig = z.output<typeof rabbitMqSinkSchema>;
export type RoutesFile = z.output<typeof routesFileSchema>;
/** What a routes file may say (defaults not yet applied). */
export type RoutesFileInput = z.input<typeof routesFileSchema>;

export interface Route {
  match: string;
  regex: RegExp;
  /** Unique per routes file; metrics label. */
  sinkName: string;
  sink: SinkConfig;
  /** What a dead keyed event of this route does to its key. */
  onDeadHead: OnDeadHead;
}

/** The embedded demo's routing: everything to the log sink. */
export const DEFAULT_EMBEDDED_ROUTES: RoutesFile = { routes: [{ match: '*', sink: { type: 'log', level: 'info' }, ordering: { onDeadHead: 'block' } }] };

/** `*` matches any run of characters (dots included); everything else is literal. */
export function compilePattern(pattern: string): RegExp {
  const body = pattern
    .split('*')
    .map((part) => part.replace(/[.+?^${}()|[\]\\-]/g, '\\$&'))
    .join('.*');
  return new RegExp(`^${body}$`);
}

/**
 * Reads OUTBOX_ROUTES: a path to a .json/.yaml/.yml file, or inline JSON (starts with "{").
 */
export function loadRoutesFile(source: string, cwd = process.cwd()): RoutesFile {
  let text: string;
  let where: string;
  if (source.trimStart().startsWith('{')) {
    text = source;
    where = 'inline JSON';
  } else {
    const file = path.resolve(cwd, source);
    where = file;
    try {
      text = fs.readFileSync(file, 'utf8');
    } catch (err) {
      throw new ConfigError(ROUTES_KEY, `cannot read routes file ${file}: ${(err as Error).message}`);
    }
  }
  let data: unknown;
  try {
    data = /\.ya?ml$/i.test(where) ? YAML.parse(text) : JSON.parse(text);
  } catch (err) {
    throw new ConfigError(ROUTES_KEY, `${where} is not valid ${/\.ya?ml$/i.test(where) ? 'YAML' : 'JSON'}: ${(err as Error).message}`);
  }
  return parseRoutes(data, where);
}

export function parseRoutes(data: unknown, where = 'routes'): RoutesFile {
  const parsed = routesFileSchema.safeParse(data);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const at = issue.path.map((p) => (typeof p === 'number' ? `[${p}]` : `.${String(p)}`)).join('').replace(/^\./, '');
    throw new ConfigError(ROUTES_KEY, `${where}: ${at || '(root)'}: ${issue.message}`);
  }
  return parsed.data;
}

export function compileRoutes(file: RoutesFile, leaseMs: number): Route[] {
  const names = new Set<string>();
  return file.routes.map((route, i) => {
    const name = route.sink.name ?? (file.routes.filter((r) => r.sink.type === route.sink.type).length > 1 ? `${route.sink.type}-${i}` : route.sink.type);
    if (names.has(name)) throw new ConfigError(ROUTES_KEY, `routes[${i}].sink.name: duplicate sink name ${JSON.stringify(name)}`);
    names.add(name);
    if ('timeoutMs' in route.sink && !timeoutFitsLease(route.sink.timeoutMs, leaseMs)) {
      throw new ConfigError(
        ROUTES_KEY,
        `routes[${i}].sink.timeoutMs (${route.sink.timeoutMs}) must be at most ${maxTimeoutForLease(leaseMs)} with OUTBOX_LEASE_MS=${leaseMs}: ` +
          'a call plus the safety margin (min(1000 ms, lease/10)) at each end must fit in the lease; raise OUTBOX_LEASE_MS or lower timeoutMs',
      );
    }
    return { match: route.match, regex: compilePattern(route.match), sinkName: name, sink: route.sink, onDeadHead: route.ordering.onDeadHead };
  });
}

/** First match wins. */
export function findRoute(routes: readonly Route[], eventType: string): Route | undefined {
  return routes.find((r) => r.regex.test(eventType));
}
