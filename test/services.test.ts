import { describe, expect } from 'vitest';
import type { Service } from '../src/kernel/service.ts';
import type { Daemon } from '../src/lifecycle/daemon.ts';
import { type TestDatabase } from './support/db.ts';
import { createDaemon } from './support/daemon.ts';
import { it } from './support/fixtures.ts';

// The Service contract (src/kernel/service.ts), run against every service the daemon
// composes, as River's startstoptest does: start and stop idempotent, stop before start,
// stop while running, concurrent stops, and start and stop racing. Each case gets a fresh
// daemon; the service under test is driven alone, then the daemon stops the rest.

// Every optional service on, so each is in the list.
const ENV = { PARTITION_ROTATION: 'true', OUTBOX_BACKLOG_SAMPLE_MS: '50' };

/** How long one call may take before the contract counts as broken (stops are bounded at 5 s). */
const BOUND_MS = 8000;

async function settles(work: Promise<unknown>): Promise<'settled' | 'hung'> {
  let timer: NodeJS.Timeout | undefined;
  const hung = new Promise<'hung'>((resolve) => (timer = setTimeout(() => resolve('hung'), BOUND_MS)));
  try {
    return await Promise.race([work.then(() => 'settled' as const), hung]);
  } finally {
    clearTimeout(timer);
  }
}

async function withService(db: TestDatabase, name: string, drive: (s: Service) => Promise<void>): Promise<void> {
  const daemon: Daemon = createDaemon(db, { env: ENV });
  try {
    const service = daemon.services.find((s) => s.name === name);
    expect(service, name).toBeDefined();
    await drive(service!);
  } finally {
    await daemon.stop();
  }
}

const NAMES = [
  'database pool',
  'ops-server',
  'tracer provider',
  'sinks',
  'completer',
  'sink-pauses',
  'replica-status',
  'dispatcher',
  'lease-rescuer',
  'ordering-settler',
  'notify-listener',
  'partition-maintenance',
  'partition-sampler',
  'backlog-sampler',
];

describe('the daemon composes', () => {
  it('every service in the list, each once, in start order', async ({ fileDb: db }) => {
    const daemon = createDaemon(db, { env: ENV });
    try {
      expect(daemon.services.map((s) => s.name)).toEqual(NAMES);
    } finally {
      await daemon.stop();
    }
  });
});

describe.each(NAMES)('service %s', (name) => {
  it('start and stop are idempotent', async ({ fileDb: db }) => {
    await withService(db, name, async (s) => {
      expect(await settles(s.start())).toBe('settled');
      expect(await settles(s.start())).toBe('settled');
      expect(await settles(s.stop())).toBe('settled');
      expect(await settles(s.stop())).toBe('settled');
    });
  });

  it('stop before start resolves, and a later start does not hang', async ({ fileDb: db }) => {
    await withService(db, name, async (s) => {
      expect(await settles(s.stop())).toBe('settled');
      expect(await settles(s.start())).toBe('settled');
      expect(await settles(s.stop())).toBe('settled');
    });
  });

  it('stop while running resolves', async ({ fileDb: db }) => {
    await withService(db, name, async (s) => {
      void s.start();
      expect(await settles(s.stop())).toBe('settled');
    });
  });

  it('concurrent stops all resolve', async ({ fileDb: db }) => {
    await withService(db, name, async (s) => {
      await s.start();
      expect(await settles(Promise.all(Array.from({ length: 5 }, () => s.stop())))).toBe('settled');
    });
  });

  it('racing starts and stops all resolve', async ({ fileDb: db }) => {
    await withService(db, name, async (s) => {
      const calls = Array.from({ length: 8 }, (_, i) => (i % 2 === 0 ? s.start() : s.stop()));
      expect(await settles(Promise.all(calls))).toBe('settled');
    });
  });
});
