#!/usr/bin/env node
import { CommanderError } from 'commander';
import { buildProgram } from './cli/program.ts';
import { UsageError } from './cli/parse.ts';
import { ConfigError } from './config/errors.ts';
import { MigrationError } from './db/migrator.ts';
import { EXIT, StartupError } from './lifecycle/errors.ts';
import { AdoptError } from './partitions/adopt.ts';
import { RegistryError } from './partitions/registry.ts';

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
  if (err instanceof MigrationError) {
    say(`migrate: ${err.message}`);
    return EXIT.FAILURE;
  }
  if (err instanceof StartupError) {
    say(err.message);
    return err.exitCode;
  }
  say(err instanceof Error ? (err.stack ?? err.message) : String(err));
  return EXIT.FAILURE;
}

await main();
