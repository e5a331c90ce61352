import type { Kysely } from 'kysely';
import { z } from 'zod';
import { managedPartitionRows } from '../db/queries/partitions.ts';
import type { Database } from '../db/schema.ts';

// The registry lives in outbox_dispatcher.managed_partitions (migrations/0003), whose CHECK
// constraints already refuse hostile identifiers; this validates again before any name
// reaches a statement, so a registry edited around the constraint is refused too.

const IDENT = /^[a-z_][a-z0-9_]{0,62}$/;
const TABLE = /^[a-z_][a-z0-9_]{0,47}$/;

export const managedTableSchema = z.object({
  table_schema: z.string().regex(IDENT, 'invalid schema name'),
  table_name: z.string().regex(TABLE, 'invalid table name (lowercase letters, digits, _; at most 48)'),
  partition_column: z.string().regex(IDENT, 'invalid column name'),
  partition_interval: z.literal('monthly'),
  premake_months: z.number().int().min(1).max(36),
  retention_months: z.number().int().min(1).max(1200),
  retention_mode: z.enum(['drop', 'detach']),
  status_column: z.string().regex(IDENT, 'invalid column name').nullable(),
  blocking_statuses: z.array(z.string().max(64)),
});

export type ManagedTable = z.output<typeof managedTableSchema>;

export class RegistryError extends Error {
  override name = 'RegistryError';
}

export function qualifiedName(t: Pick<ManagedTable, 'table_schema' | 'table_name'>): string {
  return `${t.table_schema}.${t.table_name}`;
}

/** `name` or `schema.name`, validated (CLI --table). */
export function parseTableRef(ref: string): { table_schema: string; table_name: string } {
  const [a, b] = ref.includes('.') ? ref.split('.', 2) : ['public', ref];
  if (!a || !b || !IDENT.test(a) || !TABLE.test(b) || ref.split('.').length > 2) {
    throw new RegistryError(`invalid table name ${JSON.stringify(ref)}: expected name or schema.name (lowercase letters, digits, _)`);
  }
  return { table_schema: a, table_name: b };
}

export async function loadRegistry(db: Kysely<Database>, only?: string): Promise<ManagedTable[]> {
  const filter = only === undefined ? undefined : parseTableRef(only);
  const rows = await managedPartitionRows(db, filter);
  if (filter && rows.length === 0) throw new RegistryError(`table ${only} is not registered in outbox_dispatcher.managed_partitions`);
  return rows.map((row) => {
    const parsed = managedTableSchema.safeParse(row);
    if (!parsed.success) {
      throw new RegistryError(
        `refusing registry entry ${JSON.stringify(`${row.table_schema}.${row.table_name}`)}: ${parsed.error.issues[0]!.path.join('.')}: ${parsed.error.issues[0]!.message}`,
      );
    }
    return parsed.data;
  });
}
