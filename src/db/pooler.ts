import type pg from 'pg';
import { connectClient } from './connect.ts';
import { backendPid as pid, holdingTransaction } from './queries/session.ts';

export interface PoolerProbe {
  /** Consecutive statements of one client may run on different server sessions. */
  transactionPooled: boolean;
  /** The server session is not the one the connection was opened with (any pooler). */
  behindPooler: boolean;
}

/**
 * Finds out whether `client` reaches PostgreSQL through a transaction-mode pooler (PgBouncer,
 * Supavisor), where session state (session advisory locks, SET, LISTEN) does not survive from
 * one statement to the next. A second connection holds a transaction open; a session pooler
 * can never give it `client`'s server session, and `client`'s session never changes under a
 * direct or session-mode connection. Either seen happening proves transaction pooling.
 * A pooler also answers the connection with its own process id and cancel key.
 */
export async function probePooler(client: pg.Client, connectionString: string): Promise<PoolerProbe> {
  const first = await pid(client);
  // node-postgres keeps BackendKeyData's process id but does not declare it.
  const announced = (client as unknown as { processID?: number | null }).processID;
  const behindPooler = typeof announced === 'number' && announced !== first;
  const other = await connectClient(connectionString, 'outbox-dispatcher-pooler-probe');
  try {
    return await holdingTransaction(other, async () => {
      const held = await pid(other);
      const again = await pid(client);
      return { transactionPooled: held === first || again !== first, behindPooler };
    });
  } finally {
    await other.end().catch(() => undefined);
  }
}
