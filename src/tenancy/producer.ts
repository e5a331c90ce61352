import type pg from 'pg';

/**
 * Runs `work` the way a producer writes: one transaction, as app_producer when the login
 * role may assume it, with the tenant context set. Used by `enqueue` and the incidents.
 */
export async function asProducer<T>(client: pg.ClientBase, tenant: string, work: () => Promise<T>): Promise<T> {
  await client.query('BEGIN');
  try {
    const member = await client.query<{ ok: boolean }>("SELECT pg_has_role(session_user, 'app_producer', 'MEMBER') AS ok");
    if (member.rows[0]?.ok) await client.query('SET LOCAL ROLE app_producer');
    await client.query('SELECT public.set_restaurant_context($1::uuid)', [tenant]);
    const result = await work();
    await client.query('COMMIT');
    return result;
  } catch (err) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw err;
  }
}
