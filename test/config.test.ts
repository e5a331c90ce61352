import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadEnvConfig } from '../src/config/env.ts';
import { ConfigError } from '../src/config/errors.ts';
import { leaseMarginMs, maxTimeoutForLease, sendFitsInLease } from '../src/config/lease.ts';
import { compilePattern, compileRoutes, findRoute, loadRoutesFile, parseRoutes } from '../src/config/routes.ts';
import { createSinks } from '../src/sinks/create-sinks.ts';
import { createLogger } from '../src/kernel/log.ts';
import { runCli } from './support/cli.ts';

function configError(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (err) {
    if (err instanceof ConfigError) return err;
    throw err;
  }
  throw new Error('expected a ConfigError');
}

describe('environment', () => {
  it('has documented defaults', () => {
    const c = loadEnvConfig({});
    expect(c.databaseUrl).toBeUndefined();
    expect(c.metrics.port).toBe(9464);
    expect(c.dispatch).toMatchObject({ batchSize: 500, concurrency: 100, pollIntervalMs: 1000, leaseMs: 30_000, maxAttempts: 10, backoffBaseMs: 1000, backoffMaxMs: 300_000 });
    expect(c.dispatch.leaseMs).toBeLessThanOrEqual(60_000);
    expect(c.dispatch.retryHorizonMs).toBe(86_400_000);
    expect(c.circuit).toEqual({ failureThreshold: 5, failureRatio: 0.9, windowMs: 10_000, openMs: 30_000, halfOpenProbes: 1 });
    expect(c.logLevel).toBe('info');
    expect(c.statusReportMs).toBe(5000);
    expect(c.db).toEqual({ statementTimeoutMs: 15_000, idleInTransactionTimeoutMs: 60_000, connectTimeoutMs: 10_000, keepAliveInitialDelayMs: 10_000, startupWaitMs: 60_000 });
  });

  it.each([
    ['OUTBOX_BATCH_SIZE', 'abc', /OUTBOX_BATCH_SIZE: must be a whole number between 1 and 5000 \(got "abc"\)/],
    ['OUTBOX_BATCH_SIZE', '0', /OUTBOX_BATCH_SIZE: must be between 1 and 5000 \(got 0\)/],
    ['OUTBOX_CONCURRENCY', '1.5', /OUTBOX_CONCURRENCY: must be a whole number/],
    ['METRICS_PORT', '70000', /METRICS_PORT: must be between 0 and 65535/],
    ['OUTBOX_LEASE_MS', '10', /OUTBOX_LEASE_MS: must be between 1000/],
    ['LOG_LEVEL', 'loud', /LOG_LEVEL: must be one of fatal, error, warn, info, debug, trace, silent/],
    ['DATABASE_URL', 'mysql://x@y/z', /DATABASE_URL: must use the postgres:\/\/ scheme/],
    ['OUTBOX_ALLOW_PRIVILEGED_ROLE', 'maybe', /OUTBOX_ALLOW_PRIVILEGED_ROLE: must be true or false/],
    ['OUTBOX_DB_STATEMENT_TIMEOUT_MS', '0', /OUTBOX_DB_STATEMENT_TIMEOUT_MS: must be between 100 and 3600000 \(got 0\)/],
    ['OUTBOX_DB_IDLE_IN_TRANSACTION_TIMEOUT_MS', '5s', /OUTBOX_DB_IDLE_IN_TRANSACTION_TIMEOUT_MS: must be a whole number/],
    ['OUTBOX_DB_CONNECT_TIMEOUT_MS', '-1', /OUTBOX_DB_CONNECT_TIMEOUT_MS: must be between 100 and 600000/],
    ['OUTBOX_DB_KEEPALIVE_MS', '10', /OUTBOX_DB_KEEPALIVE_MS: must be between 1000 and 3600000/],
    ['OUTBOX_RETRY_HORIZON_MS', '-1', /OUTBOX_RETRY_HORIZON_MS: must be a whole number between 0 and 2592000000|must be between 0/],
    ['OUTBOX_CIRCUIT_FAILURE_THRESHOLD', 'often', /OUTBOX_CIRCUIT_FAILURE_THRESHOLD: must be a whole number/],
    ['OUTBOX_CIRCUIT_OPEN_MS', '10', /OUTBOX_CIRCUIT_OPEN_MS: must be between 100 and 3600000/],
    ['OUTBOX_CIRCUIT_FAILURE_PERCENT', '0', /OUTBOX_CIRCUIT_FAILURE_PERCENT: must be between 1 and 100/],
    ['OUTBOX_CIRCUIT_WINDOW_MS', '50', /OUTBOX_CIRCUIT_WINDOW_MS: must be between 100 and 3600000/],
    ['OUTBOX_CIRCUIT_HALF_OPEN_PROBES', '0', /OUTBOX_CIRCUIT_HALF_OPEN_PROBES: must be between 1 and 1000/],
    ['OUTBOX_STATUS_REPORT_MS', '50', /OUTBOX_STATUS_REPORT_MS: must be between 100 and 600000/],
    ['OUTBOX_WORKER_ID', 'worker\u0007one', /OUTBOX_WORKER_ID: must not contain control characters/],
  ])('rejects %s=%s naming the key', (key, value, message) => {
    const err = configError(() => loadEnvConfig({ [key]: value }));
    expect(err.key).toBe(key);
    expect(err.message).toMatch(message);
  });

  it('checks settings against each other', () => {
    expect(configError(() => loadEnvConfig({ OUTBOX_BACKOFF_BASE_MS: '5000', OUTBOX_BACKOFF_MAX_MS: '1000' })).key).toBe('OUTBOX_BACKOFF_MAX_MS');
  });
});

describe('routes', () => {
  const issueExample = {
    routes: [
      { match: 'booking.*', sink: { type: 'http', url: 'http://127.0.0.1:8080/hook', timeoutMs: 5000 } },
      { match: '*', sink: { type: 'log' } },
    ],
  };

  it('accepts the documented shape and matches first route wins', () => {
    const routes = compileRoutes(parseRoutes(issueExample), 30_000);
    expect(findRoute(routes, 'booking.created')?.sinkName).toBe('http');
    expect(findRoute(routes, 'booking.a.b')?.sinkName).toBe('http');
    expect(findRoute(routes, 'table.held')?.sinkName).toBe('log');
    expect(findRoute(compileRoutes(parseRoutes({ routes: [issueExample.routes[0]] }), 30_000), 'table.held')).toBeUndefined();
  });

  it('treats only * as a wildcard', () => {
    expect(compilePattern('booking.*').test('bookingXcreated')).toBe(false);
    expect(compilePattern('a*c').test('abbbc')).toBe(true);
    expect(compilePattern('exact').test('exact.not')).toBe(false);
  });

  it('reads JSON and YAML files and inline JSON', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'routes-'));
    fs.writeFileSync(path.join(dir, 'r.json'), JSON.stringify(issueExample));
    fs.writeFileSync(path.join(dir, 'r.yaml'), 'routes:\n  - match: "booking.*"\n    sink: { type: http, url: "http://127.0.0.1:8080/hook" }\n  - match: "*"\n    sink: { type: log }\n');
    expect(loadRoutesFile(path.join(dir, 'r.json')).routes).toHaveLength(2);
    const yaml = loadRoutesFile(path.join(dir, 'r.yaml'));
    expect(yaml.routes[0]!.sink).toMatchObject({ type: 'http', timeoutMs: 5000 });
    expect(loadRoutesFile(JSON.stringify(issueExample)).routes).toHaveLength(2);
  });

  it.each([
    [{ routes: [] }, /routes: needs at least one route/],
    [{ routes: [{ match: 'a', sink: { type: 'smtp' } }] }, /routes\[0\]\.sink\.type/],
    [{ routes: [{ match: 'a', sink: { type: 'http', url: 'ftp://x' } }] }, /routes\[0\]\.sink\.url: must be an http/],
    [{ routes: [{ match: "a'; DROP", sink: { type: 'log' } }] }, /routes\[0\]\.match: must be an event type pattern/],
    [{ routes: [{ match: 'a', sink: { type: 'log', colour: 'red' } }] }, /routes\[0\]\.sink/],
  ])('rejects invalid routes naming OUTBOX_ROUTES and the path', (data, message) => {
    const err = configError(() => parseRoutes(data, 'routes.json'));
    expect(err.key).toBe('OUTBOX_ROUTES');
    expect(err.message).toMatch(message);
  });

  it('rejects a sink timeout the lease cannot cover, and a missing HMAC secret', () => {
    const tooSlow = parseRoutes({ routes: [{ match: '*', sink: { type: 'http', url: 'http://x/', timeoutMs: 30_000 } }] });
    expect(configError(() => compileRoutes(tooSlow, 30_000)).message).toMatch(/routes\[0\]\.sink\.timeoutMs \(30000\) must be at most 28000 with OUTBOX_LEASE_MS=30000/);
    const signed = compileRoutes(parseRoutes({ routes: [{ match: '*', sink: { type: 'http', url: 'http://x/', hmacSecretEnv: 'HOOK_SECRET' } }] }), 30_000);
    expect(configError(() => createSinks(signed, createLogger('silent'), {})).key).toBe('HOOK_SECRET');
    expect(createSinks(signed, createLogger('silent'), { HOOK_SECRET: 'x' }).get('http')?.type).toBe('http');
  });

  it('validates a sink timeout with the rule the dispatcher uses before each send (repro 03)', () => {
    // lease 10 s, timeout 9.5 s passed the old check (timeout < lease) and then every event was
    // released unattempted forever: the dispatcher needs timeout + margin free after the claim.
    const route = (timeoutMs: number) => parseRoutes({ routes: [{ match: '*', sink: { type: 'http', url: 'http://x/', timeoutMs } }] });
    const err = configError(() => compileRoutes(route(9500), 10_000));
    expect(err.key).toBe('OUTBOX_ROUTES');
    expect(err.message).toMatch(/routes\[0\]\.sink\.timeoutMs \(9500\) must be at most 8000 with OUTBOX_LEASE_MS=10000/);
    expect(configError(() => compileRoutes(route(8001), 10_000)).key).toBe('OUTBOX_ROUTES');
    expect(compileRoutes(route(maxTimeoutForLease(10_000)), 10_000)).toHaveLength(1);
    // The dispatcher's own check accepts that timeout one margin after the claim.
    expect(sendFitsInLease(maxTimeoutForLease(10_000), 10_000, leaseMarginMs(10_000))).toBe(true);
    expect(sendFitsInLease(9500, 10_000, 0)).toBe(false);
  });

  it.each([
    ['a newline', 'token\nX-Evil: 1'],
    ['a carriage return', 'token\r'],
    ['a non-ASCII character', 'Bearer abc€'],
    ['a NUL', 'a\u0000b'],
  ])('rejects a header value with %s when the routes file is loaded (repro 18)', (_what, value) => {
    const err = configError(() => parseRoutes({ routes: [{ match: '*', sink: { type: 'http', url: 'http://x/', headers: { Authorization: value } } }] }, 'routes.json'));
    expect(err.key).toBe('OUTBOX_ROUTES');
    expect(err.message).toBe('OUTBOX_ROUTES: routes.json: routes[0].sink.headers.Authorization: header value must be printable ASCII (no newline, control or non-ASCII character)');
    expect(err.message).not.toContain('abc');
  });

  it('accepts printable ASCII header values and per-route retry statuses, and documents the RabbitMQ defaults', () => {
    const r = parseRoutes({
      routes: [
        { match: 'a', sink: { type: 'http', url: 'http://x/', headers: { Authorization: 'Bearer a.b-c_d~e+f/g=', 'X-Tab': 'a\tb' }, retryStatuses: [401, 404] } },
        { match: 'b', sink: { type: 'rabbitmq', routingKey: 'k' } },
      ],
    });
    expect(r.routes[0]!.sink).toMatchObject({ retryStatuses: [401, 404] });
    expect(r.routes[1]!.sink).toMatchObject({ mandatory: true, heartbeatSeconds: 10 });
    expect(configError(() => parseRoutes({ routes: [{ match: 'a', sink: { type: 'http', url: 'http://x/', retryStatuses: [503] } }] })).message).toMatch(/routes\[0\]\.sink\.retryStatuses\[0\]/);
  });
});

describe('the daemon at start-up', () => {
  it('exits 78 naming the key for a sink timeout the lease cannot cover and for a bad header value', async () => {
    const slow = JSON.stringify({ routes: [{ match: '*', sink: { type: 'http', url: 'http://127.0.0.1:9/', timeoutMs: 9500 } }] });
    const r1 = await runCli(['run'], { DATABASE_URL: 'postgres://nobody@127.0.0.1:1/x', OUTBOX_ROUTES: slow, OUTBOX_LEASE_MS: '10000' });
    expect(r1.code).toBe(78);
    expect(r1.stderr).toContain('OUTBOX_ROUTES: routes[0].sink.timeoutMs (9500) must be at most 8000 with OUTBOX_LEASE_MS=10000');
    const header = JSON.stringify({ routes: [{ match: '*', sink: { type: 'http', url: 'http://127.0.0.1:9/', headers: { Authorization: 'token\nX-Evil: 1' } } }] });
    const r2 = await runCli(['run'], { DATABASE_URL: 'postgres://nobody@127.0.0.1:1/x', OUTBOX_ROUTES: header });
    expect(r2.code).toBe(78);
    expect(r2.stderr).toContain('routes[0].sink.headers.Authorization: header value must be printable ASCII');
    expect(r2.stderr).not.toContain('X-Evil');
    expect(r2.stderr).not.toMatch(/\n\s+at /);
  });

  it('stops with exit code 78 and a message naming the bad key', async () => {
    const r = await runCli(['run'], { OUTBOX_BATCH_SIZE: 'lots' });
    expect(r.code).toBe(78);
    expect(r.stderr).toContain('invalid configuration: OUTBOX_BATCH_SIZE: must be a whole number between 1 and 5000 (got "lots")');
  });

  it('exits 78 naming a bad database timeout', async () => {
    const r = await runCli(['run'], { OUTBOX_DB_STATEMENT_TIMEOUT_MS: 'forever' });
    expect(r.code).toBe(78);
    expect(r.stderr).toContain('invalid configuration: OUTBOX_DB_STATEMENT_TIMEOUT_MS: must be a whole number between 100 and 3600000 (got "forever")');
  });

  it('requires OUTBOX_ROUTES when DATABASE_URL is set', async () => {
    const r = await runCli(['run'], { DATABASE_URL: 'postgres://nobody@127.0.0.1:1/x' });
    expect(r.code).toBe(78);
    expect(r.stderr).toContain('OUTBOX_ROUTES: is required when DATABASE_URL is set');
  });

  it('names the routes file and the bad path inside it', async () => {
    const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'routes-')), 'routes.json');
    fs.writeFileSync(file, JSON.stringify({ routes: [{ match: 'x', sink: { type: 'http', url: 'not a url' } }] }));
    const r = await runCli(['run'], { DATABASE_URL: 'postgres://nobody@127.0.0.1:1/x', OUTBOX_ROUTES: file });
    expect(r.code).toBe(78);
    expect(r.stderr).toContain(`OUTBOX_ROUTES: ${file}: routes[0].sink.url`);
  });

  it('exits 69 when the database is unreachable, without leaking the password', async () => {
    // A short start-up wait: its retry warnings must not leak the password either.
    const r = await runCli(['run'], { DATABASE_URL: 'postgres://u:hunter2-secret@127.0.0.1:1/x', OUTBOX_DB_STARTUP_WAIT_MS: '1500', OUTBOX_ROUTES: '{"routes":[{"match":"*","sink":{"type":"log"}}]}' });
    expect(r.code).toBe(69);
    expect(r.stderr).toContain('cannot connect to the database');
    expect(r.stdout + r.stderr).not.toContain('hunter2-secret');
    expect(r.stdout).toContain('postgres://u:***@127.0.0.1:1/x');
  });

  it('has --help on every command', async () => {
    for (const args of [['--help'], ['run', '--help'], ['migrate', '--help'], ['enqueue', '--help'], ['events', 'stats', '--help'], ['events', 'replay', '--help']]) {
      const r = await runCli(args);
      expect(r.code, args.join(' ')).toBe(0);
      expect(r.stdout).toContain('Usage: outbox-dispatcher');
    }
    const bad = await runCli(['enqueue', '--type', 'x']);
    expect(bad.code).toBe(64);
  }, 240_000); // seven CLI starts; slow only on a loaded machine
});
