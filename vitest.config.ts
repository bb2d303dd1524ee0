import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 120_000,
    // Deadlines for waiting on Docker (image builds on a cold machine), not speed checks.
    hookTimeout: 900_000,
    pool: 'forks',
    fileParallelism: false,
  },
});
