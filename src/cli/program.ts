import { Command, Option } from 'commander';
import { enqueueCommand } from './enqueue-command.ts';
import { replayCommand, statsCommand } from './events-command.ts';
import { incidentCommand, SCENARIOS } from './incident-command.ts';
import { migrateCommand } from './migrate-command.ts';
import { partitionsAdoptCommand, partitionsRotateCommand, partitionsStatusCommand } from './partitions-command.ts';
import { runCommand } from './run-command.ts';
import { VERSION } from '../version.ts';

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
    .description('create partitions ahead, empty the default partition, retire expired ones; prints the DDL (exit 1 if a step failed or was blocked, 75 if deferred: a lock was not available)')
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

  program
    .command('incident')
    .description(`provoke an alert's condition on a STAGING database or host (${SCENARIOS.join(', ')}); see runbooks/alerts.md`)
    .argument('<scenario>', SCENARIOS.join(' | '))
    .option('--count <n>', 'poison, backlog: events to insert', '50')
    .option('--tenant <uuid>', 'poison, backlog: tenant of the events')
    .option('--type <eventType>', 'poison, backlog: event type (default incident.<scenario>)')
    .option('--age <seconds>', 'backlog: how overdue the events are', '3600')
    .option('--duration <seconds>', 'sink-outage, dispatcher-down, claim-latency: how long', '300')
    .option('--hold <ms>', 'claim-latency: how long each lock is held', '50')
    .option('--listen <host:port>', 'sink-outage: where the failing sink listens', '127.0.0.1:18080')
    .option('--status <code>', 'sink-outage: the status it answers', '503')
    .option('--pid <pid>', 'dispatcher-down: the dispatcher process to freeze')
    .addOption(databaseUrlOption())
    .action(async (scenario: string, opts) => {
      process.exitCode = await incidentCommand(scenario, opts);
    });
  return program;
}
