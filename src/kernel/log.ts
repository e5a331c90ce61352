import { pino, type Logger } from 'pino';

export type { Logger };

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

/** Levels at which operators asked for detail: the CLI then prints log lines and stack traces. */
export function isDebugLevel(level: string | undefined): boolean {
  return level === 'debug' || level === 'trace';
}

/** Paths pino blanks out wherever they appear in a log line. */
const REDACT_PATHS = [
  'password',
  '*.password',
  'secret',
  '*.secret',
  'hmacSecret',
  '*.hmacSecret',
  'connectionString',
  '*.connectionString',
  'databaseUrl',
  '*.databaseUrl',
  'headers.authorization',
  '*.headers.authorization',
  'payload',
  '*.payload',
];

export function createLogger(level: LogLevel, destination?: NodeJS.WritableStream): Logger {
  return pino(
    {
      level,
      base: { service: 'outbox-dispatcher' },
      redact: { paths: REDACT_PATHS, censor: '[redacted]' },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    destination as pino.DestinationStream | undefined,
  );
}

/** postgres://user:secret@host/db -> postgres://user:***@host/db, for logs and errors. */
export function redactUrl(url: string | undefined): string | undefined {
  if (!url) return url;
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return '[unparseable url]';
  }
}
