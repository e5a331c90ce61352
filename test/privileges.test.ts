import { describe, expect } from 'vitest';
import { it } from './support/fixtures.ts';

// app_background must hold exactly the documented privileges (README "Deploying",
// runbooks/rls.md): a new grant is a decision, made here on purpose.

const DOCUMENTED = {
  tables: [
    'outbox_dispatcher.capacity_outbox_ordering_blocked: SELECT', // `events blocked` and the blocked-keys gauge (ADR 0011)
    'outbox_dispatcher.managed_partitions: SELECT',
    'outbox_dispatcher.operator_audit: SELECT', // `audit`; written only through operator_audit_begin/add (ADR 0014)
    'outbox_dispatcher.replica_sink_status: SELECT', // `sinks status`: each replica's circuit state and sends in flight (migration 0016)
    'outbox_dispatcher.schema_migrations: SELECT',
    'outbox_dispatcher.sink_parked: SELECT', // `events show`, `sinks status` (ADR 0014)
    'outbox_dispatcher.sink_pauses: SELECT', // each replica polls the pauses (ADR 0014)
    'public.capacity_outbox: SELECT',
    'public.tenant_context_exempt_roles: SELECT', // granted to PUBLIC
  ],
  columns: ['attempts', 'dispatched_at', 'last_error', 'locked_by', 'locked_until', 'next_attempt_at', 'status'].map((c) => `public.capacity_outbox.${c}: UPDATE`),
  functions: [
    'outbox_dispatcher.capacity_outbox_notify',
    'outbox_dispatcher.capacity_outbox_ordering_place', // ordering key lock + sequence; only from the insert trigger, own tenant only (ADR 0011)
    'outbox_dispatcher.capacity_outbox_ordering_settle_pending', // the ordering settler (ADR 0011)
    'outbox_dispatcher.capacity_outbox_ordering_settle_completed', // a completion settles its keyed events' keys in one go (migration 0017, ADR 0011; the previous release's)
    'outbox_dispatcher.capacity_outbox_ordering_settle_keys', // the same from the keys the completion returned (migration 0019)
    'outbox_dispatcher.capacity_outbox_ordering_skip', // route onDeadHead = skip and `events skip` (ADR 0011)
    'outbox_dispatcher.capacity_outbox_release_claimed_keys', // the claim frees its batch's dedupe keys; only keys of events no longer pending (migration 0012)
    'outbox_dispatcher.capacity_outbox_take_key', // dedupe key for retries/replays; only from a trigger, own tenant only (ADR 0001 revision)
    'outbox_dispatcher.claim_batch', // SECURITY INVOKER: RLS and column grants still apply (ADR 0006)
    'outbox_dispatcher.maintenance_lease_release', // the rotation lease (migration 0011, ADR 0010)
    'outbox_dispatcher.maintenance_lease_take',
    'outbox_dispatcher.monthly_partition_name', // pure naming function, executable by PUBLIC
    'outbox_dispatcher.operator_audit_add', // the audit trail: who is taken from the session (ADR 0014)
    'outbox_dispatcher.operator_audit_begin',
    'outbox_dispatcher.partition_create',
    'outbox_dispatcher.partition_default_rows',
    'outbox_dispatcher.partition_ensure_default',
    'outbox_dispatcher.partition_report',
    'outbox_dispatcher.partition_retire',
    'outbox_dispatcher.replica_sink_status_report', // each replica writes only its own report through it (migration 0016)
    'outbox_dispatcher.sink_park', // a worker parks a claimed event of a paused sink, only while the pause row exists (ADR 0014)
    'outbox_dispatcher.sink_parked_horizon', // a constant
    'outbox_dispatcher.sink_pause', // `sinks pause`, audited in the same transaction (ADR 0014)
    'outbox_dispatcher.sink_resume', // `sinks resume`, audited in the same transaction (ADR 0014)
    'outbox_dispatcher.sink_unpark_orphans', // each replica's poll: parked events whose pause is gone (ADR 0014)
    'outbox_dispatcher.uuid_v7', // the id column's default (time-ordered ids, migration 0012); also granted to app_producer
    'public.current_restaurant_id',
    'public.require_restaurant_context',
    'public.set_restaurant_context',
  ],
};

describe('app_background', () => {
  it('has no attribute beyond NOLOGIN member role', async ({ fileDb: db }) => {
    const { rows } = await db.query(
      "SELECT rolsuper, rolbypassrls, rolcreatedb, rolcreaterole, rolreplication, rolcanlogin FROM pg_roles WHERE rolname = 'app_background'",
    );
    expect(rows[0]).toEqual({ rolsuper: false, rolbypassrls: false, rolcreatedb: false, rolcreaterole: false, rolreplication: false, rolcanlogin: false });
    const member = await db.query(`SELECT r.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid WHERE m.member = 'app_background'::regrole`);
    expect(member.rows).toEqual([]); // it inherits from nobody
  });

  it('holds exactly the documented grants on tables, columns and functions', async ({ fileDb: db }) => {
    const tables = await db.query<{ p: string }>(
      `SELECT n.nspname || '.' || c.relname || ': ' || a.privilege_type AS p
       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, aclexplode(c.relacl) a
       WHERE n.nspname IN ('public', 'outbox_dispatcher') AND c.relkind IN ('r', 'p', 'v', 'S')
         AND (a.grantee = 'app_background'::regrole OR a.grantee = 0)
       ORDER BY 1`,
    );
    expect(tables.rows.map((r) => r.p)).toEqual(DOCUMENTED.tables);
    const columns = await db.query<{ p: string }>(
      `SELECT n.nspname || '.' || c.relname || '.' || att.attname || ': ' || a.privilege_type AS p
       FROM pg_attribute att JOIN pg_class c ON c.oid = att.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace, aclexplode(att.attacl) a
       WHERE n.nspname IN ('public', 'outbox_dispatcher') AND a.grantee = 'app_background'::regrole
       ORDER BY 1`,
    );
    expect(columns.rows.map((r) => r.p)).toEqual(DOCUMENTED.columns);
    const functions = await db.query<{ f: string }>(
      `SELECT DISTINCT n.nspname || '.' || p.proname AS f
       FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
       WHERE n.nspname IN ('public', 'outbox_dispatcher') AND has_function_privilege('app_background', p.oid, 'EXECUTE')
         AND p.proname NOT LIKE 'adopt_sync_%'
       ORDER BY 1`,
    );
    expect(functions.rows.map((r) => r.f)).toEqual([...DOCUMENTED.functions].sort());
  });
});
