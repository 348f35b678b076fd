/** Shared plumbing for the benchmarks: consumer processes, floods, RSS. */
import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** A seed-format envelope of about 100 bytes, as published in every benchmark. */
export const MESSAGE = JSON.stringify({ event: 'bench', data: { user_id: 'usr-123', text: 'Hello there, this is a benchmark message' } });

const here = (p: string): string => fileURLToPath(new URL(p, import.meta.url));
export const CONSUMERS = {
  bare: here('./consumers/bare.ts'),
  agentd: here('./consumers/agentd.ts'),
  moleculer: here('./peers/consumer.mjs'),
} as const;
export const PEERS_DIR = here('./peers/');

/** Installs bench/peers (Moleculer, BullMQ) on first use; false, with a line on stderr, when `module` is not there after. */
export async function ensurePeer(module: string): Promise<boolean> {
  if (existsSync(join(PEERS_DIR, 'node_modules', module))) return true;
  try {
    await run('npm', ['install', '--no-audit', '--no-fund', '--prefix', PEERS_DIR], { timeout: 180_000 });
    if (existsSync(join(PEERS_DIR, 'node_modules', module))) return true;
    console.error(`${module} peer not installed; skipping it`);
  } catch (err) {
    console.error(`${module} peer not installed (${(err as Error).message.split('\n')[0]}); skipping it`);
  }
  return false;
}

/** Newest modification time under a folder, in ms. */
function newest(dir: string): number {
  let t = 0;
  for (const e of readdirSync(dir, { withFileTypes: true, recursive: true })) if (e.isFile()) t = Math.max(t, statSync(join(e.parentPath, e.name)).mtimeMs);
  return t;
}

/**
 * The agentd consumers run the built daemon (dist/), as production does:
 * type-stripping src/ at start would cost agentd ~200 ms and ~30 MiB the
 * bare loop does not pay. Builds when dist/ is missing or older than src/.
 */
export function ensureBuilt(): void {
  const root = fileURLToPath(new URL('../', import.meta.url));
  const dist = join(root, 'dist', 'index.js');
  if (existsSync(dist) && statSync(dist).mtimeMs >= newest(join(root, 'src'))) return;
  process.stderr.write('building dist/ (npm run build) for the agentd consumers\n');
  execFileSync('npm', ['run', 'build'], { cwd: root, stdio: ['ignore', 'ignore', 'inherit'] });
}

export interface Consumer {
  readonly child: ChildProcess;
  /** Resolves with the consumer's result line (the first JSON line after {"ready": true}). */
  readonly result: Promise<Record<string, unknown>>;
}

/** Starts a consumer process and resolves once it is subscribed. */
export async function startConsumer(script: string, args: string[], env: NodeJS.ProcessEnv = {}, withStdin = false): Promise<Consumer> {
  if (script.includes('/consumers/') && !script.endsWith('bare.ts')) ensureBuilt();
  const strip = script.endsWith('.ts') && !process.features.typescript ? ['--experimental-strip-types'] : [];
  const child = spawn(process.execPath, [...strip, '--disable-warning=ExperimentalWarning', script, ...args], {
    stdio: [withStdin ? 'pipe' : 'ignore', 'pipe', 'inherit'],
    env: { ...process.env, ...env },
  });
  const lines = createInterface({ input: child.stdout! });
  let ready!: () => void;
  const isReady = new Promise<void>((r) => (ready = r));
  const result = new Promise<Record<string, unknown>>((resolve, reject) => {
    lines.on('line', (line) => {
      const v = JSON.parse(line) as Record<string, unknown>;
      if (v['ready']) ready();
      else resolve(v);
    });
    lines.once('close', () => reject(new Error(`${script} ended before reporting`)));
  });
  result.catch(() => undefined);
  await Promise.race([isReady, result]);
  return { child, result };
}

/** Publishes `count` copies of `message` as fast as redis-benchmark can (pipelined, one connection). */
export async function flood(port: number, count: number, message = MESSAGE, channel = 'agent:events:bench'): Promise<number> {
  const t0 = performance.now();
  await run('redis-benchmark', ['-p', String(port), '-n', String(count), '-c', '1', '-P', '100', '-q', 'PUBLISH', channel, message], { maxBuffer: 1 << 24 });
  return performance.now() - t0;
}

/** Resident set size of a process, in MiB (Linux). */
export function rssMiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) / 1024 : Number.NaN;
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export function machine(): Record<string, string | number> {
  const cpus = readFileSync('/proc/cpuinfo', 'utf8').match(/^model name\s*:\s*(.*)$/m)?.[1] ?? 'unknown';
  return { node: process.version, cpu: cpus, cores: Number(readFileSync('/proc/cpuinfo', 'utf8').match(/^processor/gm)?.length ?? 0) };
}
