import type { Kysely } from 'kysely';
import { defaultPartitionRows, partitionReport, type PartitionRow } from '../db/queries/partitions.ts';
import type { Database } from '../db/schema.ts';
import { addMonthsUtc, startOfMonthUtc } from './months.ts';
import { loadRegistry, qualifiedName, type ManagedTable } from './registry.ts';

export type RetentionAction = 'keep' | 'retire' | 'blocked' | 'default';

export interface PartitionStatusRow extends PartitionRow {
  /** pending + processing rows. */
  active_rows: number;
  retention: RetentionAction;
}

export interface TableStatus {
  table: string;
  config: ManagedTable;
  partitions: PartitionStatusRow[];
  lastPartitionEnd: Date | null;
  runwaySeconds: number | null;
  defaultRows: number;
  retentionCutoff: Date;
}

/** What is there and what retention would do, without changing anything. */
export async function partitionStatus(db: Kysely<Database>, now: Date, only?: string): Promise<TableStatus[]> {
  const out: TableStatus[] = [];
  for (const t of await loadRegistry(db, only)) {
    const table = qualifiedName(t);
    const report = await partitionReport(db, table);
    const cutoff = addMonthsUtc(startOfMonthUtc(now), -t.retention_months);
    const partitions = report.map((p): PartitionStatusRow => {
      const blockingRows = Object.values(p.blocking).reduce((a, b) => a + Number(b), 0);
      const retention: RetentionAction = p.is_default
        ? 'default'
        : p.upper_bound && p.upper_bound <= cutoff
          ? blockingRows > 0
            ? 'blocked'
            : 'retire'
          : 'keep';
      return { ...p, active_rows: Number(p.blocking.pending ?? 0) + Number(p.blocking.processing ?? 0), retention };
    });
    const ends = report.filter((r) => !r.is_default && r.upper_bound).map((r) => r.upper_bound!.getTime());
    const lastPartitionEnd = ends.length ? new Date(Math.max(...ends)) : null;
    const defaults = await defaultPartitionRows(db, table);
    out.push({
      table,
      config: t,
      partitions,
      lastPartitionEnd,
      runwaySeconds: lastPartitionEnd ? (lastPartitionEnd.getTime() - now.getTime()) / 1000 : null,
      defaultRows: defaults.reduce((a, d) => a + d.rows, 0),
      retentionCutoff: cutoff,
    });
  }
  return out;
}
