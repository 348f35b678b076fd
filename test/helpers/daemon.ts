import { spawn, type ChildProcess } from 'node:child_process';
import { EventEmitter } from 'node:events';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { trackChild } from './reaper.ts';
import type { LogLine } from './util.ts';

export interface DaemonExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface DaemonProcess {
  readonly child: ChildProcess;
  readonly pid: number;
  /** Every stdout line, JSON-parsed; non-JSON lines are kept as { raw: line }. */
  readonly logs: LogLine[];
  /** stderr, line by line. */
  readonly stderr: string[];
  /**
   * First log line (already received or future) matching pred. Rejects on
   * timeout or when the process exits first, with recent output in the message.
   */
  waitForLog(pred: (l: LogLine) => boolean, timeoutMs?: number): Promise<LogLine>;
  signal(sig: NodeJS.Signals): void;
  /** Resolves once the process has exited and its output has been read. */
  readonly exited: Promise<DaemonExit>;
  /** SIGKILL if still running, then await exit. */
  stop(): Promise<void>;
}

export interface SpawnAgentdOptions {
  env?: Record<string, string>;
  cwd?: string;
}

export interface RunAgentdOptions extends SpawnAgentdOptions {
  /** Written to stdin, which is then closed (stdin is always closed so nothing waits on it). */
  input?: string;
  /** Default 30 s; the child is SIGKILLed and the promise rejects when exceeded. */
  timeoutMs?: number;
}

export interface RunAgentdResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

const ENTRY = fileURLToPath(new URL('../../src/bin/agentd.ts', import.meta.url));
const DEFAULT_WAIT_MS = 10_000;
// After 'exit', stdio may still hold unread data; but a surviving grandchild
// could keep the pipes open forever, so only wait this long for 'close'.
const CLOSE_GRACE_MS = 500;

function nodeArgs(args: string[]): string[] {
  // Node >= 23.6 strips types by default; 22.x needs the flag.
  const strip = process.features.typescript ? [] : ['--experimental-strip-types'];
  return [...strip, '--disable-warning=ExperimentalWarning', ENTRY, ...args];
}

/** The developer's AGENTD_* / REDIS_URL settings must never leak into a test daemon (or another child that runs agentd). */
export function childEnv(extra: Record<string, string> | undefined): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (v === undefined || k.startsWith('AGENTD_') || k === 'REDIS_URL') continue;
    env[k] = v;
  }
  // Many daemons run at once in the tests: no health/metrics port unless a test asks for one.
  return { ...env, AGENTD_HTTP_PORT: '0', ...extra };
}

function parseLine(line: string): LogLine {
  try {
    const v: unknown = JSON.parse(line);
    if (v !== null && typeof v === 'object' && !Array.isArray(v)) return v as LogLine;
  } catch {
    // not JSON
  }
  return { raw: line };
}

function whenExited(child: ChildProcess): Promise<DaemonExit> {
  return new Promise((resolve) => {
    let result: DaemonExit | undefined;
    let timer: NodeJS.Timeout | undefined;
    const finish = (): void => {
      clearTimeout(timer);
      if (result) resolve(result);
    };
    child.once('exit', (code, signal) => {
      result = { code, signal };
      timer = setTimeout(finish, CLOSE_GRACE_MS);
    });
    child.once('close', (code, signal) => {
      result ??= { code, signal };
      finish();
    });
    // Spawn failure: no 'exit', but 'close' follows 'error'.
    child.once('error', () => {
      result ??= { code: null, signal: null };
    });
  });
}

/** Start the daemon as a real child process and collect its output. */
export function spawnAgentd(args: string[], opts: SpawnAgentdOptions = {}): DaemonProcess {
  const child = spawn(process.execPath, nodeArgs(args), {
    cwd: opts.cwd,
    env: childEnv(opts.env),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.on('error', () => {}); // surfaced through `exited` / waitForLog instead
  if (child.pid === undefined) throw new Error(`failed to spawn ${process.execPath}`);
  trackChild(child);

  const logs: LogLine[] = [];
  const stderr: string[] = [];
  const events = new EventEmitter();
  events.setMaxListeners(0);

  if (child.stdout) {
    createInterface({ input: child.stdout, crlfDelay: Infinity }).on('line', (line) => {
      const entry = parseLine(line);
      logs.push(entry);
      events.emit('log', entry);
    });
  }
  if (child.stderr) {
    createInterface({ input: child.stderr, crlfDelay: Infinity }).on('line', (line) => stderr.push(line));
  }

  const exited = whenExited(child);
  let exitInfo: DaemonExit | undefined;
  void exited.then((e) => {
    exitInfo = e;
    events.emit('exit', e);
  });

  const describe = (): string => {
    const tail = logs.slice(-30).map((l) => JSON.stringify(l)).join('\n');
    return `--- last ${Math.min(30, logs.length)} log lines ---\n${tail}\n--- stderr ---\n${stderr.join('\n')}`;
  };

  const waitForLog = (pred: (l: LogLine) => boolean, timeoutMs = DEFAULT_WAIT_MS): Promise<LogLine> => {
    const seen = logs.find(pred);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const cleanup = (): void => {
        clearTimeout(timer);
        events.off('log', onLog);
        events.off('exit', onExit);
      };
      const onLog = (l: LogLine): void => {
        if (!pred(l)) return;
        cleanup();
        resolve(l);
      };
      const onExit = (e: DaemonExit): void => {
        cleanup();
        reject(new Error(`agentd exited (code ${e.code}, signal ${e.signal}) before the expected log line\n${describe()}`));
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new Error(`timed out after ${timeoutMs}ms waiting for a log line\n${describe()}`));
      }, timeoutMs);
      events.on('log', onLog);
      if (exitInfo) onExit(exitInfo);
      else events.on('exit', onExit);
    });
  };

  return {
    child,
    pid: child.pid,
    logs,
    stderr,
    waitForLog,
    exited,
    signal(sig) {
      child.kill(sig);
    },
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
    },
  };
}

/** Run the CLI to completion (e.g. `agentd config check`). */
export function runAgentd(args: string[], opts: RunAgentdOptions = {}): Promise<RunAgentdResult> {
  const timeoutMs = opts.timeoutMs ?? 30_000;
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, nodeArgs(args), {
      cwd: opts.cwd,
      env: childEnv(opts.env),
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    trackChild(child);
    let stdout = '';
    let stderr = '';
    child.stdout?.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr?.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    // EPIPE if the CLI exits without reading stdin; the exit code tells the story.
    child.stdin?.on('error', () => {});
    child.stdin?.end(opts.input ?? '');

    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`agentd ${args.join(' ')} did not finish within ${timeoutMs}ms\nstdout:\n${stdout}\nstderr:\n${stderr}`));
    }, timeoutMs);
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}
