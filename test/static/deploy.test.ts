/**
 * Deployment files, checked without running them: the systemd unit with
 * systemd-analyze (verify, security), the Dockerfile with a linter and
 * assertions, compose.yaml by parsing it. There is no Docker engine and no
 * systemd as PID 1 where this project is tested, so nothing here builds an
 * image or starts the unit; docs/operations.md says so too.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { DockerfileParser, type Instruction } from 'dockerfile-ast';
import { validate, ValidationSeverity } from 'dockerfile-utils';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import { listSettings, loadConfig } from '../../src/config/load.ts';
import { schema } from '../../src/config/schema.ts';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const read = (file: string): string => readFileSync(path.join(ROOT, file), 'utf8');

const DRAIN_MS = schema.lifecycle.drainTimeoutMs.default;
const PLUGIN_CLOSE_MS = schema.lifecycle.setupTimeoutMs.default;
const HTTP_PORT = schema.http.port.default;
const SETTING_ENVS = new Set([...listSettings().map((s) => s.env), 'AGENTD_CONFIG']);

// ---------------------------------------------------------------- helpers

/** A unit file as section -> key -> values (a key may repeat), comments and continuations handled. */
type Unit = Map<string, Map<string, string[]>>;

function parseUnit(text: string): Unit {
  const unit: Unit = new Map();
  let section: Map<string, string[]> | undefined;
  const lines = text.replace(/\\\n/g, ' ').split('\n');
  for (const raw of lines) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue;
    const header = /^\[(.+)\]$/.exec(line);
    if (header) {
      section = new Map();
      unit.set(header[1]!, section);
      continue;
    }
    const eq = line.indexOf('=');
    if (section === undefined || eq < 1) throw new Error(`unit file: cannot parse ${JSON.stringify(line)}`);
    const key = line.slice(0, eq).trim();
    const values = section.get(key) ?? [];
    values.push(line.slice(eq + 1).trim());
    section.set(key, values);
  }
  return unit;
}

/** systemd time span ("30s", "2min", "1min 30s", "15" = seconds) in ms. */
function timespanMs(value: string): number {
  const units: Record<string, number> = { us: 0.001, ms: 1, '': 1000, s: 1000, sec: 1000, m: 60_000, min: 60_000, h: 3_600_000, hr: 3_600_000 };
  let total = 0;
  let matched = '';
  for (const m of value.matchAll(/(\d+(?:\.\d+)?)\s*(us|ms|sec|s|min|m|hr|h|)(?![a-z])/g)) {
    total += Number(m[1]) * units[m[2]!]!;
    matched += m[0];
  }
  if (matched.replace(/\s/g, '') !== value.replace(/\s/g, '')) throw new Error(`not a time span: ${value}`);
  return total;
}

/** `VAR=value` lines of an environment file; with `commented`, also `#VAR=value` lines. */
function envFileVars(text: string, commented: boolean): Map<string, string> {
  const vars = new Map<string, string>();
  for (const line of text.split('\n')) {
    const m = (commented ? /^#?\s*([A-Z][A-Z0-9_]*)=(.*)$/ : /^([A-Z][A-Z0-9_]*)=(.*)$/).exec(line.trim());
    if (m) vars.set(m[1]!, m[2]!);
  }
  return vars;
}

function run(cmd: string, args: string[]): { status: number | null; out: string; err: string } {
  const r = spawnSync(cmd, args, { encoding: 'utf8', env: { ...process.env, SYSTEMD_COLORS: '0', LC_ALL: 'C.UTF-8' } });
  if (r.error) {
    const code = (r.error as NodeJS.ErrnoException).code;
    throw new Error(
      code === 'ENOENT'
        ? `${cmd} not found: it comes with Debian's systemd package (apt-get install systemd); .ci/run must install it on a machine without it`
        : `${cmd}: ${r.error.message}`,
    );
  }
  return { status: r.status, out: r.stdout, err: r.stderr };
}

/** The README's Deployment section. */
function readmeDeployment(): string {
  const m = /^## Deployment\n([\s\S]*?)(?=^## )/m.exec(read('README.md'));
  if (!m) throw new Error('README.md has no "## Deployment" section');
  return m[1]!;
}

// ---------------------------------------------------------------- systemd

describe('systemd unit (systemd/agentd.service)', () => {
  const unitText = read('systemd/agentd.service');
  const unit = parseUnit(unitText);
  const service = unit.get('Service') ?? new Map<string, string[]>();
  /** The last value of a [Service] key, as systemd would use it. */
  const get = (key: string): string | undefined => service.get(key)?.at(-1);
  const all = (key: string): string[] => service.get(key) ?? [];

  let dir: string;
  let unitCopy: string;
  const NODE_IN_UNIT = '/usr/bin/node';

  beforeAll(() => {
    // verify checks that ExecStart's program exists on this machine. The one
    // change in the copy: /usr/bin/node becomes the Node.js running this test.
    dir = mkdtempSync(path.join(tmpdir(), 'agentd-unit-'));
    unitCopy = path.join(dir, 'agentd.service');
    const copy = unitText.replace(`ExecStart=${NODE_IN_UNIT} `, `ExecStart=${process.execPath} `);
    expect(copy, 'ExecStart must start with /usr/bin/node').not.toBe(unitText);
    writeFileSync(unitCopy, copy);
  });
  afterAll(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('passes systemd-analyze verify without a single warning', () => {
    const r = run('systemd-analyze', ['verify', unitCopy]);
    // verify exits 0 on unknown keys and bad values and only prints them, so
    // the output must be empty, not just the status 0.
    expect({ status: r.status, output: (r.out + r.err).trim() }).toEqual({ status: 0, output: '' });
  });

  it('verify does see mistakes (the empty output above means something)', () => {
    const broken = path.join(dir, 'broken', 'agentd.service');
    mkdirSync(path.dirname(broken), { recursive: true });
    writeFileSync(broken, readFileSync(unitCopy, 'utf8').replace('ProtectHome=yes', 'ProtectHomme=yes').replace('WatchdogSec=', 'WatchdogSec=x'));
    const r = run('systemd-analyze', ['verify', broken]);
    expect(r.out + r.err).toContain("Unknown key 'ProtectHomme'");
    expect(r.out + r.err).toMatch(/WatchdogSec|parse sec/);
  });

  it('has the exposure level that docs/operations.md and the README record', () => {
    const r = run('systemd-analyze', ['security', '--offline=yes', unitCopy]);
    expect(r.status, r.err).toBe(0);
    const m = /Overall exposure level for agentd\.service: (\d+\.\d+) (\w+)/.exec(r.out);
    expect(m, r.out).not.toBeNull();
    const [, level, verdict] = m!;
    expect(Number(level)).toBeLessThanOrEqual(2);
    expect(read('docs/operations.md')).toContain(`overall exposure level of ${level} ${verdict}`);
    expect(readmeDeployment()).toContain(`\`systemd-analyze security\`: ${level}, "${verdict}"`);
  });

  it('is a notify service with a watchdog, restarts on failure and stops after the drain', () => {
    expect(get('Type')).toBe('notify');
    // The daemon falls back to the systemd-notify binary, a child process.
    expect(get('NotifyAccess')).toBe('all');
    const watchdog = timespanMs(get('WatchdogSec') ?? '0');
    expect(watchdog).toBeGreaterThan(0);
    // A frozen daemon is restarted before its peers report it down.
    expect(watchdog).toBeLessThan(schema.heartbeat.ttl.default * 1000);
    expect(get('Restart')).toBe('on-failure');
    expect(timespanMs(get('RestartSec') ?? '0')).toBeGreaterThan(0);
    // Drain, then one plugin's close() at its limit, before SIGKILL.
    const stop = timespanMs(get('TimeoutStopSec') ?? '0');
    expect(stop).toBeGreaterThan(DRAIN_MS);
    expect(stop).toBeGreaterThan(DRAIN_MS + PLUGIN_CLOSE_MS);
    expect(get('KillSignal') ?? 'SIGTERM').toBe('SIGTERM');
    expect(get('KillMode')).toBe('mixed');
    // `systemctl reload` sends SIGHUP, which the daemon survives (test/process/unclean-stop.test.ts).
    expect(get('ExecReload')).toBe('/bin/kill -HUP $MAINPID');
    expect(unit.get('Install')?.get('WantedBy')).toEqual(['multi-user.target']);
  });

  it('runs the package with the same command as the container, from /opt/agentd', () => {
    expect(get('ExecStart')).toBe(`${NODE_IN_UNIT} /opt/agentd/dist/bin/agentd.js run`);
    expect(get('WorkingDirectory')).toBe('/opt/agentd');
    expect(get('EnvironmentFile')).toBe('-/etc/agentd/agentd.env');
  });

  it('gets the Redis password as a credential, never in the environment', () => {
    expect(all('LoadCredential')).toContain('redis-password:/etc/agentd/redis-password');
    expect(all('Environment')).toContain('AGENTD_REDIS_PASSWORD_FILE=%d/redis-password');
    for (const env of all('Environment')) {
      const name = env.split('=')[0]!;
      if (name.startsWith('AGENTD_')) expect(SETTING_ENVS, name).toContain(name);
      expect(env).not.toMatch(/^AGENTD_REDIS_URL=.*:[^@/]*@/);
    }
  });

  it('is hardened: own user, no privileges, read-only system, filtered system calls', () => {
    expect(get('DynamicUser') === 'yes' || (get('User') ?? 'root') !== 'root', 'DynamicUser=yes or a User= other than root').toBe(true);
    const expected: Record<string, string> = {
      NoNewPrivileges: 'yes',
      ProtectSystem: 'strict',
      ProtectHome: 'yes',
      PrivateTmp: 'yes',
      PrivateDevices: 'yes',
      ProtectKernelTunables: 'yes',
      ProtectKernelModules: 'yes',
      ProtectKernelLogs: 'yes',
      ProtectControlGroups: 'yes',
      ProtectClock: 'yes',
      ProtectHostname: 'yes',
      RestrictNamespaces: 'yes',
      RestrictRealtime: 'yes',
      RestrictSUIDSGID: 'yes',
      LockPersonality: 'yes',
      SystemCallArchitectures: 'native',
      CapabilityBoundingSet: '',
      AmbientCapabilities: '',
      UMask: '0077',
    };
    for (const [key, value] of Object.entries(expected)) expect(get(key), key).toBe(value);
    expect(get('RestrictAddressFamilies')?.split(/\s+/).sort()).toEqual(['AF_INET', 'AF_INET6', 'AF_UNIX']);
    expect(all('SystemCallFilter')).toContain('@system-service');
    expect(all('SystemCallFilter').join(' ')).toMatch(/~.*@privileged/);
    expect(get('MemoryMax')).toMatch(/^\d+[KMG]$/);
    expect(Number(get('TasksMax'))).toBeGreaterThan(0);
    // V8's JIT needs writable+executable memory.
    expect(service.has('MemoryDenyWriteExecute') ? get('MemoryDenyWriteExecute') : 'no').toBe('no');
  });
});

describe('systemd environment file (systemd/agentd.env)', () => {
  const text = read('systemd/agentd.env');

  it('names only real settings, and has no password in the Redis URL', () => {
    const named = envFileVars(text, true);
    expect(named.size).toBeGreaterThan(5);
    for (const name of named.keys()) expect(SETTING_ENVS, `${name} is not an agentd setting`).toContain(name);
    for (const k of ['AGENTD_REDIS_URL', 'AGENTD_AGENT_ID', 'AGENTD_DEN', 'AGENTD_PLUGINS', 'AGENTD_REDIS_TLS_CA_FILE']) expect([...named.keys()]).toContain(k);
    const url = new URL(envFileVars(text, false).get('AGENTD_REDIS_URL')!);
    expect(url.password).toBe('');
  });

  it('is a valid configuration (file paths aside, which point at the install)', () => {
    const env = Object.fromEntries(envFileVars(text, false));
    for (const k of Object.keys(env)) if (k.endsWith('_FILE')) env[k] = '';
    // WorkingDirectory=/opt/agentd holds the same files as the repository.
    const { config } = loadConfig({ env, args: [], cwd: ROOT });
    expect(config.agent.den).toBe(env['AGENTD_DEN']);
    expect(config.plugins.length).toBeGreaterThan(0);
  });
});

// ---------------------------------------------------------------- Dockerfile

describe('Dockerfile', () => {
  const text = read('Dockerfile');
  const df = DockerfileParser.parse(text);
  const froms = df.getFROMs();
  const finalFrom = froms.at(-1)!;
  const lineOf = (i: Instruction): number => i.getRange().start.line;
  const finalStage = df.getInstructions().filter((i) => lineOf(i) > lineOf(finalFrom));
  const stageOf = (line: number) => [...froms].reverse().find((f) => lineOf(f) < line)!;
  const stageInstructions = (name: string) => {
    const from = froms.find((f) => f.getBuildStage() === name);
    if (!from) throw new Error(`no stage ${name}`);
    const next = froms.find((f) => lineOf(f) > lineOf(from));
    return df.getInstructions().filter((i) => lineOf(i) > lineOf(from) && (next === undefined || lineOf(i) < lineOf(next)));
  };
  const keyword = (k: string) => finalStage.filter((i) => i.getKeyword() === k);
  const finalCopies = df.getCOPYs().filter((c) => lineOf(c) > lineOf(finalFrom));
  const jsonArgs = (i: Instruction): string[] => {
    const content = i.getArgumentsContent() ?? '';
    const json = i.getKeyword() === 'HEALTHCHECK' ? content.replace(/^(--\S+\s+)*CMD\s+/, '') : content;
    return JSON.parse(json) as string[];
  };
  /** The image a FROM names, with ARG defaults substituted. */
  const image = (from: (typeof froms)[number]): string => {
    const raw = from.getImage() ?? '';
    return raw.replace(/\$\{?(\w+)\}?/g, (_, name: string) => df.resolveVariable(name, lineOf(from)) ?? `<unset ${name}>`);
  };

  it('passes the dockerfile-utils linter with every rule on', () => {
    const all = ValidationSeverity.ERROR;
    const diagnostics = validate(text, {
      deprecatedMaintainer: all,
      directiveCasing: all,
      emptyContinuationLine: all,
      instructionCasing: all,
      instructionCmdMultiple: all,
      instructionEntrypointMultiple: all,
      instructionHealthcheckMultiple: all,
      instructionJSONInSingleQuotes: all,
      instructionWorkdirRelative: all,
    });
    expect(diagnostics.map((d) => `line ${d.range.start.line + 1}: ${d.message}`)).toEqual([]);
  });

  it('is multi-stage on one exact Node 24 slim image', () => {
    expect(froms.length).toBeGreaterThanOrEqual(2);
    const images = new Set(froms.map(image));
    expect(images.size).toBe(1);
    const [only] = images;
    // Exact version: not latest, not "24", not "24-slim".
    expect(only).toMatch(/^node:24\.\d+\.\d+-bookworm-slim(@sha256:[0-9a-f]{64})?$/);
    const names = froms.map((f) => f.getBuildStage());
    expect(names.every((n) => n !== null)).toBe(true);
    expect(new Set(names).size).toBe(names.length);
  });

  it('copies between stages only from earlier stages', () => {
    for (const copy of df.getCOPYs()) {
      const from = copy.getFromFlag()?.getValue();
      if (from === undefined || from === null) continue;
      const earlier = froms.filter((f) => lineOf(f) < lineOf(copy)).map((f) => f.getBuildStage());
      expect(earlier, `COPY --from=${from} on line ${lineOf(copy) + 1}`).toContain(from);
      expect(stageOf(lineOf(copy)).getBuildStage()).not.toBe(from);
    }
  });

  it('runs as a non-root user in the final stage', () => {
    const users = keyword('USER');
    expect(users.length).toBeGreaterThan(0);
    const user = (users.at(-1)!.getArgumentsContent() ?? '').split(':')[0]!;
    expect(['', 'root', '0']).not.toContain(user);
  });

  it('ships production dependencies only', () => {
    // node_modules come from a stage that installed with --omit=dev and never without it.
    const copies = finalCopies.filter((c) => /node_modules/.test(c.getArgumentsContent() ?? ''));
    expect(copies.length).toBe(1);
    const source = copies[0]!.getFromFlag()?.getValue();
    expect(source, 'node_modules must come from another stage').toBeTruthy();
    const installs = stageInstructions(source!)
      .filter((i) => i.getKeyword() === 'RUN')
      .map((i) => i.getArgumentsContent() ?? '')
      .flatMap((run) => run.split(/&&|;|\|\|/).map((s) => s.trim().replace(/^\(/, '')))
      .filter((cmd) => /^npm (ci|install|i|prune)\b/.test(cmd));
    expect(installs.length).toBeGreaterThan(0);
    for (const cmd of installs) expect(cmd, cmd).toMatch(/--omit=dev|--production/);
    // Nothing installs packages in the final stage, and no local node_modules can slip in.
    expect(keyword('RUN').some((r) => /\bnpm (ci|install|i)\b/.test(r.getArgumentsContent() ?? ''))).toBe(false);
    const ignored = read('.dockerignore').split('\n').map((l) => l.trim());
    expect(ignored).toContain('node_modules');
    expect(ignored).toContain('dist');
    // The build stage's node_modules (with devDependencies) stay behind.
    const buildStageWithDev = froms.filter((f) =>
      stageInstructions(f.getBuildStage()!).some((i) => i.getKeyword() === 'RUN' && /npm ci(?![^&]*--omit=dev)/.test(i.getArgumentsContent() ?? '')),
    );
    for (const f of buildStageWithDev) {
      for (const c of finalCopies.filter((c) => c.getFromFlag()?.getValue() === f.getBuildStage())) {
        expect(c.getArgumentsContent(), 'copied from a stage with devDependencies').not.toMatch(/node_modules/);
      }
    }
  });

  it('has an init process as PID 1 that the final stage installs', () => {
    const entrypoints = keyword('ENTRYPOINT');
    expect(entrypoints.length).toBe(1);
    const [init] = jsonArgs(entrypoints[0]!);
    expect(init).toMatch(/^\/usr\/bin\/(tini|dumb-init)$|^\/sbin\/tini$/);
    const name = path.basename(init!);
    expect(keyword('RUN').some((r) => new RegExp(`apt-get install[^&]*\\b${name}\\b`).test(r.getArgumentsContent() ?? ''))).toBe(true);
    expect(keyword('STOPSIGNAL').map((s) => s.getArgumentsContent())).toEqual(['SIGTERM']);
  });

  it('checks its health on /healthz with node (no curl in the slim image)', () => {
    const checks = keyword('HEALTHCHECK');
    expect(checks.length).toBe(1);
    const cmd = jsonArgs(checks[0]!);
    expect(cmd[0]).toBe('node');
    expect(cmd.join(' ')).toContain('/healthz');
    expect(cmd.join(' ')).toContain(String(HTTP_PORT));
  });

  it('listens on all interfaces on the default HTTP port', () => {
    expect(keyword('EXPOSE').map((e) => e.getArgumentsContent())).toEqual([String(HTTP_PORT)]);
    const env = keyword('ENV').map((e) => e.getArgumentsContent() ?? '').join(' ');
    expect(env).toMatch(/AGENTD_HTTP_HOST=0\.0\.0\.0/);
  });

  it('starts with the command the README documents, in /app', () => {
    const cmds = keyword('CMD');
    expect(cmds.length).toBe(1);
    const cmd = jsonArgs(cmds[0]!);
    expect(cmd).toEqual(['node', 'dist/bin/agentd.js', 'run']);
    const section = readmeDeployment();
    const documented = /`(node [^`]*agentd\.js run)`/.exec(section);
    expect(documented, 'README Deployment names the start command').not.toBeNull();
    expect(cmd.join(' ')).toBe(documented![1]);
    const readmeCmd = /`CMD (\[[^`]*\])`/.exec(section);
    expect(readmeCmd, 'README Deployment shows the CMD').not.toBeNull();
    expect(JSON.parse(readmeCmd![1]!)).toEqual(cmd);
    // The same command as `npm start` and the systemd unit.
    expect((JSON.parse(read('package.json')) as { scripts: { start: string } }).scripts.start).toMatch(new RegExp(`${cmd.join(' ').replace(/\./g, '\\.')}$`));
    expect(read('systemd/agentd.service')).toContain(`/opt/agentd/${cmd.slice(1).join(' ')}`);
    expect(keyword('WORKDIR').at(-1)?.getArgumentsContent()).toBe('/app');
  });

  it('copies what the start command and the example plugins need', () => {
    const copied = keyword('COPY').map((c) => c.getArgumentsContent() ?? '');
    for (const what of ['dist', 'node_modules', 'package.json', 'examples', 'config']) {
      expect(copied.some((c) => c.split(/\s+/).some((w) => w.replace(/^\/app\//, '').replace(/^\.\//, '') === what)), what).toBe(true);
    }
  });
});

// ---------------------------------------------------------------- compose

describe('compose.yaml', () => {
  interface Service {
    image?: string;
    build?: string | { context?: string };
    command?: string[] | string;
    environment?: Record<string, string> | string[];
    depends_on?: Record<string, { condition?: string }> | string[];
    ports?: string[];
    healthcheck?: { test?: string[] | string };
    stop_grace_period?: string;
  }
  const compose = parseYaml(read('compose.yaml'), { merge: true }) as { services: Record<string, Service> };
  const services = compose.services;
  const envOf = (s: Service): Record<string, string> =>
    Array.isArray(s.environment)
      ? Object.fromEntries(s.environment.map((e) => [e.slice(0, e.indexOf('=')), e.slice(e.indexOf('=') + 1)]))
      : Object.fromEntries(Object.entries(s.environment ?? {}).map(([k, v]) => [k, String(v)]));
  const agents = Object.entries(services).filter(([, s]) => {
    const context = typeof s.build === 'string' ? s.build : s.build?.context;
    return context === '.' || context === './';
  });

  it('has a Redis, pinned, throwaway, with a health check', () => {
    const redis = services['redis'];
    expect(redis).toBeDefined();
    expect(redis!.image).toMatch(/^redis:\d+\.\d+[\w.-]*$/);
    const command = Array.isArray(redis!.command) ? redis!.command : (redis!.command ?? '').split(/\s+/);
    const after = (flag: string) => command[command.indexOf(flag) + 1];
    expect(command).toContain('--save');
    expect(after('--save'), 'no snapshots: --save ""').toBe('');
    expect(after('--appendonly')).toBe('no');
    expect([redis!.healthcheck?.test].flat().join(' ')).toContain('redis-cli ping');
  });

  it('has two agents built from the Dockerfile, in one den, on that Redis', () => {
    expect(agents.map(([name]) => name).sort()).toEqual(['agent-1', 'agent-2']);
    const envs = agents.map(([, s]) => envOf(s));
    expect(new Set(envs.map((e) => e['AGENTD_DEN'])).size).toBe(1);
    expect(envs[0]!['AGENTD_DEN']).toBe('demo');
    expect(new Set(envs.map((e) => e['AGENTD_AGENT_ID'])).size).toBe(2);
    for (const [name, s] of agents) {
      const env = envOf(s);
      const url = new URL(env['AGENTD_REDIS_URL']!);
      expect(url.protocol).toBe('redis:');
      expect(services[url.hostname], `${name}: AGENTD_REDIS_URL host is a service`).toBe(services['redis']);
      expect(s.depends_on).toEqual({ redis: { condition: 'service_healthy' } });
      expect(timespanMs(s.stop_grace_period ?? '10s')).toBeGreaterThan(DRAIN_MS);
      for (const k of Object.keys(env)) expect(SETTING_ENVS, `${name}: ${k}`).toContain(k);
      // The plugin path resolves in /app, which holds examples/ as the repository does.
      for (const p of env['AGENTD_PLUGINS']!.split(',')) expect(existsSync(path.join(ROOT, p)), p).toBe(true);
      // And the settings are valid as a whole (heartbeat interval below TTL / 2, …).
      expect(() => loadConfig({ env, args: [], cwd: ROOT })).not.toThrow();
    }
  });

  it('publishes each agent\'s HTTP port on localhost only', () => {
    expect(services['agent-1']!.ports).toEqual([`127.0.0.1:9464:${HTTP_PORT}`]);
    expect(services['agent-2']!.ports).toEqual([`127.0.0.1:9465:${HTTP_PORT}`]);
  });
});
