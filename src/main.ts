#!/usr/bin/env node
import { Command, CommanderError, Option } from 'commander';
import { runCommand } from './cli/run-command.ts';
import { migrateCommand } from './cli/migrate-command.ts';
import { enqueueCommand } from './cli/enqueue-command.ts';
import { replayCommand, statsCommand } from './cli/events-command.ts';
import { partitionsAdoptCommand, partitionsRotateCommand, partitionsStatusCommand } from './cli/partitions-command.ts';
import { AdoptError } from './partitions/adopt.ts';
import { UsageError } from './cli/parse.ts';
import { ConfigError } from './config/errors.ts';
import { RegistryError } from './partitions/registry.ts';
import { EXIT, StartupError } from './lifecycle/errors.ts';
import { VERSION } from './version.ts';

const collect = (value: string, previous: string[] = []) => [...previous, value];
const databaseUrlOption = () => new Option('--database-url <url>', 'connect here instead of DATABASE_URL / the embedded default');

function filterOptions(cmd: Command): Command {
  return cmd
    .option('--type <pattern>', 'event type or pattern with * (repeatable)', collect)
    .option('--tenant <uuid>', 'restaurant id')
    .option('--since <time>', 'created at or after (ISO-8601)')
    .option('--until <time>', 'created before (ISO-8601)')
    .addOption(databaseUrlOption())
    .option('--json', 'machine-readable output');
}

export function buildProgram(): Command {
  const program = new Command('outbox-dispatcher')
    .description('Relays transactional-outbox events from PostgreSQL (capacity_outbox) to sinks.')
    .version(VERSION)
    .showHelpAfterError()
    .exitOverride();

  program
    .command('run')
    .description('run the dispatcher daemon (embedded PostgreSQL when DATABASE_URL is unset)')
    .addHelpText('after', '\nConfiguration comes from the environment; see README "Configuration".')
    .action(async () => runCommand());

  program
    .command('migrate')
    .description('apply pending migrations (as the schema owner: MIGRATION_DATABASE_URL or DATABASE_URL)')
    .option('--status', 'only report applied and pending migrations (exit 79 when behind)')
    .option('--json', 'machine-readable output')
    .addOption(databaseUrlOption())
    .action(async (opts) => {
      process.exitCode = await migrateCommand(opts);
    });

  program
    .command('enqueue')
    .description('insert events the way a producer does (for trying it out)')
    .requiredOption('--type <eventType>', 'event type, e.g. booking.created')
    .requiredOption('--tenant <uuid>', 'restaurant id the event belongs to')
    .option('--payload <json>', 'JSON object payload', '{}')
    .option('--dedupe-key <key>', 'dedupe key')
    .option('--idempotency-key <key>', 'idempotency key')
    .option('--count <n>', 'insert this many copies in one transaction', '1')
    .option('--json', 'machine-readable output')
    .addOption(databaseUrlOption())
    .action(async (opts) => {
      process.exitCode = await enqueueCommand(opts);
    });

  const events = program.command('events').description('inspect and repair events');
  filterOptions(events.command('stats').description('counts by status and event type, and the oldest due event'))
    .option('--all', "also count 'done' events (scans the whole table)")
    .action(async (opts) => {
      process.exitCode = await statsCommand(opts);
    });
  filterOptions(events.command('replay').description('return dead events to pending (filtered); --dry-run shows what it would touch'))
    .option('--id <uuid>', 'only this event (repeatable)', collect)
    .option('--limit <n>', 'replay at most this many')
    .option('--dry-run', 'print what would be replayed; change nothing')
    .action(async (opts) => {
      process.exitCode = await replayCommand(opts);
    });

  const partitions = program.command('partitions').description('monthly partitions of capacity_outbox and other registered tables');
  partitions
    .command('status')
    .description('each partition with its range, rows, size and what retention would do; runway; default-partition rows')
    .option('--table <name>', 'only this registered table (name or schema.name)')
    .option('--json', 'machine-readable output')
    .addOption(databaseUrlOption())
    .action(async (opts) => {
      process.exitCode = await partitionsStatusCommand(opts);
    });
  partitions
    .command('rotate')
    .description('create partitions ahead, empty the default partition, retire expired ones; prints the DDL (exit 1 if a step failed or was blocked)')
    .option('--table <name>', 'only this registered table')
    .option('--dry-run', 'print the DDL plan; execute nothing')
    .option('--json', 'machine-readable output')
    .addOption(databaseUrlOption())
    .action(async (opts) => {
      process.exitCode = await partitionsRotateCommand(opts);
    });
  partitions
    .command('adopt')
    .description('convert a plain registered table into the partitioned layout online (as the table owner: MIGRATION_DATABASE_URL or DATABASE_URL)')
    .requiredOption('--table <name>', 'the registered table to convert')
    .option('--batch-size <n>', 'rows copied per batch', '5000')
    .option('--json', 'machine-readable output')
    .addOption(databaseUrlOption())
    .action(async (opts) => {
      process.exitCode = await partitionsAdoptCommand(opts);
    });
  return program;
}

export async function main(argv = process.argv): Promise<void> {
  try {
    await buildProgram().parseAsync(argv);
  } catch (err) {
    process.exitCode = exitCodeFor(err);
  }
}

function exitCodeFor(err: unknown): number {
  if (err instanceof CommanderError) {
    // --help and --version end here too, successfully.
    return err.exitCode === 0 ? EXIT.OK : EXIT.USAGE;
  }
  const say = (msg: string) => process.stderr.write(`outbox-dispatcher: ${msg}\n`);
  if (err instanceof ConfigError) {
    say(`invalid configuration: ${err.message}`);
    return EXIT.CONFIG;
  }
  if (err instanceof UsageError) {
    say(err.message);
    return EXIT.USAGE;
  }
  if (err instanceof AdoptError) {
    say(`adopt: ${err.message}`);
    return EXIT.FAILURE;
  }
  if (err instanceof RegistryError) {
    say(err.message);
    return EXIT.USAGE;
  }
  if (err instanceof StartupError) {
    say(err.message);
    return err.exitCode;
  }
  say(err instanceof Error ? (err.stack ?? err.message) : String(err));
  return EXIT.FAILURE;
}

await main();
