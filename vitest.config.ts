import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Child processes (redis-server, the daemon) and signals behave more
    // predictably in forked workers than in worker threads.
    pool: 'forks',
    // Vitest 4+ moved poolOptions.*.maxForks to this top-level option.
    maxWorkers: 2,
    testTimeout: 60_000,
    hookTimeout: 60_000,
    reporters: ['default'],
  },
});
