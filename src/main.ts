#!/usr/bin/env node
import { buildProgram } from './cli/program.ts';
import { describeFailure, type CommandContext } from './cli/errors.ts';

export async function main(argv = process.argv): Promise<void> {
  const context: CommandContext = { command: undefined, login: undefined, loginRole: undefined };
  try {
    await buildProgram(context).parseAsync(argv);
  } catch (err) {
    const failure = describeFailure(err, context);
    if (failure.message) process.stderr.write(`outbox-dispatcher: ${failure.message}\n`);
    process.exitCode = failure.exitCode;
  }
}

await main();
