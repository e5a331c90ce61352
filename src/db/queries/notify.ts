import { sql, type Kysely } from 'kysely';
import type { Database } from '../schema.ts';

/** The channel the capacity_outbox insert trigger notifies (migrations/0002). */
export const OUTBOX_CHANNEL = 'capacity_outbox';

/** pg_notify through the pool (the LISTEN self-test's notification comes from another connection). */
export async function notify(db: Kysely<Database>, channel: string, payload: string): Promise<void> {
  await sql`SELECT pg_notify(${channel}, ${payload})`.execute(db);
}
