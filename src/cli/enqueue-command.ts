import pg from 'pg';
import { asProducer, insertEvents, pendingHolderOf } from '../db/queries/producer.ts';
import { EXIT } from '../kernel/exit-codes.ts';
import { cliSettings, withClient } from './connection.ts';
import { printJson } from './output.ts';
import { UsageError, parseJsonObject, parseUuid } from './parse.ts';

export interface EnqueueOptions {
  type: string;
  tenant: string;
  payload?: string;
  dedupeKey?: string;
  idempotencyKey?: string;
  orderingKey?: string;
  count?: string;
  json?: boolean;
  databaseUrl?: string;
}

export interface EnqueueResult {
  inserted: string[];
  /** Rows dropped by dedupe, with the active event that holds their key. */
  duplicates: { activeEventId: string | null }[];
}

/**
 * Inserts events exactly as a producer would (the README's producer contract):
 * as app_producer, with the tenant context set, in one transaction.
 */
export async function enqueueCommand(opts: EnqueueOptions, env: NodeJS.ProcessEnv = process.env): Promise<number> {
  const tenant = parseUuid('--tenant', opts.tenant);
  const payload = opts.payload === undefined ? {} : parseJsonObject('--payload', opts.payload);
  const count = opts.count === undefined ? 1 : Number(opts.count);
  if (!Number.isInteger(count) || count < 1 || count > 100_000) throw new UsageError('--count must be a whole number between 1 and 100000');

  const { config, log } = cliSettings(env);
  return withClient(config, log, { as: 'superuser', url: opts.databaseUrl, applicationName: 'outbox-dispatcher-enqueue' }, async (client) => {
    const result = await enqueue(client, { tenant, type: opts.type, payload, dedupeKey: opts.dedupeKey, idempotencyKey: opts.idempotencyKey, orderingKey: opts.orderingKey, count });
    if (opts.json) printJson(result);
    else {
      for (const id of result.inserted) process.stdout.write(`enqueued ${id}\n`);
      for (const d of result.duplicates) process.stdout.write(`duplicate dropped: active event ${d.activeEventId ?? '(finished meanwhile)'} holds the key\n`);
    }
    return EXIT.OK;
  });
}

export async function enqueue(
  client: pg.ClientBase,
  e: { tenant: string; type: string; payload: object; dedupeKey?: string | undefined; idempotencyKey?: string | undefined; orderingKey?: string | undefined; count: number },
): Promise<EnqueueResult> {
  return asProducer(client, e.tenant, async () => {
    const event = { type: e.type, payload: e.payload, dedupeKey: e.dedupeKey, idempotencyKey: e.idempotencyKey, orderingKey: e.orderingKey };
    const inserted = await insertEvents(client, e.tenant, Array.from({ length: e.count }, () => event));
    const dropped = e.count - inserted.length;
    const holder = dropped > 0 ? await pendingHolderOf(client, { tenant: e.tenant, ...event }) : null;
    return { inserted, duplicates: Array.from({ length: dropped }, () => ({ activeEventId: holder })) };
  });
}
