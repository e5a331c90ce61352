import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Command } from 'commander';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SCENARIOS } from '../src/cli/incident-command.ts';
import type { LoginKind } from '../src/cli/logins.ts';
import { buildProgram, loginOf } from '../src/cli/program.ts';
import { runCli, startCli, startWorkerProcess } from './support/cli.ts';
import { asRole, createEmptyDatabase, produce, tenantId, waitFor } from './support/db.ts';
import { DOCS, docCommands, readDoc, sqlSnippets, type DocCommand } from './support/docs.ts';

// Issue 10, "Operator commands on a bad day" (second half) and issue 13 "Logins": every CLI
// command and SQL snippet in README and the runbooks is run as written, with the login the
// docs name, against a real database migrated by a plain (non-superuser) schema owner.


// ---------------------------------------------------------------- which login the docs name

type Kind = Exclude<LoginKind, 'none'>;

/** README's CLI table: command → login ("daemon's", "producer's", "owner's"; incidents per scenario). */
function readmeLogins(): Map<string, LoginKind> {
  const logins = new Map<string, LoginKind>();
  const kindIn = (cell: string): LoginKind => {
    const m = /\b(daemon|producer|owner)'s|\b(none)\b/.exec(cell);
    if (!m) throw new Error(`README CLI table: no login in "${cell}"`);
    return (m[1] ?? m[2]) as LoginKind;
  };
  const readme = readDoc('README.md');
  const start = readme.indexOf('| command | login |');
  if (start < 0) throw new Error('README has no "| command | login |" table');
  const table = readme.slice(start).split('\n\n')[0]!;
  for (const m of table.matchAll(/^\| `([a-z][a-z ]*?)(?: [<[-][^`]*)?` \| ([^|]+) \|/gm)) {
    const command = m[1]!.trim();
    const cell = m[2]!.trim();
    if (command === 'incident') {
      for (const part of cell.split(';')) {
        const [who, scenarios] = part.split(' for ');
        for (const s of scenarios!.split(',')) logins.set(`incident ${s.trim()}`, kindIn(who!));
      }
    } else logins.set(command, kindIn(cell));
  }
  return logins;
}

function leafCommands(): { path: string; cmd: Command }[] {
  const out: { path: string; cmd: Command }[] = [];
  const walk = (cmd: Command, prefix: string[]) => {
    for (const sub of cmd.commands) {
      if (sub.name() === 'help') continue;
      if (sub.commands.length) walk(sub, [...prefix, sub.name()]);
      else out.push({ path: [...prefix, sub.name()].join(' '), cmd: sub });
    }
  };
  walk(buildProgram(), []);
  return out;
}

const LOGIN_WORDS: Record<Kind, string> = { daemon: "daemon's", producer: "producer's", owner: "owner's" };

describe('the docs name the login of every command', () => {
  it("README's CLI table, each command's --help and the error messages agree (logins.ts)", () => {
    const documented = readmeLogins();
    for (const { path: p, cmd } of leafCommands()) {
      const keys = p === 'incident' ? SCENARIOS.map((s) => [`incident ${s}`, [s]] as const) : [[p, []] as const];
      for (const [key, args] of keys) {
        expect(documented.get(key), `README CLI table: login of ${key}`).toBe(loginOf(cmd, [...args]));
      }
      expect(cmd.helpInformation() + helpAfter(cmd), `${p} --help names its login`).toMatch(/Login(: |, by scenario:)/);
    }
  });

  it('each runbook that uses CLI commands says which logins they need', () => {
    const documented = readmeLogins();
    for (const doc of DOCS.filter((d) => d.startsWith('runbooks/'))) {
      const cmds = docCommands().filter((c) => c.doc === doc);
      if (cmds.length === 0) continue;
      const text = readDoc(doc);
      expect(text, `${doc} has a **Logins** paragraph`).toContain('**Logins**');
      for (const c of cmds) {
        const kind = loginFor(c, documented);
        if (kind !== 'none') expect(text, `${doc}: "${c.text}" needs the ${LOGIN_WORDS[kind]} login; the runbook must say so`).toContain(`${LOGIN_WORDS[kind]} login`);
      }
    }
  });
});

/** commander keeps addHelpText('after') text out of helpInformation(); run --help to see it all. */
function helpAfter(cmd: Command): string {
  let text = '';
  cmd.configureOutput({ writeOut: (s) => (text += s), writeErr: () => undefined });
  cmd.exitOverride();
  try {
    cmd.outputHelp();
  } catch {
    /* exitOverride */
  }
  return text;
}

function loginFor(c: DocCommand, documented = readmeLogins()): LoginKind {
  const [a, b] = c.argv;
  const key = a === 'incident' ? `incident ${b}` : a === 'events' || a === 'partitions' || a === 'sinks' ? `${a} ${b}` : a!;
  const kind = documented.get(key);
  if (!kind) throw new Error(`${c.doc}: "${c.text}": README's CLI table names no login for ${key}`);
  return kind;
}

// ---------------------------------------------------------------- a database like production

let db: { url: string; drop: () => Promise<void> };
let owner: { role: string; url: string };
let workerUrl: string;
let producerUrl: string;
let admin: pg.Pool;
const A = tenantId();
let deadIds: string[] = [];
const since = new Date(Date.now() - 3600_000).toISOString();
const routesFile = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'docs-routes-')), 'routes.yaml');

beforeAll(async () => {
  db = await createEmptyDatabase();
  admin = new pg.Pool({ connectionString: db.url, max: 2 });
  admin.on('error', () => undefined);
  // A plain schema owner: CREATEROLE (migration 0001 creates the group roles on a new server), nothing more.
  const role = `outbox_test_owner_${crypto.randomBytes(4).toString('hex')}`;
  await admin.query(`CREATE ROLE ${role} LOGIN CREATEROLE NOSUPERUSER NOBYPASSRLS PASSWORD 'owner-pw'`);
  const dbName = new URL(db.url).pathname.slice(1);
  await admin.query(`ALTER DATABASE ${dbName} OWNER TO ${role}`);
  const u = new URL(db.url);
  u.username = role;
  u.password = 'owner-pw';
  owner = { role, url: u.toString() };
  const migrated = await runCli(['migrate'], { MIGRATION_DATABASE_URL: owner.url, LOG_LEVEL: 'warn' });
  expect(migrated.code, migrated.stderr).toBe(0);
  workerUrl = asRole(db.url, 'worker');
  producerUrl = asRole(db.url, 'producer');
  fs.writeFileSync(routesFile, 'routes:\n  - match: "*"\n    sink: { type: log }\n');

  // What on-call would find: dead booking events of tenant A, a lease-expired retry, rows in
  // the default partition (one of them an old dead event in the oldest month retention keeps:
  // dated from today, so `partitions rotate` moves it and succeeds whatever the date; a fixed
  // date fell out of the six-month window when the month turned, and rotate rightly refused).
  const ids = await produce(producerUrl, A, [{ type: 'booking.created' }, { type: 'booking.cancelled' }, { type: 'booking.created' }, { type: 'table.held' }]);
  await admin.query(`UPDATE capacity_outbox SET status = 'dead', attempts = 10, last_error = 'exhausted 10/10 attempts: HTTP 503' WHERE id = ANY($1)`, [ids.slice(0, 3)]);
  await admin.query(`UPDATE capacity_outbox SET attempts = 2, last_error = 'lease expired on attempt 2' WHERE id = $1`, [ids[3]]);
  deadIds = ids.slice(0, 3);
  await admin.query(
    `INSERT INTO capacity_outbox (restaurant_id, event_type, payload, status, attempts, last_error, created_at)
     VALUES ($1, 'booking.created', '{}', 'dead', 10, 'exhausted 10/10 attempts: HTTP 503', date_trunc('month', now()) - interval '6 months' + interval '14 days'),
            ($1, 'late.write', '{}', 'pending', 0, NULL, '2030-01-15T00:00:00Z')`,
    [A],
  );
}, 180_000);

afterAll(async () => {
  fs.rmSync(path.dirname(routesFile), { recursive: true, force: true });
  await admin?.end();
  await db?.drop();
  if (owner) {
    const c = new pg.Client({ connectionString: new URL('/postgres', db.url).toString() });
    await c.connect();
    await c.query(`DROP ROLE IF EXISTS ${owner.role}`).catch(() => undefined);
    await c.end();
  }
});

// ---------------------------------------------------------------- SQL snippets

interface SqlExpectation {
  doc: string;
  /** Identifies the snippet (the whole snippet when `exact`). */
  contains: string;
  exact?: boolean;
  login: 'owner' | 'producer' | 'skip';
  /** Why it is skipped, or why it is a known failure. */
  reason?: string;
  known?: boolean;
  check?: (results: pg.QueryResult[]) => void;
  /** Expected to fail with this message (the docs say so). */
  errors?: RegExp;
  /** As `errors`, depending on the server version (server_version_num). */
  errorsOn?: (serverVersionNum: number) => RegExp | undefined;
}

const rowsOf = (rs: pg.QueryResult[]) => rs.filter((r) => r.command === 'SELECT');
const SQL: SqlExpectation[] = [
  { doc: 'README.md', contains: 'INSERT INTO capacity_outbox (restaurant_id', login: 'producer', check: (rs) => expect(rs.find((r) => r.command === 'INSERT')?.rowCount).toBe(1) },
  { doc: 'README.md', contains: 'GRANT app_producer TO my_api_role', login: 'skip', reason: "names the reader's own application role" },
  { doc: 'runbooks/alerts.md', contains: 'FROM pg_stat_activity\nWHERE datname', login: 'owner', check: (rs) => expect(rowsOf(rs)[0]!.rows.length).toBeGreaterThan(0) },
  { doc: 'runbooks/alerts.md', contains: "last_error LIKE 'lease expired%'", login: 'owner', check: (rs) => expect(rowsOf(rs)[0]!.rows.length).toBe(1) },
  { doc: 'runbooks/alerts.md', contains: 'VACUUM (ANALYZE) capacity_outbox_pYYYY_MM', login: 'owner' },
  { doc: 'runbooks/alerts.md', contains: 'SELECT holder, acquired_at, expires_at FROM outbox_dispatcher.maintenance_leases', login: 'owner' },
  { doc: 'runbooks/alerts.md', contains: "DELETE FROM outbox_dispatcher.maintenance_leases WHERE name = 'partition_rotation'", login: 'owner' },
  { doc: 'runbooks/alerts.md', contains: 'FROM capacity_outbox_default GROUP BY 1', login: 'owner', check: (rs) => expect(rowsOf(rs)[0]!.rows.length).toBe(2) },
  { doc: 'runbooks/outbox.md', contains: "WHERE id = '<event id>'", login: 'owner', check: (rs) => expect(rowsOf(rs)[0]!.rows).toHaveLength(1) },
  { doc: 'runbooks/partitions.md', contains: "'analytics_events', 'created_at', 3, 13, 'detach'", login: 'owner', check: (rs) => expect(rs.at(-1)!.rowCount).toBe(1) },
  { doc: 'runbooks/partitions.md', contains: 'RENAME TO capacity_outbox_partitioned_rolled_back', login: 'skip', reason: 'rollback right after an adopt swap; adopt is tested in adopt.test.ts' },
  { doc: 'runbooks/partitions.md', contains: 'FROM capacity_outbox_default GROUP BY 1', login: 'owner', check: (rs) => expect(rowsOf(rs)[0]!.rows.length).toBe(2) },
  { doc: 'runbooks/partitions.md', contains: "xact_start < now() - interval '1 minute'", login: 'owner' },
  { doc: 'runbooks/partitions.md', contains: 'DROP TABLE public.capacity_outbox_unpartitioned', login: 'skip', reason: 'only after an adopt (adopt.test.ts)' },
  { doc: 'runbooks/rls.md', contains: 'relforcerowsecurity FROM pg_class', login: 'owner', check: (rs) => expect(rowsOf(rs)[0]!.rows[0]).toMatchObject({ relrowsecurity: true, relforcerowsecurity: true }) },
  { doc: 'runbooks/rls.md', contains: 'SELECT DISTINCT restaurant_id FROM capacity_outbox', login: 'producer', errors: /tenant context missing/, check: (rs) => expect(rowsOf(rs).find((r) => 'restaurant_id' in (r.rows[0] ?? {}))?.rows).toEqual([{ restaurant_id: A }]) },
  { doc: 'runbooks/rls.md', contains: "set_restaurant_context('<uuid>');", login: 'producer' },
  { doc: 'runbooks/rls.md', contains: 'SELECT count(*) FROM capacity_outbox;', exact: true, login: 'owner', check: (rs) => expect(Number(rowsOf(rs)[0]!.rows[0].count)).toBeGreaterThanOrEqual(6) },
  { doc: 'runbooks/rls.md', contains: 'ALTER POLICY capacity_outbox_owner ON capacity_outbox TO <owner>', login: 'owner', check: (rs) => expect(rowsOf(rs)[0]!.rows[0].owner).toBe(owner.role) },
  { doc: 'runbooks/outbox.md', contains: "application_name LIKE 'outbox-dispatcher%'", login: 'owner' },
  { doc: 'runbooks/partitions.md', contains: 'pg_terminate_backend(<pid>)', login: 'skip', reason: 'ends a stuck session; nothing to end here' },
  { doc: 'runbooks/partitions.md', contains: 'capacity_outbox_unpartitioned) AS at_swap', login: 'skip', reason: 'only after an adopt swap (adopt.test.ts)' },
  // PostgreSQL 16 took CREATEROLE's right to grant any role away: the owner may grant
  // app_background only up to 15; from 16 it takes ADMIN OPTION on it, as rls.md says.
  { doc: 'runbooks/rls.md', contains: 'GRANT app_background TO <login role>', login: 'owner', errorsOn: (v) => (v >= 160000 ? /permission denied to grant role "app_background"/ : undefined) },
  { doc: 'runbooks/rls.md', contains: "VALUES ('metrics_reader', 'dashboards')", login: 'owner' },
];

const matches = (e: SqlExpectation, s: { doc: string; sql: string }) => e.doc === s.doc && (e.exact ? s.sql === e.contains : s.sql.includes(e.contains));

function fillSql(sql: string): string {
  const month = new Date().toISOString().slice(0, 7).replace('-', '_');
  return sql
    .replaceAll('<event id>', deadIds[0]!)
    .replaceAll('<tenant A>', A)
    .replaceAll('<uuid>', A)
    .replaceAll('<you>', 'docs-test')
    .replaceAll('<ticket>', 'OPS-1')
    .replaceAll('<login role>', new URL(workerUrl).username)
    .replaceAll('<owner>', owner.role)
    .replaceAll('pYYYY_MM', `p${month}`);
}

/** Runs a snippet statement by statement as written; a snippet without its own transaction runs in one that is rolled back. */
async function runSql(url: string, sql: string): Promise<{ results: pg.QueryResult[]; errors: Error[] }> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  const results: pg.QueryResult[] = [];
  const errors: Error[] = [];
  try {
    const statements = sql
      .split('\n')
      .map((l) => l.replace(/--.*$/, ''))
      .join('\n')
      .split(';')
      .map((s) => s.trim())
      .filter(Boolean);
    const ownTransaction = statements.some((s) => /^BEGIN$/i.test(s));
    const outsideTransaction = statements.some((s) => /^VACUUM\b/i.test(s));
    if (!ownTransaction && !outsideTransaction) await c.query('BEGIN');
    for (const s of statements) {
      try {
        results.push(await c.query(s));
      } catch (err) {
        errors.push(err as Error);
        if (ownTransaction) await c.query('ROLLBACK');
        else break;
      }
    }
    if (!ownTransaction && !outsideTransaction) await c.query('ROLLBACK').catch(() => undefined);
  } finally {
    await c.end();
  }
  return { results, errors };
}

async function serverVersionNum(): Promise<number> {
  const { results } = await runSql(owner.url, 'SHOW server_version_num');
  return Number(results[0]!.rows[0].server_version_num);
}

describe('SQL snippets in README and runbooks, as the login they name', () => {
  const snippets = sqlSnippets();
  it('each snippet has an expectation here', () => {
    for (const s of snippets) {
      expect(SQL.filter((e) => matches(e, s)), `${s.doc}: ${s.sql.slice(0, 80)}`).toHaveLength(1);
    }
  });
  for (const e of SQL) {
    const name = `${e.doc}: ${e.contains.replace(/\s+/g, ' ').slice(0, 60)} (as ${e.login === 'skip' ? 'n/a' : `the ${e.login}`})`;
    if (e.login === 'skip') {
      it.skip(`${name}: ${e.reason}`, () => undefined);
      continue;
    }
    (e.known ? it.fails : it)(e.known ? `${name} [known: ${e.reason}]` : name, async () => {
      const snippet = snippets.find((s) => matches(e, s));
      expect(snippet, 'snippet still in the docs').toBeDefined();
      const { results, errors } = await runSql(e.login === 'owner' ? owner.url : producerUrl, fillSql(snippet!.sql));
      const expectedErrors = e.errors ?? e.errorsOn?.(await serverVersionNum());
      if (expectedErrors) {
        expect(errors.map((x) => x.message).join('; ')).toMatch(expectedErrors);
      } else {
        expect(errors.map((x) => x.message)).toEqual([]);
      }
      e.check?.(results);
    });
  }
});

// ---------------------------------------------------------------- CLI commands

/** Commands that run until stopped: how to see they work, and how an operator stops them. */
const LONG_RUNNING: Record<string, { ready: string; signal: NodeJS.Signals }> = {
  run: { ready: '"msg":"outbox dispatcher running"', signal: 'SIGTERM' },
  'incident sink-outage': { ready: 'failing sink on http://0.0.0.0:18080/ answering 503', signal: 'SIGINT' },
  'incident claim-latency': { ready: 'holding EXCLUSIVE locks on capacity_outbox', signal: 'SIGINT' },
  'incident dispatcher-down': { ready: 'froze dispatcher pid', signal: 'SIGINT' },
};

/** Documented outcomes other than exit 0. */
const OUTCOME: Record<string, { code: number; stdoutOrStderr: RegExp; why: string }> = {
  'events skip --id <uuid>': {
    code: 1,
    stdoutOrStderr: /does not block an ordering key/,
    why: 'the fixture has no blocked ordering key; skipping a blocked head is ordering.test.ts',
  },
  'sinks resume <sink>': {
    code: 1,
    stdoutOrStderr: /was not paused; nothing changed/,
    why: "alerts.md's resume runs before outbox.md's pause (the same command runs once); resuming a paused sink is oncall.test.ts",
  },
  'partitions adopt --table capacity_outbox --batch-size 5000': {
    code: 1,
    stdoutOrStderr: /already partitioned; nothing to adopt/,
    why: 'the migrated table is already partitioned; adopting a plain table is adopt.test.ts',
  },
};

// Commands expected to fail for a known, unfixed bug: command → reason (it.fails, so a fix flips it).
const KNOWN_CLI: Record<string, string> = {};

function fill(c: DocCommand, daemonPid: () => number): string[] {
  let nextId = 0;
  return c.argv.map((w, i) => {
    if (!w.startsWith('<')) return w;
    const flag = c.argv[i - 1];
    switch (w) {
      case '<uuid>':
        if (flag === '--tenant') return A;
        if (flag === '--id' || flag === 'show') return deadIds[nextId++ % deadIds.length]!;
        break;
      case '<sink>':
        return 'log';
      case '<pid>':
        return String(daemonPid());
      case '<staging owner url>':
        return owner.url;
      case '<pattern>':
      case '<the sink route pattern>':
        return 'booking.*';
      case '<time>':
      case '<outage start>':
        return since;
      case '<end of that month>':
        return '2026-06-01T00:00:00Z';
    }
    throw new Error(`${c.doc}: "${c.text}": no value for placeholder ${w} after ${flag}`);
  });
}

function fillEnv(c: DocCommand): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(c.env)) {
    if (v === 'postgres://owner@db/app') env[k] = owner.url;
    else if (v.startsWith('postgres://outbox_dispatcher:')) env[k] = workerUrl;
    // README's Supabase walk-through: the owner through the session pooler, the daemon's
    // login through the transaction pooler (pool) and the session pooler (LISTEN).
    else if (/^"?postgres:\/\/postgres\.\$REF:/.test(v)) env[k] = owner.url;
    else if (/^"?postgres:\/\/outbox_dispatcher\.\$REF:/.test(v)) env[k] = workerUrl;
    else if (v === '/etc/outbox/routes.yaml') env[k] = routesFile;
    else throw new Error(`${c.doc}: "${c.text}": no value for ${k}=${v}`);
  }
  return env;
}

describe('every CLI command in README and the runbooks, as written, with the login the docs name', () => {
  const all = docCommands();
    // The README's list of scenarios ("incident <sink-outage | poison | …>") is not a command line.
  const commands = all.filter((c) => !c.argv.some((w) => w.startsWith('<') && !w.endsWith('>')));
  const seen = new Set<string>();
  const unique = commands.filter((c) => {
    const key = `${c.argv.join(' ')} ${JSON.stringify(c.env)}`;
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });

  it('finds the commands (README, alerts, outbox, partitions)', () => {
    expect(unique.length).toBeGreaterThan(25);
    for (const doc of ['README.md', 'runbooks/alerts.md', 'runbooks/outbox.md', 'runbooks/partitions.md']) {
      expect(unique.some((c) => c.doc === doc), doc).toBe(true);
    }
  });

  for (const c of unique) {
    const shown = c.argv.join(' ');
    const known = KNOWN_CLI[shown];
    (known ? it.fails : it)(`${c.doc}: ${Object.keys(c.env).length ? `${Object.keys(c.env).join(' ')} ` : ''}${c.text}${known ? ` [known: ${known}]` : ''}`, async () => {
      const kind = loginFor(c);
      const url = kind === 'owner' ? owner.url : kind === 'producer' ? producerUrl : workerUrl;
      const env: Record<string, string> = {
        ...(kind === 'owner' ? { MIGRATION_DATABASE_URL: url } : kind === 'none' ? {} : { DATABASE_URL: url }),
        ...(c.argv[0] === 'run' ? { OUTBOX_ROUTES: routesFile } : {}),
        ...fillEnv(c),
      };
      const key = c.argv[0] === 'incident' ? `incident ${c.argv[1]}` : c.argv[0]!;
      const long = LONG_RUNNING[key];
      let daemon: ReturnType<typeof startWorkerProcess> | undefined;
      try {
        if (key === 'incident dispatcher-down') {
          daemon = startWorkerProcess({ DATABASE_URL: workerUrl, OUTBOX_ROUTES: routesFile, OUTBOX_SHUTDOWN_GRACE_MS: '1000' });
          await daemon.waitForLog((l) => l.msg === 'outbox dispatcher running', 60_000);
        }
        const argv = fill(c, () => daemon!.child.pid!);
        if (long) {
          const proc = startCli(argv, env);
          await waitFor(() => proc.output().includes(long.ready), { timeoutMs: 60_000, what: `${shown}: "${long.ready}"` }).catch((err: Error) => {
            throw new Error(`${err.message}\n${proc.output()}`);
          });
          proc.child.kill(long.signal);
          const exit = await proc.exited;
          expect(exit, proc.output()).toEqual({ code: 0, signal: null });
          expect(proc.output()).not.toMatch(/^\s+at\s/m);
        } else {
          const r = await runCli(argv, env, 120_000);
          const outcome = OUTCOME[shown];
          expect(r.code, `${r.stdout}\n${r.stderr}`).toBe(outcome?.code ?? 0);
          if (outcome) expect(`${r.stdout}${r.stderr}`).toMatch(outcome.stdoutOrStderr);
          else expect(r.stderr).toBe('');
        }
        if (daemon) {
          // dispatcher-down resumed it: it still answers SIGTERM with a graceful stop.
          daemon.child.kill('SIGTERM');
          expect(await daemon.exited).toEqual({ code: 0, signal: null });
          daemon = undefined;
        }
      } finally {
        daemon?.child.kill('SIGKILL');
      }
    }, 180_000);
  }
});
