import { defineConfig } from 'vitest/config';

// `npm run test:faults`: the fault-injection suite (owns its PostgreSQL; about two minutes).
export default defineConfig({
  test: {
    include: ['test/faults/**/*.test.ts'],
    pool: 'forks',
    testTimeout: 300_000,
    hookTimeout: 120_000,
  },
});
