import pg from 'pg';
import { loadEnvConfig } from '../config/env.ts';
import { EXIT } from '../kernel/exit-codes.ts';
import { asProducer } from '../tenancy/producer.ts';
import { cliLogger, withClient } from './connection.ts';
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

  const config = loadEnvConfig(env);
  const log = cliLogger(config);
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
    const inserted = await client.query<{ id: string }>(
      `INSERT INTO capacity_outbox (restaurant_id, event_type, payload, dedupe_key, idempotency_key, ordering_key)
       SELECT $1::uuid, $2, $3::jsonb, $4, $5, $7 FROM generate_series(1, $6::int)
       RETURNING id`,
      [e.tenant, e.type, JSON.stringify(e.payload), e.dedupeKey ?? null, e.idempotencyKey ?? null, e.count, e.orderingKey ?? null],
    );
    const duplicates: EnqueueResult['duplicates'] = [];
    const dropped = e.count - inserted.rowCount!;
    if (dropped > 0) {
      const holder = await client.query<{ id: string }>(
        `SELECT id FROM capacity_outbox
         WHERE restaurant_id = $1 AND event_type = $2 AND coalesce(dedupe_key, '') = coalesce($3, '')
           AND coalesce(idempotency_key, '') = coalesce($4, '') AND status = 'pending'
         LIMIT 1`,
        [e.tenant, e.type, e.dedupeKey ?? null, e.idempotencyKey ?? null],
      );
      for (let i = 0; i < dropped; i++) duplicates.push({ activeEventId: holder.rows[0]?.id ?? null });
    }
    return { inserted: inserted.rows.map((r) => r.id), duplicates };
  });
}
