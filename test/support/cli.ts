import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { waitFor } from './db.ts';

const MAIN = fileURLToPath(new URL('../../src/main.ts', import.meta.url));

/** The environment the CLI sees: nothing inherited that could point it elsewhere. */
function cleanEnv(env: Record<string, string>): NodeJS.ProcessEnv {
  const base: NodeJS.ProcessEnv = { PATH: process.env.PATH, HOME: process.env.HOME, LANG: 'C.UTF-8' };
  return { ...base, METRICS_PORT: '0', LOG_LEVEL: 'info', ...env };
}

export interface CliResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Runs `outbox-dispatcher <args>` to completion with the Node running the tests. */
export function runCli(args: string[], env: Record<string, string> = {}, timeoutMs = 60_000): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [MAIN, ...args], { env: cleanEnv(env) });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

export interface WorkerProcess {
  child: ChildProcessWithoutNullStreams;
  /** Parsed JSON log lines so far. */
  logs: Record<string, unknown>[];
  output: () => string;
  waitForLog(match: (line: Record<string, unknown>) => boolean, timeoutMs?: number): Promise<Record<string, unknown>>;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** Starts `outbox-dispatcher run` as a child process. */
export function startWorkerProcess(env: Record<string, string>): WorkerProcess {
  return startCli(['run'], env);
}

/** Starts `outbox-dispatcher <args>` as a child process (a long-running command). */
export function startCli(args: string[], env: Record<string, string>): WorkerProcess {
  const child = spawn(process.execPath, [MAIN, ...args], { env: cleanEnv(env) });
  const logs: Record<string, unknown>[] = [];
  let raw = '';
  let partial = '';
  child.stdout.on('data', (d: Buffer) => {
    raw += d.toString();
    partial += d.toString();
    const lines = partial.split('\n');
    partial = lines.pop()!;
    for (const line of lines) {
      try {
        logs.push(JSON.parse(line));
      } catch {
        /* not a log line */
      }
    }
  });
  child.stderr.on('data', (d: Buffer) => (raw += d.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on('exit', (code, signal) => resolve({ code, signal })),
  );
  return {
    child,
    logs,
    output: () => raw,
    waitForLog: (match, timeoutMs = 30_000) =>
      waitFor(() => logs.find(match), { timeoutMs, what: 'log line' }).catch((err: Error) => {
        throw new Error(`${err.message}; output so far:\n${raw.slice(-2000)}`);
      }) as Promise<Record<string, unknown>>,
    exited,
  };
}
