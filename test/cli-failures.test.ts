import type { Command } from 'commander';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { SCENARIOS } from '../src/cli/incident-command.ts';
import { incidentLogin, type LoginKind } from '../src/cli/logins.ts';
import { buildProgram } from '../src/cli/program.ts';
import { runCli, type CliResult } from './support/cli.ts';
import { createEmptyDatabase, createTestDatabase, tenantId, type TestDatabase } from './support/db.ts';
import { freePort } from './support/ports.ts';

// Issue 10, "Operator commands on a bad day": every command that touches the database, in
// every failure class an operator meets, exits with README's code and says why in one line.
// Sequential on purpose: the CLI runs are CPU-bound and the suite shares a small machine.

const TENANT = tenantId();
const LOG_ROUTES = JSON.stringify({ routes: [{ match: '*', sink: { type: 'log' } }] });

interface CommandCase {
  args: string[];
  /** The login the docs name for it (logins.ts). */
  login: Exclude<LoginKind, 'none'>;
  env?: Record<string, string>;
}

const COMMANDS: CommandCase[] = [
  { args: ['run'], login: 'daemon', env: { OUTBOX_ROUTES: LOG_ROUTES, OUTBOX_SHUTDOWN_GRACE_MS: '1000' } },
  { args: ['migrate'], login: 'owner' },
  { args: ['migrate', '--status'], login: 'owner' },
  { args: ['enqueue', '--type', 'booking.created', '--tenant', TENANT], login: 'producer' },
  { args: ['events', 'stats'], login: 'daemon' },
  { args: ['events', 'replay', '--dry-run'], login: 'daemon' },
  { args: ['events', 'replay'], login: 'daemon' },
  { args: ['events', 'abandon', '--reason', 'failure table'], login: 'daemon' },
  { args: ['events', 'blocked'], login: 'daemon' },
  { args: ['events', 'skip', '--id', '00000000-0000-4000-8000-000000000001'], login: 'daemon' },
  { args: ['events', 'show', '00000000-0000-4000-8000-000000000001'], login: 'daemon' },
  { args: ['events', 'list', '--type', 'booking.*'], login: 'daemon' },
  { args: ['sinks', 'status'], login: 'daemon' },
  { args: ['sinks', 'pause', 'webhooks', '--reason', 'failure table'], login: 'daemon' },
  { args: ['sinks', 'resume', 'webhooks'], login: 'daemon' },
  { args: ['audit'], login: 'daemon' },
  { args: ['partitions', 'status'], login: 'daemon' },
  { args: ['partitions', 'rotate'], login: 'daemon' },
  { args: ['partitions', 'adopt', '--table', 'cli_plain'], login: 'owner' },
  { args: ['incident', 'poison', '--count', '1', '--tenant', TENANT], login: 'producer' },
  { args: ['incident', 'backlog', '--count', '1', '--tenant', TENANT], login: 'owner' },
  { args: ['incident', 'runway-low'], login: 'owner' },
  { args: ['incident', 'claim-latency', '--duration', '1'], login: 'owner' },
];
const label = (c: CommandCase) => c.args.filter((a) => !/^[0-9a-f-]{36}$/.test(a)).join(' ');

/** The URL goes where the docs say each login's URL goes. */
function envFor(c: CommandCase, url: string): Record<string, string> {
  // OUTBOX_DB_STARTUP_WAIT_MS=0: `run` reports an unreachable database at once (its wait is tested below).
  return { ...(c.login === 'owner' ? { MIGRATION_DATABASE_URL: url } : { DATABASE_URL: url }), LOG_LEVEL: 'warn', OUTBOX_DB_STARTUP_WAIT_MS: '0', ...c.env };
}

function expectOneLine(r: CliResult, what: string): string {
  const lines = r.stderr.trimEnd().split('\n');
  expect(lines, `${what}: stderr must be one line:\n${r.stderr}`).toHaveLength(1);
  expect(lines[0], what).toMatch(/^outbox-dispatcher: /);
  expect(r.stderr, `${what}: no stack trace`).not.toMatch(/^\s+at\s|\.(ts|js):\d+:\d+/m);
  return lines[0]!;
}

// Each case starts the CLI once (seconds on a loaded machine, never a measured budget).
vi.setConfig({ testTimeout: 180_000 });

let db: TestDatabase;
let empty: { url: string; drop: () => Promise<void> };
let emptyForMigrate: { url: string; drop: () => Promise<void> };
let closedPortUrl: string;

beforeAll(async () => {
  [db, empty, emptyForMigrate] = await Promise.all([createTestDatabase(), createEmptyDatabase(), createEmptyDatabase()]);
  // A closed port: free a moment ago, and nothing listens on it.
  closedPortUrl = `postgres://postgres@127.0.0.1:${await freePort()}/outbox`;
  // A plain registered table, so `partitions adopt` gets as far as touching it.
  await db.query(`CREATE TABLE public.cli_plain (id bigint PRIMARY KEY, created_at timestamptz NOT NULL DEFAULT now())`);
  await db.query(
    `INSERT INTO outbox_dispatcher.managed_partitions (table_schema, table_name, partition_column) VALUES ('public', 'cli_plain', 'created_at')`,
  );
});
afterAll(async () => {
  await Promise.all([db?.drop(), empty?.drop(), emptyForMigrate?.drop()]);
});

describe('the failure table', () => {
  it('covers every command that connects to a database', () => {
    const leaves: string[] = [];
    const walk = (cmd: Command, prefix: string[]) => {
      for (const sub of cmd.commands) {
        if (sub.name() === 'help') continue;
        if (sub.commands.length) walk(sub, [...prefix, sub.name()]);
        else leaves.push([...prefix, sub.name()].join(' '));
      }
    };
    walk(buildProgram(), []);
    const expanded = leaves.flatMap((l) => (l === 'incident' ? SCENARIOS.filter((s) => incidentLogin(s) !== 'none').map((s) => `incident ${s}`) : [l]));
    const covered = new Set(COMMANDS.map((c) => c.args.slice(0, ['incident', 'events', 'partitions', 'sinks'].includes(c.args[0]!) ? 2 : 1).join(' ')));
    expect([...covered].sort()).toEqual([...new Set(expanded)].sort());
  });
});

describe('an unreachable database (closed port): exit 69', () => {
  it.each(COMMANDS.map((c) => [label(c), c] as const))('%s', async (_name, c) => {
    const r = await runCli(c.args, envFor(c, closedPortUrl), 120_000);
    const line = expectOneLine(r, label(c));
    expect(r.code, line).toBe(69);
    expect(line).toMatch(/cannot connect to the database: .*ECONNREFUSED/);
  });
});

describe('run waits for an unreachable database at start-up (OUTBOX_DB_STARTUP_WAIT_MS)', () => {
  it('retries with a warning, then exits 69 with one line once the wait is over', async () => {
    const c = COMMANDS.find((k) => k.args[0] === 'run')!;
    const started = Date.now();
    const r = await runCli(c.args, { ...envFor(c, closedPortUrl), OUTBOX_DB_STARTUP_WAIT_MS: '2500' }, 120_000);
    const line = expectOneLine(r, 'run');
    expect(r.code, line).toBe(69);
    expect(line).toMatch(/cannot connect to the database/);
    expect(r.stdout).toMatch(/database not reachable yet; waiting for it/);
    // It waits the whole OUTBOX_DB_STARTUP_WAIT_MS (its last try is at the deadline).
    expect(Date.now() - started).toBeGreaterThanOrEqual(2500);
  });
});

describe('an unmigrated, empty database, each with the login the docs name: says so, exit 79', () => {
  const urlFor = (c: CommandCase) => (c.login === 'owner' ? empty.url : c.login === 'daemon' ? workerUrlOf(empty.url) : producerUrlOf(empty.url));
  it.each(COMMANDS.filter((c) => c.args.join(' ') !== 'migrate').map((c) => [label(c), c] as const))('%s', async (_name, c) => {
    const r = await runCli(c.args, envFor(c, urlFor(c)), 120_000);
    const line = expectOneLine(r, label(c));
    expect(r.code, line).toBe(79);
    expect(line).toMatch(/not migrated|schema is behind/);
    expect(line).toContain('outbox-dispatcher migrate');
  });

  it('migrate: migrates it (exit 0)', async () => {
    const r = await runCli(['migrate'], { MIGRATION_DATABASE_URL: emptyForMigrate.url, LOG_LEVEL: 'warn' }, 120_000);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain('applied: 0001_tenancy');
  });
});

// Worker and producer logins of this run, on another database of the same server.
function workerUrlOf(url: string): string {
  const u = new URL(db.workerUrl);
  u.pathname = new URL(url).pathname;
  return u.toString();
}
function producerUrlOf(url: string): string {
  const u = new URL(db.producerUrl);
  u.pathname = new URL(url).pathname;
  return u.toString();
}

describe('the wrong login (lacking the role the command needs): exit 77, naming it', () => {
  const WRONG: Record<string, { url: () => string; says: RegExp }> = {
    daemon: { url: () => db.producerUrl, says: /app_background/ },
    producer: { url: () => db.workerUrl, says: /this command needs a login in app_producer/ },
    owner: { url: () => db.workerUrl, says: /this command needs the schema owner's login/ },
  };
  const cases = COMMANDS.map((c) => {
    // --status only reads; the daemon's login may run it, a producer's may not.
    const wrong = c.args.includes('--status') ? { url: () => db.producerUrl, says: WRONG.owner!.says } : WRONG[c.login]!;
    return [label(c), c, wrong] as const;
  });
  it.each(cases)('%s', async (_name, c, wrong) => {
    const r = await runCli(c.args, envFor(c, wrong.url()), 120_000);
    const line = expectOneLine(r, label(c));
    expect(r.code, line).toBe(77);
    expect(line).toMatch(wrong.says);
    // What was refused: a privilege the server denied, or (daemon commands, checked before any
    // query since the login model of ADR 0010) the missing membership, with the GRANT to run.
    if (c.args[0] !== 'run') expect(line).toMatch(/permission denied|is not a member of app_background; run GRANT app_background TO/);
  });

  it('enqueue as the daemon names app_producer (the issue\'s example)', async () => {
    const r = await runCli(['enqueue', '--type', 'booking.created', '--tenant', TENANT], { DATABASE_URL: db.workerUrl });
    expect(r.code).toBe(77);
    expect(r.stderr).toMatch(/^outbox-dispatcher: enqueue: permission denied for table capacity_outbox \(connected as outbox_test_worker_\w+\); this command needs a login in app_producer/);
  });
});

describe('other ways a connection fails, and commands without a database', () => {
  const otherDb = () => {
    const u = new URL(db.adminUrl);
    u.pathname = '/outbox_no_such_database';
    return u.toString();
  };
  const otherLogin = () => {
    const u = new URL(db.adminUrl);
    u.username = 'outbox_no_such_login';
    u.password = 'x';
    return u.toString();
  };
  it.each([['events stats'], ['migrate --status'], ['enqueue --type a.b --tenant ' + TENANT]])('a database that does not exist: %s exits 69', async (cmd) => {
    const c = COMMANDS.find((x) => cmd.startsWith(x.args.slice(0, 2).join(' ')))!;
    const r = await runCli(cmd.split(' '), envFor(c, otherDb()), 120_000);
    const line = expectOneLine(r, cmd);
    expect(r.code, line).toBe(69);
    expect(line).toMatch(/database "outbox_no_such_database" does not exist/);
  });

  it.each([['events stats'], ['incident poison']])('a login the server does not know: %s exits 77', async (cmd) => {
    const c = COMMANDS.find((x) => cmd.startsWith(x.args.slice(0, 2).join(' ')))!;
    const r = await runCli(cmd.split(' '), envFor(c, otherLogin()), 120_000);
    const line = expectOneLine(r, cmd);
    expect(r.code, line).toBe(77);
    expect(line).toMatch(/the database rejected the login.*outbox_no_such_login/);
  });

  it('incident sink-outage on a port in use: exit 1, one line', async () => {
    const port = new URL(db.adminUrl).port || '5432';
    const r = await runCli(['incident', 'sink-outage', '--listen', `${new URL(db.adminUrl).hostname}:${port}`, '--duration', '1']);
    const line = expectOneLine(r, 'sink-outage');
    expect(r.code, line).toBe(1);
    expect(line).toMatch(/EADDRINUSE/);
  });

  it('incident dispatcher-down with a pid that does not exist: exit 1, one line', async () => {
    const r = await runCli(['incident', 'dispatcher-down', '--pid', '4194303', '--duration', '1']);
    const line = expectOneLine(r, 'dispatcher-down');
    expect(r.code, line).toBe(1);
    expect(line).toMatch(/cannot signal pid 4194303: no such process/);
  });
});
