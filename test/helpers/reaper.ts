import type { ChildProcess } from 'node:child_process';
import { rmSync } from 'node:fs';

/**
 * Last line of defence against orphaned child processes (redis-server, the
 * daemon under test) and their temp dirs when a test file crashes or forgets
 * to clean up. Normal teardown goes through each helper's stop(); this only
 * SIGKILLs leftovers and removes their directories.
 */
const live = new Set<ChildProcess>();
const tempDirs = new Set<string>();
let installed = false;

function killAll(): void {
  for (const child of live) {
    try {
      child.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
  live.clear();
  for (const dir of tempDirs) {
    try {
      rmSync(dir, { recursive: true, force: true });
    } catch {
      // best effort
    }
  }
  tempDirs.clear();
}

function install(): void {
  if (installed) return;
  installed = true;
  // 'exit' does not fire when the worker dies from a signal, so also hook the
  // usual termination signals. Re-raise only when nobody else (e.g. vitest)
  // handles the signal, to keep the default "terminate" behaviour intact.
  process.once('exit', killAll);
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(sig, () => {
      killAll();
      if (process.listenerCount(sig) === 0) process.kill(process.pid, sig);
    });
  }
}

/** Track a child until it exits; SIGKILLed if the test process goes away first. */
export function trackChild(child: ChildProcess): void {
  install();
  if (child.exitCode !== null || child.signalCode !== null) return;
  live.add(child);
  child.once('exit', () => live.delete(child));
}

/** Remove dir when the test process goes away, unless untrackTempDir() is called first. */
export function trackTempDir(dir: string): void {
  install();
  tempDirs.add(dir);
}

export function untrackTempDir(dir: string): void {
  tempDirs.delete(dir);
}
