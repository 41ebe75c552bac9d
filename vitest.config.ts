import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    pool: 'forks',
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // tests start real servers and worker threads; two files at a time suits the 2-core machines we run on
    maxWorkers: 2,
  },
});
