// Opt-in (BENCH_SECTIONS=hotclaim): would a HOT claim pay? Issue 9 asked to try "a claim that
// is a HOT update (lease columns outside every index)". Two bare loops drain the same cold
// burst (2 connections, batch 500, no worker), alternating, at fillfactor 100 (the table as
// shipped) and 80 (room on every page for a new row version):
// - two-statement: the claim moves the row to `processing` (status and next_attempt_at change,
//   so the dispatch index gets a new entry), then `done`: the shipped design's two writes.
// - HOT claim: the claim writes only attempts and the lease columns, which no index covers, so
//   it can be a heap-only update where the page has room; the row stays `pending` in the
//   dispatch index and every claim's walk passes over the leased rows ahead of it (the lease
//   is checked in the heap). Then `done`, as above.
// Neither frees dedupe keys (the release trigger stands aside in both), so the only difference
// is the claim's write. docs/performance.md (seventh session) has the measured answer.
import { createBenchDb, partitionsOf, round, seedColdBurst } from '../lib.ts';
import { BARE_CLAIM_TO_PROCESSING, claimThenDone, type DrainResult, measureLoops } from './drain.ts';

export interface HotClaimResult extends DrainResult {
  fillfactor: number;
  /** Share of all updates (claims and completions) that were heap-only. */
  hotShare: number;
}

const CLAIM_HOT = `WITH c AS (SELECT id, created_at FROM capacity_outbox
                WHERE status = 'pending' AND next_attempt_at <= now() AND (locked_until IS NULL OR locked_until < now())
                ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED)
  UPDATE capacity_outbox o SET attempts = o.attempts + 1, locked_by = $2, locked_until = now() + interval '30 s'
  FROM c WHERE o.id = c.id AND o.created_at = c.created_at RETURNING o.id, o.created_at::text AS k`;

async function hotClaimLoop(rootUrl: string, events: number, hot: boolean, fillfactor: number): Promise<HotClaimResult> {
  const db = await createBenchDb(rootUrl, `hot${hot ? 1 : 0}ff${fillfactor}`);
  try {
    for (const p of await partitionsOf(db.admin)) await db.admin.query(`ALTER TABLE ${p} SET (fillfactor = ${fillfactor})`);
    await seedColdBurst(db.admin, events);
    await db.admin.query('VACUUM ANALYZE capacity_outbox');
    const claim = hot ? CLAIM_HOT : BARE_CLAIM_TO_PROCESSING;
    const m = await measureLoops(db, events, 2, (c, i) => claimThenDone(c, claim, 500, `loop-${i}`),
      (c) => c.query('SET outbox_dispatcher.claim_frees_keys = on'));
    const st = (await db.admin.query<{ upd: string; hot: string }>(
      "SELECT sum(n_tup_upd) AS upd, sum(n_tup_hot_upd) AS hot FROM pg_stat_user_tables WHERE relname LIKE 'capacity_outbox_p%'",
    )).rows[0]!;
    const left = Number((await db.admin.query<{ n: string }>("SELECT count(*) AS n FROM capacity_outbox WHERE status <> 'done'")).rows[0]!.n);
    if (left !== 0) throw new Error(`${left} events not done`);
    return {
      name: `${hot ? 'HOT claim' : 'two-statement'}, fillfactor ${fillfactor}`,
      fillfactor,
      ...m,
      hotShare: round(Number(st.hot) / Math.max(1, Number(st.upd)), 3),
    };
  } finally {
    await db.drop();
  }
}

/** `rounds` rounds of the four loops, the order rotated each round. */
export async function hotClaimLoops(rootUrl: string, events: number, rounds: number, log: (s: string) => void): Promise<HotClaimResult[]> {
  const cases: [boolean, number][] = [[false, 100], [true, 100], [true, 80], [false, 80]];
  const out: HotClaimResult[] = [];
  for (let r = 0; r < rounds; r++) {
    for (let i = 0; i < cases.length; i++) {
      const [hot, ff] = cases[(i + r) % cases.length]!;
      const x = await hotClaimLoop(rootUrl, events, hot, ff);
      log(`  round ${r + 1}: ${JSON.stringify(x)}`);
      out.push(x);
    }
  }
  return out;
}
