import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { defineConfig } from 'vitest/config';

// The tests start hundreds of `node src/bin/agentd.ts` children (and the workers, forked from here,
// inherit this): Node's compile cache keeps the type-stripped, compiled modules between starts,
// which cuts the CPU of one start by half on a machine where CPU, not waiting, is the limit.
process.env['NODE_COMPILE_CACHE'] ??= join(tmpdir(), 'agentd-test-compile-cache');

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
