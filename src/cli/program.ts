import { Command, Option } from 'commander';
import { enqueueCommand } from './enqueue-command.ts';
import { auditCommand } from './audit-command.ts';
import { abandonCommand, blockedCommand, LIST_MAX, listCommand, replayCommand, showCommand, skipCommand, statsCommand } from './events-command.ts';
import { sinksPauseCommand, sinksResumeCommand, sinksStatusCommand } from './sinks-command.ts';
import { incidentCommand, SCENARIOS } from './incident-command.ts';
import { migrateCommand } from './migrate-command.ts';
import { partitionsAdoptCommand, partitionsRotateCommand, partitionsStatusCommand } from './partitions-command.ts';
import { runCommand } from './run-command.ts';
import type { CommandContext } from './errors.ts';
import { incidentLogin, loginHelp, LOGINS, type LoginKind } from './logins.ts';
import { VERSION } from '../kernel/version.ts';

const collect = (value: string, previous: string[] = []) => [...previous, value];
const databaseUrlOption = () => new Option('--database-url <url>', 'connect here instead of DATABASE_URL / the embedded default');

function filterOptions(cmd: Command): Command {
  return cmd
    .option('--type <pattern>', 'event type or pattern with * (repeatable)', collect)
    .option('--tenant <uuid>', 'restaurant id')
    .option('--since <time>', 'created at or after (ISO-8601)')
    .option('--until <time>', 'created before (ISO-8601)')
    .option('--error-contains <text>', 'last error contains this text (case-insensitive)')
    .option('--ordering-key <key>', 'only events of this ordering key')
    .addOption(databaseUrlOption())
    .option('--json', 'machine-readable output');
}

/** The login each command needs (see logins.ts); read by the error mapping through the context. */
const needs = new WeakMap<Command, (args: string[]) => LoginKind>();

function login(cmd: Command, kind: LoginKind, extra?: string): Command {
  needs.set(cmd, () => kind);
  return cmd.addHelpText('after', loginHelp(kind, extra));
}

/** The login `cmd` needs when run with positional `args` (undefined: not a leaf command). */
export function loginOf(cmd: Command, args: string[] = []): LoginKind | undefined {
  return needs.get(cmd)?.(args);
}

function commandPath(cmd: Command): string {
  const names: string[] = [];
  for (let c: Command | null = cmd; c?.parent; c = c.parent) names.unshift(c.name());
  return names.join(' ');
}

/**
 * The CLI. `context` learns which command runs and the login it needs before the command's
 * action starts, so a failure can be explained in those terms (errors.ts).
 */
export function buildProgram(context?: CommandContext): Command {
  const program = new Command('outbox-dispatcher')
    .description('Relays transactional-outbox events from PostgreSQL (capacity_outbox) to sinks.')
    .version(VERSION)
    .showHelpAfterError()
    .exitOverride();
  program.hook('preAction', (_root, action) => {
    if (!context) return;
    // An incident's scenario decides what it touches: name it too.
    context.command = action.name() === 'incident' && action.args[0] ? `incident ${action.args[0]}` : commandPath(action);
    context.login = needs.get(action)?.(action.args);
  });

  program
    .command('run')
    .description('run the dispatcher daemon (embedded PostgreSQL when DATABASE_URL is unset)')
    .addHelpText('after', '\nConfiguration comes from the environment; see README "Configuration".')
    .action(async () => runCommand());
  login(program.commands.at(-1)!, 'daemon', 'It refuses a superuser or BYPASSRLS login (exit 77) unless OUTBOX_ALLOW_PRIVILEGED_ROLE=true.');

  program
    .command('migrate')
    .description('apply pending migrations (as the schema owner: MIGRATION_DATABASE_URL or DATABASE_URL)')
    .option('--status', 'only report applied and pending migrations (exit 79 when behind)')
    .option('--json', 'machine-readable output')
    .addOption(databaseUrlOption())
    .action(async (opts) => {
      process.exitCode = await migrateCommand(opts);
    });
  login(program.commands.at(-1)!, 'owner', '--status also works with the daemon\'s login.');

  program
    .command('enqueue')
    .description('insert events the way a producer does (for trying it out)')
    .requiredOption('--type <eventType>', 'event type, e.g. booking.created')
    .requiredOption('--tenant <uuid>', 'restaurant id the event belongs to')
    .option('--payload <json>', 'JSON object payload', '{}')
    .option('--dedupe-key <key>', 'dedupe key')
    .option('--idempotency-key <key>', 'idempotency key')
    .option('--ordering-key <key>', 'ordering key: events with the same tenant and key are delivered one at a time, in order')
    .option('--count <n>', 'insert this many copies in one transaction', '1')
    .option('--json', 'machine-readable output')
    .addOption(databaseUrlOption())
    .action(async (opts) => {
      process.exitCode = await enqueueCommand(opts);
    });
  login(program.commands.at(-1)!, 'producer');

  const events = program.command('events').description('inspect and repair events');
  login(filterOptions(events.command('stats').description('counts by status and event type, and the oldest due event'))
    .option('--all', "also count 'done' events (scans the whole table)")
    .action(async (opts) => {
      process.exitCode = await statsCommand(opts);
    }), 'daemon');
  login(filterOptions(events.command('replay').description('return dead events to pending (filtered); --dry-run shows what it would touch'))
    .option('--id <uuid>', 'only this event (repeatable)', collect)
    .option('--limit <n>', 'replay at most this many')
    .option('--dry-run', 'print what would be replayed; change nothing')
    .action(async (opts) => {
      process.exitCode = await replayCommand(opts);
    }), 'daemon');
  login(filterOptions(events.command('abandon').description("give up on dead events that can never be delivered: mark them done with --reason in last_error (audited); --dry-run shows what it would touch"))
    .option('--id <uuid>', 'only this event (repeatable)', collect)
    .option('--reason <text>', 'why (a ticket): written into each event\'s last_error and the audit trail (required)')
    .option('--limit <n>', 'abandon at most this many')
    .option('--dry-run', 'print what would be abandoned; change nothing')
    .action(async (opts) => {
      process.exitCode = await abandonCommand(opts);
    }), 'daemon');
  login(events
    .command('show')
    .description("one event: status, tenant, type, keys, attempts, lease, next attempt, last error, times, partition, payload size, its key's position")
    .argument('<id>', 'the event id')
    .option('--payload', 'also print the payload')
    .option('--json', 'machine-readable output')
    .addOption(databaseUrlOption())
    .action(async (id: string, opts) => {
      process.exitCode = await showCommand(id, opts);
    }), 'daemon');
  login(filterOptions(events.command('list').description('events by filter, newest first, a page at a time (keyset cursor: --after)'))
    .option('--status <status>', "pending, processing, dead or done (repeatable; default: pending, processing, dead; done needs --since)", collect)
    .option('--limit <n>', `events per page (at most ${LIST_MAX})`, '50')
    .option('--after <cursor>', 'the cursor the previous page printed')
    .action(async (opts) => {
      process.exitCode = await listCommand(opts);
    }), 'daemon');
  login(events
    .command('blocked')
    .description('ordering keys held up by a dead head event: tenant, key, head event, since, last error')
    .option('--tenant <uuid>', 'only this restaurant')
    .option('--limit <n>', 'show at most this many (oldest first)', '100')
    .option('--json', 'machine-readable output')
    .addOption(databaseUrlOption())
    .action(async (opts) => {
      process.exitCode = await blockedCommand(opts);
    }), 'daemon');
  login(events
    .command('skip')
    .description("set a blocked key's dead head aside (it stays dead and replayable) so the key's next events are delivered")
    .option('--id <uuid>', 'the head event (repeatable)', collect)
    .option('--json', 'machine-readable output')
    .addOption(databaseUrlOption())
    .action(async (opts) => {
      process.exitCode = await skipCommand(opts);
    }), 'daemon');

  const sinks = program.command('sinks').description('pause, resume and look at sinks (state shared by every replica through the database)');
  login(sinks
    .command('status')
    .description('each configured sink: paused or not, by whom, since, why, events parked; circuit state per live replica and sends in flight')
    .option('--json', 'machine-readable output')
    .addOption(databaseUrlOption())
    .action(async (opts) => {
      process.exitCode = await sinksStatusCommand(opts);
    }), 'daemon', 'Reads OUTBOX_ROUTES (when set) for the configured sinks.');
  login(sinks
    .command('pause')
    .description("stop sending to a sink on every replica within seconds; its events stay pending and spend no attempts")
    .argument('<name>', 'the sink name (routes file)')
    .option('--reason <text>', 'why (required; shown by sinks status and recorded in the audit trail)')
    .option('--json', 'machine-readable output')
    .addOption(databaseUrlOption())
    .action(async (name: string, opts) => {
      process.exitCode = await sinksPauseCommand(name, opts);
    }), 'daemon');
  login(sinks
    .command('resume')
    .description('send to a paused sink again; its parked events are due at once (exit 1 if it was not paused)')
    .argument('<name>', 'the sink name (routes file)')
    .option('--json', 'machine-readable output')
    .addOption(databaseUrlOption())
    .action(async (name: string, opts) => {
      process.exitCode = await sinksResumeCommand(name, opts);
    }), 'daemon');

  login(program
    .command('audit')
    .description('operator actions that changed events or sinks: who, when, what, how many rows (newest first)')
    .option('--since <time>', 'at or after (ISO-8601)')
    .option('--action <name>', 'e.g. events.replay, sink.pause, or a pattern such as sink.* (repeatable)', collect)
    .option('--limit <n>', 'show at most this many', '100')
    .option('--json', 'machine-readable output')
    .addOption(databaseUrlOption())
    .action(async (opts) => {
      process.exitCode = await auditCommand(opts);
    }), 'daemon');

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
  login(partitions.commands.at(-1)!, 'daemon');
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
  login(partitions.commands.at(-1)!, 'daemon');
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
  login(partitions.commands.at(-1)!, 'owner');

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
    })
    .addHelpText('after', `\n${incidentLoginHelp()}`);
  needs.set(program.commands.at(-1)!, (args) => incidentLogin(args[0] ?? ''));

  program.addHelpText('after', `\n${loginSummary(program)}\nExit codes: README "CLI".`);
  return program;
}

/** "Logins:" of the top-level --help, from the same table the commands use. */
function loginSummary(program: Command): string {
  const byKind = new Map<LoginKind, string[]>();
  const add = (kind: LoginKind, name: string) => byKind.set(kind, [...(byKind.get(kind) ?? []), name]);
  const walk = (cmd: Command) => {
    for (const sub of cmd.commands) {
      if (sub.commands.length) walk(sub);
      else if (sub.name() === 'incident') for (const s of SCENARIOS) add(incidentLogin(s), `incident ${s}`);
      else {
        const kind = loginOf(sub);
        if (kind) add(kind, commandPath(sub));
      }
    }
  };
  walk(program);
  const lines = (['daemon', 'producer', 'owner'] as const).map((k) => `  ${LOGINS[k].who}: ${(byKind.get(k) ?? []).join(', ')}`);
  return ['Logins (each command\'s --help says which it needs):', ...lines].join('\n');
}

function incidentLoginHelp(): string {
  const lines = SCENARIOS.map((s) => {
    const kind = incidentLogin(s);
    return `  ${s}: ${kind === 'none' ? 'none (no database connection)' : `${LOGINS[kind].who}, from ${LOGINS[kind].from}`}`;
  });
  return ['Login, by scenario:', ...lines].join('\n');
}
