import pg from 'pg';

export interface PlanNode {
  'Node Type': string;
  'Index Name'?: string;
  'Relation Name'?: string;
  'Actual Rows'?: number;
  'Actual Loops'?: number;
  'Rows Removed by Filter'?: number;
  'Shared Hit Blocks'?: number;
  'Shared Read Blocks'?: number;
  'Subplan Name'?: string;
  Plans?: PlanNode[];
}

export interface NestedPlan {
  queryText: string;
  plan: PlanNode;
}

/**
 * Runs `text` as `role` (a login the daemon would use: RLS applies) in a rolled-back
 * transaction and returns the EXPLAIN (ANALYZE, BUFFERS) plans of every statement it ran,
 * nested ones included: auto_explain reports them as NOTICEs. This is how the plan a
 * function really executes is seen (a plain EXPLAIN shows only "Function Scan").
 */
export async function explainNested(adminUrl: string, role: string, text: string, values: readonly unknown[] = []): Promise<NestedPlan[]> {
  const c = new pg.Client({ connectionString: adminUrl });
  const plans: NestedPlan[] = [];
  c.on('notice', (n) => {
    const m = /^duration: [\d.]+ ms\s+plan:\s*([\s\S]*)$/.exec(n.message ?? '');
    if (!m) return;
    const parsed = JSON.parse(m[1]!) as { 'Query Text': string; Plan: PlanNode };
    plans.push({ queryText: parsed['Query Text'], plan: parsed.Plan });
  });
  await c.connect();
  try {
    await c.query("LOAD 'auto_explain'");
    for (const s of [
      'auto_explain.log_min_duration = 0',
      'auto_explain.log_analyze = on',
      'auto_explain.log_buffers = on',
      'auto_explain.log_timing = off',
      'auto_explain.log_nested_statements = on',
      'auto_explain.log_format = json',
      'auto_explain.log_level = notice',
      'client_min_messages = notice',
    ]) await c.query(`SET ${s}`);
    await c.query('BEGIN');
    await c.query(`SET LOCAL ROLE ${role}`);
    await c.query(text, values as unknown[]);
    await c.query('ROLLBACK');
  } finally {
    await c.end();
  }
  return plans;
}

export function walk(node: PlanNode, visit: (n: PlanNode) => void): void {
  visit(node);
  for (const child of node.Plans ?? []) walk(child, visit);
}

/** "Limit > LockRows > Merge Append > Index Scan (…)" with repeated siblings folded. */
export function planShape(node: PlanNode): string {
  const out: string[] = [];
  walk(node, (n) => {
    const label = n['Index Name'] ? `${n['Node Type']} (${n['Index Name'].replace(/^capacity_outbox_(p\d{4}_\d{2}|default)_/, '…_')})` : n['Node Type'];
    if (!out.includes(label)) out.push(label);
  });
  return out.join(' > ');
}
