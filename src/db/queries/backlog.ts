import { sql, type Kysely } from 'kysely';
import type { Database, OutboxStatus } from '../schema.ts';

// Cheap backlog sampling for metrics: every query walks the dispatch index
// (status, next_attempt_at) and is bounded, so a 10M-row table costs the same as a small one.

export interface BacklogSample {
  /** Rows per status, counted up to `cap` (a value equal to cap means "at least cap"). */
  counts: Record<'pending' | 'processing' | 'dead', number>;
  /** How long the oldest due pending event has waited past next_attempt_at; 0 when none is due. */
  oldestDueAgeSeconds: number;
}

const SAMPLED: ('pending' | 'processing' | 'dead')[] = ['pending', 'processing', 'dead'];

export async function sampleBacklog(db: Kysely<Database>, cap: number): Promise<BacklogSample> {
  const counts = { pending: 0, processing: 0, dead: 0 };
  for (const status of SAMPLED) {
    const r = await db
      .selectFrom((eb) =>
        eb.selectFrom('capacity_outbox').select(sql`1`.as('x')).where('status', '=', status as OutboxStatus).limit(cap).as('capped'),
      )
      .select((eb) => eb.fn.countAll<string>().as('n'))
      .executeTakeFirstOrThrow();
    counts[status] = Number(r.n);
  }
  const oldest = await db
    .selectFrom('capacity_outbox')
    .select(sql<number>`extract(epoch FROM now() - next_attempt_at)::float8`.as('age'))
    .where('status', '=', 'pending')
    .where('next_attempt_at', '<=', sql<Date>`now()`)
    .orderBy('next_attempt_at')
    .limit(1)
    .executeTakeFirst();
  return { counts, oldestDueAgeSeconds: oldest ? Math.max(0, Number(oldest.age)) : 0 };
}
