import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { defineConfig } from 'vitest/config';

// The tests start hundreds of `node src/bin/agentd.ts` children (and the workers, forked from here,
// inherit this): Node's compile cache keeps the type-stripped, compiled modules between starts,
// which cuts the CPU of one start by half on a machine where CPU, not waiting, is the limit.
process.env['NODE_COMPILE_CACHE'] ??= join(tmpdir(), 'agentd-test-compile-cache');

/**
 * Files that measure how the daemon shares one CPU (a handler's time limit to the millisecond,
 * timer ticks between blocking handlers): they run alone, after the rest, so the suite's own
 * parallel files do not starve them.
 */
const CPU_TIMING = ['test/fault/bad-handler.test.ts', 'test/integration/dispatch-concurrency.test.ts'];

export default defineConfig({
  test: {
    // Child processes (redis-server, the daemon) and signals behave more
    // predictably in forked workers than in worker threads.
    pool: 'forks',
    testTimeout: 60_000,
    hookTimeout: 60_000,
    reporters: ['default'],
    projects: [
      {
        extends: true,
        test: {
          name: 'suite',
          include: ['test/**/*.test.ts'],
          exclude: CPU_TIMING,
          // Most files wait on timers and child processes, not on the CPU: four at once on two
          // cores (Vitest 4+ moved poolOptions.*.maxForks to this option).
          maxWorkers: 4,
          sequence: { groupOrder: 0 },
        },
      },
      {
        extends: true,
        test: {
          name: 'cpu-timing',
          include: CPU_TIMING,
          fileParallelism: false,
          sequence: { groupOrder: 1 },
        },
      },
    ],
  },
});
