import type { ColumnType, Generated } from 'kysely';

// Mirrors migrations/*.sql; keep the two in step.

export const OUTBOX_STATUSES = ['pending', 'processing', 'done', 'dead'] as const;
export type OutboxStatus = (typeof OUTBOX_STATUSES)[number];

type Timestamp = ColumnType<Date, Date | string, Date | string>;

export interface CapacityOutboxTable {
  id: Generated<string>;
  restaurant_id: string;
  event_type: string;
  payload: ColumnType<unknown, string | undefined, string>;
  dedupe_key: string | null;
  idempotency_key: string | null;
  /** Producer headers (migration 0009): an object of strings, or null. */
  headers: ColumnType<unknown, string | null | undefined, string | null>;
  status: Generated<OutboxStatus>;
  attempts: Generated<number>;
  next_attempt_at: ColumnType<Date, Date | string | undefined, Date | string>;
  locked_by: string | null;
  locked_until: Timestamp | null;
  last_error: string | null;
  created_at: ColumnType<Date, Date | string | undefined, never>;
  dispatched_at: Timestamp | null;
  /** Producer contract (migration 0010): events of one (restaurant_id, ordering_key) go out one at a time, in order. */
  ordering_key: string | null;
  /** Assigned by the insert trigger after the key's lock: per key, commit order. */
  ordering_seq: ColumnType<string | null, never, never>;
}

export interface OrderingKeysTable {
  restaurant_id: string;
  ordering_key: string;
}

export interface OrderingBlockedTable {
  restaurant_id: string;
  ordering_key: string;
  event_id: string;
  event_created_at: Date;
  blocked_since: Date;
}

export interface OrderingUnsettledTable {
  restaurant_id: string;
  ordering_key: string;
  since: Date;
}

export interface ActiveKeysTable {
  restaurant_id: string;
  event_type: string;
  dedupe_key: string;
  idempotency_key: string;
  event_id: string;
  event_created_at: Date;
}

export interface SchemaMigrationsTable {
  version: string;
  name: string;
  checksum: string;
  applied_at: Generated<Date>;
}

export interface ManagedPartitionsTable {
  table_schema: string;
  table_name: string;
  partition_column: string;
  partition_interval: 'monthly';
  premake_months: number;
  retention_months: number;
  retention_mode: 'drop' | 'detach';
  status_column: string | null;
  blocking_statuses: string[];
}

/** Migration 0013: operator actions (written only through operator_audit_begin/add). */
export interface OperatorAuditTable {
  id: Generated<string>;
  at: Generated<Date>;
  login_role: string;
  work_role: string;
  os_user: string | null;
  action: string;
  command: string;
  filter: ColumnType<unknown, string, string>;
  rows: Generated<string>;
  finished_at: Date | null;
  result: string | null;
}

/** Migration 0013: a row pauses the sink on every replica. */
export interface SinkPausesTable {
  sink: string;
  paused_at: Generated<Date>;
  login_role: string;
  os_user: string | null;
  reason: string;
}

/** Migration 0013: claimed events of a paused sink, given back and set aside until resume. */
export interface SinkParkedTable {
  event_id: string;
  event_created_at: Date;
  sink: string;
  parked_at: Generated<Date>;
}

export interface Database {
  capacity_outbox: CapacityOutboxTable;
  'outbox_dispatcher.capacity_outbox_active_keys': ActiveKeysTable;
  'outbox_dispatcher.capacity_outbox_ordering_keys': OrderingKeysTable;
  'outbox_dispatcher.capacity_outbox_ordering_blocked': OrderingBlockedTable;
  'outbox_dispatcher.capacity_outbox_ordering_unsettled': OrderingUnsettledTable;
  'outbox_dispatcher.schema_migrations': SchemaMigrationsTable;
  'outbox_dispatcher.managed_partitions': ManagedPartitionsTable;
  'outbox_dispatcher.operator_audit': OperatorAuditTable;
  'outbox_dispatcher.sink_pauses': SinkPausesTable;
  'outbox_dispatcher.sink_parked': SinkParkedTable;
}
