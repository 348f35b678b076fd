/**
 * The package as a user gets it: `npm pack`, installed into an empty folder,
 * then the README's typed plugin and embedding example (the code blocks
 * themselves, cut out of README.md) and a typed plugin fixture compile
 * against the installed types and run against a throwaway Redis.
 */
import { spawn, spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { reachableDeclarations } from '../helpers/dts-reach.ts';
import { startRedis, type TestRedis } from '../helpers/redis.ts';
import { trackChild, trackTempDir, untrackTempDir } from '../helpers/reaper.ts';
import { collect, uniqueId } from '../helpers/util.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const TSC = join(ROOT, 'node_modules/typescript/bin/tsc');
const README = readFileSync(join(ROOT, 'README.md'), 'utf8');

/** The fenced block right after `<!-- test/process/package.test.ts … as NAME … -->`. */
function readmeBlock(name: string): string {
  const m = new RegExp(`<!-- test/process/package\\.test\\.ts [^>]*\\bas ${name.replace('.', '\\.')}\\b[^>]*-->\\n\`\`\`ts\\n([\\s\\S]*?)\\n\`\`\`\\n`).exec(README);
  if (!m) throw new Error(`README.md has no block marked "as ${name}"`);
  return `${m[1]}\n`;
}

function run(cmd: string, args: string[], cwd: string): SpawnSyncReturns<string> & { ms: number } {
  const t0 = performance.now();
  const r = spawnSync(cmd, args, { cwd, encoding: 'utf8', env: { ...process.env, npm_config_update_notifier: 'false' } });
  const ms = Math.round(performance.now() - t0);
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status}):\n${r.stdout}\n${r.stderr}`);
  return { ...r, ms };
}

interface Packed {
  files: string[];
  dir: string;
  app: string;
  pkg: string;
  tsc: SpawnSyncReturns<string>;
  timings: Record<string, number>;
}

describe('the npm package', () => {
  let packed: Packed;

  beforeAll(() => {
    const dir = mkdtempSync(join(tmpdir(), 'agentd-pack-'));
    trackTempDir(dir);
    const timings: Record<string, number> = {};
    // npm pack runs `prepare` (the build), as a publish would.
    const pack = run('npm', ['pack', '--json', '--pack-destination', dir], ROOT);
    timings['pack'] = pack.ms;
    const [info] = JSON.parse(pack.stdout.slice(pack.stdout.indexOf('['))) as Array<{ filename: string; files: Array<{ path: string }> }>;
    const app = join(dir, 'app');
    mkdirSync(app);
    writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'embedder', private: true, type: 'module' }));
    // From npm's cache when it has the dependencies (--prefer-offline), else the registry; no install scripts.
    const install = run('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund', '--ignore-scripts', '--omit=optional', join(dir, info!.filename)], app);
    timings['install'] = install.ms;

    writeFileSync(join(app, 'greeter.ts'), readmeBlock('greeter.ts'));
    writeFileSync(join(app, 'main.ts'), readmeBlock('main.ts'));
    const fixture = readFileSync(join(ROOT, 'test/fixtures/package/typed-plugin.ts'), 'utf8');
    writeFileSync(join(app, 'typed-plugin.ts'), fixture.replace("from '../../../src/index.ts'", "from 'agentd'"));
    // A user's strict settings, and the installed .d.ts files checked too (skipLibCheck off for them).
    writeFileSync(
      join(app, 'tsconfig.json'),
      JSON.stringify({
        compilerOptions: {
          target: 'es2023',
          lib: ['es2024'],
          module: 'nodenext',
          moduleResolution: 'nodenext',
          strict: true,
          exactOptionalPropertyTypes: true,
          noUncheckedIndexedAccess: true,
          types: ['node'],
          typeRoots: [join(ROOT, 'node_modules/@types')],
          skipLibCheck: false,
          outDir: 'out',
        },
        files: ['main.ts', 'greeter.ts', 'typed-plugin.ts'],
      }),
    );
    const t0 = performance.now();
    const tsc = spawnSync(process.execPath, [TSC, '-p', app], { cwd: app, encoding: 'utf8' });
    timings['tsc'] = Math.round(performance.now() - t0);
    packed = { files: info!.files.map((f) => f.path).sort(), dir, app, pkg: join(app, 'node_modules/agentd'), tsc, timings };
    process.stderr.write(`[package] npm pack ${timings['pack']} ms, npm install ${timings['install']} ms, tsc ${timings['tsc']} ms\n`);
  }, 120_000);

  afterAll(() => {
    if (!packed) return;
    rmSync(packed.dir, { recursive: true, force: true });
    untrackTempDir(packed.dir);
  });

  it('ships what runs: no source maps without their sources, no example that needs the test helpers', () => {
    const { files } = packed;
    expect(files).toContain('dist/index.js');
    expect(files).toContain('dist/index.d.ts');
    expect(files).toContain('dist/bin/agentd.js');
    expect(files.filter((f) => f.endsWith('.map'))).toEqual([]);
    expect(files.filter((f) => f.startsWith('src/') || f.startsWith('test/') || f.startsWith('bench/'))).toEqual([]);
    expect(files.filter((f) => f.startsWith('examples/'))).toEqual(['examples/plugins/log-events.js', 'examples/plugins/task-runner.js']);
    // Every relative import of a shipped module names a shipped file.
    const shipped = new Set(files);
    for (const f of files.filter((f) => f.endsWith('.js'))) {
      const text = readFileSync(join(packed.pkg, f), 'utf8');
      for (const [, spec] of text.matchAll(/(?:^|[\s;])(?:import|export)\b[^'"]*?from\s*['"](\.[^'"]+)['"]/gm)) {
        const target = join(f, '..', spec!);
        expect(shipped.has(target), `${f} imports ${spec}`).toBe(true);
      }
    }
  });

  it("compiles the README's typed plugin and embedding example and the typed plugin fixture against the installed types", () => {
    // The fixture's @ts-expect-error lines are wrong payload uses: each must still be an error here.
    expect(`${packed.tsc.stdout}${packed.tsc.stderr}`).toBe('');
    expect(packed.tsc.status).toBe(0);
  });

  it('exports every type reachable from the public signatures of the entry', () => {
    const { exported, missing } = reachableDeclarations(join(packed.pkg, 'dist/index.d.ts'));
    for (const name of ['daemon.d.ts:AgentDaemon', 'http/server.d.ts:Readiness', 'bus/dispatcher.d.ts:DrainResult', 'http/metrics.d.ts:Metrics']) {
      expect(exported, name).toContain(name);
    }
    expect(missing).toEqual([]);
  });

  describe('runs against a throwaway Redis', () => {
    let redis: TestRedis;
    let sub: Redis;

    beforeAll(async () => {
      redis = await startRedis();
      sub = redis.client();
    });
    afterAll(async () => {
      await redis?.stop();
    });

    it('the embedding example starts, its greeter answers a typed new_message, SIGTERM leaves the den and exits 0', async () => {
      const { app } = packed;
      const id = uniqueId('embedded');
      writeFileSync(join(app, 'agentd.json'), JSON.stringify({ redis: { url: redis.url }, http: { port: 0 }, agent: { id } }));
      const heard = await collect(sub, 'agent:events:greeted', 'agent:events:agent_offline');
      const child = spawn(process.execPath, [join(app, 'out/main.js')], { cwd: app, env: { PATH: process.env['PATH'] ?? '' }, stdio: ['ignore', 'pipe', 'pipe'] });
      trackChild(child);
      let stderr = '';
      child.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
      const lines = createInterface({ input: child.stdout! });
      const exited = once(child, 'exit') as Promise<[number | null, NodeJS.Signals | null]>;
      const ready = new Promise<Record<string, unknown>>((resolve, reject) => {
        lines.on('line', (line) => {
          const json = JSON.parse(line) as Record<string, unknown>;
          if (json['msg'] === 'agentd ready') resolve(json);
        });
        void exited.then(([code]) => reject(new Error(`exited ${code} before ready: ${stderr}`)));
      });
      const readyLine = await ready;
      expect(readyLine).toMatchObject({ agent: id, den: 'research' });

      /** The first message on `channel`, heard now or later. */
      const first = (channel: string): Promise<Record<string, unknown> | undefined> =>
        new Promise((resolve) => {
          const look = (): boolean => {
            const m = heard.find((x) => x.channel === channel);
            if (m) resolve(m.json);
            return m !== undefined;
          };
          if (!look()) sub.on('pmessage', look);
        });
      const reply = first('agent:events:greeted');
      const offline = first('agent:events:agent_offline');
      await redis.client().publish('agent:events:new_message', JSON.stringify({ event: 'new_message', data: { text: 'there' }, source: 'tester' }));
      expect(await reply).toMatchObject({ event: 'greeted', source: id, den: 'research', data: { to: 'tester', text: 'hi, there' } });

      child.kill('SIGTERM');
      const [code, signal] = await exited;
      expect({ code, signal, stderr }).toEqual({ code: 0, signal: null, stderr: '' });
      expect(await offline).toMatchObject({ event: 'agent_offline', data: { agent: id, den: 'research', reason: 'shutdown' } });
    });
  });
});
