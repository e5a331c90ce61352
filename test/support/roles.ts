import { inject } from 'vitest';

declare module 'vitest' {
  export interface ProvidedContext {
    testRoles: TestRoles;
  }
}

export interface TestRoles {
  /** Login role in app_background (the daemon's login). */
  worker: string;
  /** Login role in app_producer (a producer's login). */
  producer: string;
  password: string;
}

/**
 * The login roles of one `npm test` run: named with the run id, with a random password,
 * created by the global setup and dropped by its teardown, so runs sharing a server never
 * share (or leave behind) a login. Never superusers.
 */
export function testRolesFor(runId: string, password: string): TestRoles {
  if (!/^[a-z0-9_]{1,40}$/.test(runId)) throw new Error(`bad run id ${runId}`);
  return { worker: `outbox_test_worker_${runId}`, producer: `outbox_test_producer_${runId}`, password };
}

/** This run's login roles, for test files (read from the global setup when first used). */
export const TEST_ROLES: TestRoles = {
  get worker() {
    return inject('testRoles').worker;
  },
  get producer() {
    return inject('testRoles').producer;
  },
  get password() {
    return inject('testRoles').password;
  },
};
