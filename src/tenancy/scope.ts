import type { Kysely, Transaction } from 'kysely';
import { setTenantContext } from '../db/queries/session.ts';
import type { Database } from '../db/schema.ts';

export type TenantTransaction = Transaction<Database>;

/**
 * Runs database work for one tenant: a transaction whose app.restaurant_id is
 * set transaction-locally, so RLS narrows every statement in it to that tenant
 * and the setting cannot leak to the next user of the pooled connection.
 */
export class TenantScope {
  readonly #db: Kysely<Database>;

  constructor(db: Kysely<Database>) {
    this.#db = db;
  }

  run<T>(restaurantId: string, work: (trx: TenantTransaction) => Promise<T>): Promise<T> {
    return this.#db.transaction().execute(async (trx) => {
      await setTenantContext(trx, restaurantId);
      return work(trx);
    });
  }
}
