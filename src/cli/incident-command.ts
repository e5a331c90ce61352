import { EXIT } from '../kernel/exit-codes.ts';
import * as incidents from '../incidents/scenarios.ts';
import type pg from 'pg';
import { auditAddClient, auditBeginClient } from '../db/queries/audit.ts';
import { actorFor } from './actor.ts';
import { cliSettings, withClient } from './connection.ts';
import { UsageError, parsePositiveInt, parseTypePattern, parseUuid } from './parse.ts';

export const SCENARIOS = ['sink-outage', 'poison', 'backlog', 'dispatcher-down', 'runway-low', 'claim-latency'] as const;
export type Scenario = (typeof SCENARIOS)[number];

export interface IncidentOptions {
  count?: string;
  tenant?: string;
  type?: string;
  age?: string;
  duration?: string;
  hold?: string;
  listen?: string;
  status?: string;
  pid?: string;
  databaseUrl?: string;
}

const DEFAULT_TENANT = '00000000-0000-4000-8000-00000000dead';

/** `outbox-dispatcher incident <scenario>`: provoke one alert's condition on staging. */
export async function incidentCommand(scenario: string, opts: IncidentOptions, env: NodeJS.ProcessEnv = process.env): Promise<number> {
  if (!(SCENARIOS as readonly string[]).includes(scenario)) throw new UsageError(`unknown scenario ${JSON.stringify(scenario)}; one of: ${SCENARIOS.join(', ')}`);
  const out = { say: (line: string) => process.stdout.write(`${line}\n`) };
  const stop = new AbortController();
  process.once('SIGINT', () => stop.abort());
  const durationMs = parsePositiveInt('--duration', opts.duration ?? '300', 86_400) * 1000;
  const tenant = parseUuid('--tenant', opts.tenant ?? DEFAULT_TENANT);
  const count = parsePositiveInt('--count', opts.count ?? '50', 1_000_000);
  const type = parseTypePattern('--type', opts.type ?? `incident.${scenario}`);

  if (scenario === 'sink-outage') {
    const [host, port] = (opts.listen ?? '127.0.0.1:18080').split(':');
    await incidents.sinkOutage(
      { host: host!, port: parsePositiveInt('--listen port', port ?? '', 65_535), status: parsePositiveInt('--status', opts.status ?? '503', 599), durationMs },
      out,
      stop.signal,
    );
    return EXIT.OK;
  }
  if (scenario === 'dispatcher-down') {
    if (!opts.pid) throw new UsageError('dispatcher-down needs --pid <pid of a dispatcher on this host>');
    await incidents.dispatcherDown({ pid: parsePositiveInt('--pid', opts.pid, 4_194_304), durationMs }, out, stop.signal);
    return EXIT.OK;
  }

  const { config, log } = cliSettings(env);
  // Poison goes through the producer path; the others need the table owner.
  const url = opts.databaseUrl ?? (scenario === 'poison' ? undefined : config.migrationDatabaseUrl);
  await withClient(config, log, { as: 'superuser', url, applicationName: `outbox-incident-${scenario}` }, async (client) => {
    switch (scenario as Scenario) {
      case 'poison':
        await incidents.poisonEvents(client, { tenant, count, type }, out);
        break;
      case 'backlog': {
        const ageSeconds = parsePositiveInt('--age', opts.age ?? '3600', 31_536_000);
        await audited(client, 'incident.backlog', { tenant, count, type, ageSeconds }, env, () => incidents.backlogSurge(client, { tenant, count, type, ageSeconds }, out));
        break;
      }
      case 'claim-latency':
        await incidents.claimLatency(client, { durationMs, holdMs: parsePositiveInt('--hold', opts.hold ?? '50', 10_000) }, out, stop.signal);
        break;
      case 'runway-low':
        await audited(client, 'incident.runway-low', {}, env, async () => (await incidents.runwayLow(client, out)).length);
        break;
    }
  });
  return EXIT.OK;
}

/**
 * Incidents that change events or partitions are operator actions like any other: recorded in
 * the audit trail (ADR 0014) with the rows they inserted or partitions they dropped. (poison
 * runs as a producer, whose login holds no audit functions; its events carry its type.)
 */
async function audited(client: pg.ClientBase, action: string, filter: Record<string, unknown>, env: NodeJS.ProcessEnv, work: () => Promise<number>): Promise<void> {
  const id = await auditBeginClient(client, action, actorFor(action.replace('.', ' '), env), filter);
  try {
    const rows = await work();
    await auditAddClient(client, id, rows, 'done');
  } catch (err) {
    await auditAddClient(client, id, 0, `failed: ${(err as Error).message}`).catch(() => undefined);
    throw err;
  }
}
