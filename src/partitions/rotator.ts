import crypto from 'node:crypto';
import os from 'node:os';
import type { Kysely } from 'kysely';
import type { Database } from '../db/schema.ts';
import {
  createMonthlyPartition,
  defaultPartitionRows,
  ensureDefaultPartition,
  lockHolders,
  partitionReport,
  releaseMaintenanceLease,
  retirePartition,
  takeMaintenanceLease,
  withLockTimeout,
  type PartitionRow,
} from '../db/queries/partitions.ts';
import type { Logger } from '../kernel/log.ts';
import { addMonthsUtc, isoDate, startOfMonthUtc } from './months.ts';
import { loadRegistry, qualifiedName, type ManagedTable } from './registry.ts';

/**
 * One rotator at a time across every replica: a lease row (migration 0011), not a session
 * advisory lock, so it holds through a transaction-mode pooler. The lease outlives any
 * sane run and is renewed before each table; a replica that dies mid-run frees it on expiry.
 */
export const ROTATION_LEASE = 'partition_rotation';
const ROTATION_LEASE_TTL_MS = 10 * 60_000;

/** How long one DDL statement may wait for its lock (producers queue behind a waiting one). */
export const DEFAULT_PARTITION_LOCK_TIMEOUT_MS = 1000;

export interface RotatorOptions {
  /** lock_timeout of every DDL transaction (default 1000 ms). */
  lockTimeoutMs?: number;
  /** Tries per DDL step within one run before it is deferred to the next run (default 3). */
  lockAttempts?: number;
}

export interface TableRotation {
  table: string;
  /** Statements executed (or, on a dry run, planned), in order. */
  statements: string[];
  created: string[];
  /** Rows found in the default partition, by month, before this run moved them. */
  defaultRows: { month: string; rows: number }[];
  retired: string[];
  /** Partitions past retention that still hold undelivered events. */
  blocked: { partition: string; blocking: Record<string, number> }[];
  errors: { step: string; message: string }[];
  /** DDL steps that could not take their lock in time; nothing changed, retried next run. */
  deferred: { step: string; message: string }[];
  /** End of the last monthly partition after this run. */
  lastPartitionEnd: Date | null;
  runwaySeconds: number | null;
}

export interface RotationReport {
  /** False when another replica held the rotation lock; nothing was done. */
  ran: boolean;
  dryRun: boolean;
  at: Date;
  tables: TableRotation[];
}

export function rotationFailed(report: RotationReport): boolean {
  return report.tables.some((t) => t.errors.length > 0 || t.blocked.length > 0);
}

export function rotationDeferred(report: RotationReport): boolean {
  return report.tables.some((t) => t.deferred.length > 0);
}

const LOCK_CONFLICT = new Set(['55P03', '40P01']); // lock_not_available, deadlock_detected

/**
 * Keeps monthly partitions `premake` months ahead, empties the default partition into
 * proper partitions, and retires partitions past retention unless they hold undelivered
 * events. Idempotent; `now` is injected so tests control the calendar.
 */
export class PartitionRotator {
  readonly #db: Kysely<Database>;
  readonly #log: Logger;
  readonly #now: () => Date;
  readonly #lockTimeoutMs: number;
  readonly #lockAttempts: number;
  /** Names this rotator in the lease row (unique per instance, readable by an operator). */
  readonly #holder = `${os.hostname()}:${process.pid}:${crypto.randomBytes(4).toString('hex')}`;

  constructor(db: Kysely<Database>, log: Logger, now: () => Date = () => new Date(), opts: RotatorOptions = {}) {
    this.#db = db;
    this.#log = log.child({ component: 'partition-rotator' });
    this.#now = now;
    this.#lockTimeoutMs = opts.lockTimeoutMs ?? DEFAULT_PARTITION_LOCK_TIMEOUT_MS;
    this.#lockAttempts = opts.lockAttempts ?? 3;
  }

  async runOnce(opts: { table?: string; dryRun?: boolean } = {}): Promise<RotationReport> {
    const dryRun = opts.dryRun ?? false;
    const at = this.#now();
    const holder = this.#holder;
    if (!(await takeMaintenanceLease(this.#db, ROTATION_LEASE, holder, ROTATION_LEASE_TTL_MS))) {
      this.#log.info('another replica is rotating partitions; skipping this run');
      return { ran: false, dryRun, at, tables: [] };
    }
    try {
      const tables = await loadRegistry(this.#db, opts.table);
      const results: TableRotation[] = [];
      for (const t of tables) {
        if (!(await takeMaintenanceLease(this.#db, ROTATION_LEASE, holder, ROTATION_LEASE_TTL_MS))) {
          this.#log.warn({ table: qualifiedName(t) }, 'rotation lease lost to another replica (this run outlived it); stopping here');
          break;
        }
        results.push(await this.#rotateTable(this.#db, t, at, dryRun));
      }
      return { ran: true, dryRun, at, tables: results };
    } finally {
      await releaseMaintenanceLease(this.#db, ROTATION_LEASE, holder).catch((err: unknown) =>
        this.#log.warn({ err }, 'could not release the rotation lease; it expires on its own'),
      );
    }
  }

  async #rotateTable(db: Kysely<Database>, t: ManagedTable, now: Date, dryRun: boolean): Promise<TableRotation> {
    const table = qualifiedName(t);
    const out: TableRotation = {
      table,
      statements: [],
      created: [],
      defaultRows: [],
      retired: [],
      blocked: [],
      errors: [],
      deferred: [],
      lastPartitionEnd: null,
      runwaySeconds: null,
    };
    const step = async (name: string, fn: () => Promise<void>) => {
      try {
        await fn();
      } catch (err) {
        if (LOCK_CONFLICT.has((err as { code?: string }).code ?? '')) {
          const holders = await lockHolders(db, table).catch(() => []);
          const by = holders.length === 0 ? '' : `; held by ${holders.slice(0, 5).map((h) => `pid ${h.pid} (${h.mode} on ${h.relation}${h.xact_seconds === null ? '' : `, transaction open ${h.xact_seconds}s`})`).join(', ')}`;
          const message = `could not take its lock within ${this.#lockTimeoutMs} ms in ${this.#lockAttempts} tries${by}; nothing changed, retried on the next run`;
          out.deferred.push({ step: name, message });
          this.#log.warn({ table, step: name, holders }, `partition rotation step deferred: ${message}`);
          return;
        }
        out.errors.push({ step: name, message: (err as Error).message });
        this.#log.error({ table, step: name, err }, 'partition rotation step failed');
      }
    };
    // DDL in its own short-lock transaction; a lock conflict is retried a few times, briefly,
    // letting queued producers through in between, before the step is deferred.
    const ddl = async <T>(fn: (trx: Kysely<Database>) => Promise<T>): Promise<T> => {
      for (let attempt = 1; ; attempt++) {
        try {
          return await withLockTimeout(db, this.#lockTimeoutMs, fn);
        } catch (err) {
          if (attempt >= this.#lockAttempts || !LOCK_CONFLICT.has((err as { code?: string }).code ?? '')) throw err;
          await new Promise((r) => setTimeout(r, 100 * attempt + Math.random() * 200));
        }
      }
    };

    await step('ensure default partition', async () => {
      out.statements.push(...(await ddl((trx) => ensureDefaultPartition(trx, table, dryRun))));
    });
    await step('inspect default partition', async () => {
      out.defaultRows = await defaultPartitionRows(db, table);
    });
    if (out.defaultRows.length > 0) {
      this.#log.warn({ table, defaultRows: out.defaultRows }, 'rows found in the default partition; moving them into monthly partitions');
    }

    // Premake: this month through this month + premake, plus any month stranded in the default.
    const first = startOfMonthUtc(now);
    const months = new Set<string>();
    for (let k = 0; k <= t.premake_months; k++) months.add(isoDate(addMonthsUtc(first, k)));
    for (const d of out.defaultRows) months.add(d.month);
    for (const month of [...months].sort()) {
      await step(`create partition for ${month}`, async () => {
        const stmts = await ddl((trx) => createMonthlyPartition(trx, table, month, dryRun));
        if (stmts.length > 0) {
          out.statements.push(...stmts);
          out.created.push(month);
        }
      });
    }

    // Retention: partitions wholly before the window.
    let report: PartitionRow[] = [];
    await step('list partitions', async () => {
      report = await partitionReport(db, table);
    });
    const cutoff = addMonthsUtc(first, -t.retention_months);
    for (const p of report.filter((r) => !r.is_default && r.upper_bound && r.upper_bound <= cutoff)) {
      await step(`retire ${p.partition_name}`, async () => {
        const r = await ddl((trx) => retirePartition(trx, table, p.partition_name, now, dryRun));
        if (r.result === 'blocked') {
          out.blocked.push({ partition: p.partition_name, blocking: r.blocking ?? {} });
          this.#log.error({ table, partition: p.partition_name, blocking: r.blocking }, 'retention blocked: partition past its window still holds undelivered events');
        } else if (r.result === 'retired' || r.result === 'planned') {
          out.statements.push(...(r.statements ?? []));
          out.retired.push(p.partition_name);
        }
      });
    }

    await step('measure runway', async () => {
      const after = dryRun ? report : await partitionReport(db, table);
      const ends = after.filter((r) => !r.is_default && r.upper_bound).map((r) => r.upper_bound!.getTime());
      if (dryRun) for (const m of out.created) ends.push(addMonthsUtc(new Date(`${m}T00:00:00Z`), 1).getTime());
      if (ends.length > 0) {
        out.lastPartitionEnd = new Date(Math.max(...ends));
        out.runwaySeconds = (out.lastPartitionEnd.getTime() - now.getTime()) / 1000;
      }
    });
    if (!dryRun && (out.created.length || out.retired.length)) {
      this.#log.info({ table, created: out.created, retired: out.retired }, 'partitions rotated');
    }
    return out;
  }
}
