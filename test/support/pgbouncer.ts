import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { freePort } from './ports.ts';

/** Where the Debian package puts it (`apt-get install pgbouncer`; 1.18 on bookworm). */
export const PGBOUNCER_BIN = process.env.PGBOUNCER_BIN ?? '/usr/sbin/pgbouncer';

/**
 * Why the PgBouncer tests cannot run here, or undefined when they can. With REQUIRE_PGBOUNCER=1
 * (CI) an absent binary is a failure, not a skip.
 */
export function pgbouncerMissing(): string | undefined {
  if (fs.existsSync(PGBOUNCER_BIN)) return undefined;
  const reason = `${PGBOUNCER_BIN} not found (apt-get install pgbouncer, or set PGBOUNCER_BIN)`;
  if (process.env.REQUIRE_PGBOUNCER === '1') throw new Error(`REQUIRE_PGBOUNCER=1 but ${reason}`);
  return reason;
}

export interface PgBouncer {
  port: number;
  /** `url` (a URL of the test cluster) rewritten to go through this PgBouncer. */
  via(url: string): string;
  /** PgBouncer's own log (for failure messages). */
  log(): string;
  stop(): Promise<void>;
}

export interface PgBouncerOptions {
  /** Any URL of the PostgreSQL cluster to front; every database is reachable by name. */
  serverUrl: string;
  /** Login roles allowed through, with the passwords PgBouncer uses towards the server. */
  users: { name: string; password: string }[];
  /** Server connections per (database, user); small so that transactions really share them. */
  poolSize?: number;
}

const quote = (s: string) => `"${s.replace(/"/g, '""')}"`;

/**
 * A PgBouncer process of the test's own: its own config file and port in a temp dir,
 * `pool_mode = transaction` and nothing else special (no ignore_startup_parameters,
 * no server_reset_query tricks), so what passes here passes behind a stock pooler.
 */
export async function startPgBouncer(opts: PgBouncerOptions): Promise<PgBouncer> {
  const server = new URL(opts.serverUrl);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'outbox-pgbouncer-'));
  fs.chmodSync(dir, 0o755);
  const port = await freePort();
  const auth = path.join(dir, 'userlist.txt');
  fs.writeFileSync(auth, opts.users.map((u) => `${quote(u.name)} ${quote(u.password)}\n`).join(''), { mode: 0o644 });
  const logFile = path.join(dir, 'pgbouncer.log');
  const ini = path.join(dir, 'pgbouncer.ini');
  fs.writeFileSync(
    ini,
    [
      '[databases]',
      `* = host=${server.hostname.replace(/^\[|\]$/g, '')} port=${server.port || '5432'}`,
      '[pgbouncer]',
      'listen_addr = 127.0.0.1',
      `listen_port = ${port}`,
      'unix_socket_dir =',
      'auth_type = trust',
      `auth_file = ${auth}`,
      'pool_mode = transaction',
      `default_pool_size = ${opts.poolSize ?? 4}`,
      'max_client_conn = 500',
      `logfile = ${logFile}`,
      `pidfile = ${path.join(dir, 'pgbouncer.pid')}`,
      '',
    ].join('\n'),
  );
  // PgBouncer refuses to run as root; -u drops to an unprivileged user.
  const args = process.getuid?.() === 0 ? ['-u', 'postgres', ini] : [ini];
  if (process.getuid?.() === 0) fs.chownSync(dir, uidOf('postgres'), -1);
  const child: ChildProcess = spawn(PGBOUNCER_BIN, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  const readLog = () => {
    try {
      return fs.readFileSync(logFile, 'utf8') + stderr;
    } catch {
      return stderr;
    }
  };
  await waitForPort(port, child, readLog);
  return {
    port,
    via(url: string) {
      const u = new URL(url);
      u.hostname = '127.0.0.1';
      u.port = String(port);
      return u.toString();
    },
    log: readLog,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise((r) => child.once('exit', r));
        child.kill('SIGINT');
        await exited;
      }
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

function uidOf(user: string): number {
  const line = fs.readFileSync('/etc/passwd', 'utf8').split('\n').find((l) => l.startsWith(`${user}:`));
  if (!line) throw new Error(`user ${user} not found (PgBouncer must not run as root)`);
  return Number(line.split(':')[2]);
}

async function waitForPort(port: number, child: ChildProcess, log: () => string): Promise<void> {
  const deadline = Date.now() + 15_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`pgbouncer exited with ${child.exitCode}: ${log()}`);
    const up = await new Promise<boolean>((resolve) => {
      const s = net.connect(port, '127.0.0.1');
      s.once('connect', () => (s.destroy(), resolve(true)));
      s.once('error', () => resolve(false));
    });
    if (up) return;
    if (Date.now() > deadline) throw new Error(`pgbouncer did not listen on ${port}: ${log()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
