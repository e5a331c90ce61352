/** Login roles the test setup creates (cluster-wide; never superusers). */
export const TEST_ROLES = {
  worker: 'outbox_test_worker',
  producer: 'outbox_test_producer',
  password: 'outbox-test-password',
} as const;
