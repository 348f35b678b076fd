/**
 * The agentd command line. With agentd.ts (the Node.js version check) this is
 * the only file that touches `process`: signals, exit codes, standard streams.
 */
import { agentAclRule, cliAclRule } from '../cli/acl.ts';
import { HELP, parseCommandLine, settingsHelp, type ParsedArgs } from '../cli/args.ts';
import { configCommand, connectOnce, memoryCommand, membersCommand, publishCommand, watchCommand, type Io } from '../cli/commands.ts';
import { deadLetterCommand, inboxCommand, requestCommand, sendCommand } from '../cli/durable.ts';
import { loadConfig } from '../config/load.ts';
import type { AgentdConfig } from '../config/schema.ts';
import { AgentDaemon } from '../daemon.ts';
import { AgentdError, describeError, isAgentdError } from '../errors.ts';
import { createLogger } from '../log.ts';
import { SystemdNotifier } from '../systemd/notify.ts';
import { VERSION } from '../version.ts';

const io: Io = { stdout: process.stdout, stderr: process.stderr, stdin: process.stdin };

/** The real process.exit: under `run`, process.exit itself is guarded (see guardExit). */
const realExit = process.exit.bind(process) as (code?: number) => never;
/** Set when agentd itself ends the process; an exit without it is unclean and never ends with 0. */
let exitIsOurs = false;
function exit(code: number): never {
  exitIsOurs = true;
  return realExit(code);
}

function fail(err: unknown): never {
  const line = isAgentdError(err) ? `${err.message} [${err.code}]` : describeError(err);
  process.stderr.write(`agentd: ${line}\n`);
  if (isAgentdError(err) && err.code === 'AGENTD_ERR_USAGE') process.stderr.write('Try `agentd --help`.\n');
  exit(isAgentdError(err) ? err.exitCode : 1);
}

/** Upper bound on leaving after a fatal error, before the process exits anyway. */
const FATAL_LEAVE_MS = 3_000;

function load(args: ParsedArgs) {
  return loadConfig({ file: args.configFile, env: process.env, args: args.settingArgs, cwd: process.cwd() }).config;
}

async function run(args: ParsedArgs): Promise<void> {
  const config = load(args);
  const log = createLogger({ level: config.log.level, base: { agent: config.agent.id, den: config.agent.den } });
  const daemon = new AgentDaemon({ config, logger: log });
  // Under systemd (Type=notify): READY=1 only once really ready, WATCHDOG=1 from this event loop.
  const notifier = SystemdNotifier.create({
    socket: process.env['NOTIFY_SOCKET'],
    watchdogUsec: process.env['WATCHDOG_USEC'],
    watchdogPid: process.env['WATCHDOG_PID'],
    pid: process.pid,
    log,
  });
  notifier?.startWatchdog();
  daemon.on('ready', ({ again }) => void notifier?.ready(again ? 'ready again' : 'ready'));
  daemon.on('degraded', ({ reason }) => void notifier?.status(`degraded: ${reason}`));

  let signals = 0;
  /** Set once a fatal error started the way out; signals and later errors then change nothing. */
  let fatal: string | undefined;
  const onSignal = (signal: NodeJS.Signals): void => {
    signals++;
    if (fatal !== undefined) return; // already leaving after a fatal error
    if (signals === 1) {
      log.info({ signal }, 'shutting down; a second signal forces exit');
      void notifier?.stopping('draining queued events, then leaving');
      void daemon.close().then((result) => {
        log.flush();
        if (fatal !== undefined) return; // a fatal error during the stop: its path exits 1
        exit(result.drained && result.errors.length === 0 ? 0 : 1);
      });
      return;
    }
    log.error({ signal, ...daemon.pendingWork() }, 'second signal: exiting now, abandoning queued and running handler calls');
    log.flush();
    exit(1);
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  // SIGHUP (systemctl reload, a closed terminal) does not stop the daemon: nothing
  // can be applied without a restart, so it re-reads the configuration and says
  // which settings differ from the running ones. Documented in docs/operations.md.
  process.on('SIGHUP', () => {
    let changed: string[];
    try {
      changed = changedSettings(config, load(args));
    } catch (err) {
      log.warn({ signal: 'SIGHUP', err: describeError(err) }, 'SIGHUP: the configuration on disk is invalid; still running with the loaded one');
      return;
    }
    log.warn(
      { signal: 'SIGHUP', changed },
      changed.length === 0
        ? 'SIGHUP: reload is not supported; the configuration is unchanged, still running'
        : 'SIGHUP: reload is not supported; these settings changed and apply only after a restart, still running',
    );
  });

  // A fatal error (an exception nobody caught, a rejection nobody handled, a
  // process.exit() from a plugin) ends the process with 1, after leaving the den
  // (bounded, best effort) so that peers see agent_offline, not agent_down.
  const die = (msg: string, fields: Record<string, unknown>, reason = msg): void => {
    if (fatal !== undefined) {
      log.error({ ...fields, first: fatal }, 'another fatal error while leaving');
      return;
    }
    fatal = reason;
    log.fatal(fields, msg);
    log.flush();
    void notifier?.stopping(`fatal: ${reason}`);
    const timer = setTimeout(() => {
      log.error({ limitMs: FATAL_LEAVE_MS }, 'could not leave in time after a fatal error; exiting');
      log.flush();
      exit(1);
    }, FATAL_LEAVE_MS);
    void daemon.leaveNow(`fatal: ${reason}`).then(
      () => {
        clearTimeout(timer);
        log.flush();
        exit(1);
      },
      (err: unknown) => {
        clearTimeout(timer);
        log.error({ err: describeError(err) }, 'could not leave after a fatal error');
        log.flush();
        exit(1);
      },
    );
  };
  process.on('unhandledRejection', (reason) => die('unhandled promise rejection', { err: describeError(reason), stack: reason instanceof Error ? reason.stack : undefined }));
  process.on('uncaughtException', (err) => die('uncaught exception', { err: describeError(err), stack: err.stack }));
  guardExit((code, stack) => die('process.exit() called by a plugin or a dependency', { exitCode: code, stack }, `process.exit(${code ?? ''}) called`));

  try {
    await daemon.start();
  } catch (err) {
    if (isAgentdError(err) && err.code === 'AGENTD_ERR_CLOSED') return; // a signal arrived during start; close() owns the exit
    if (fatal !== undefined) return; // the fatal path owns the exit
    // One line for a start failure (on stderr, from fail()): the close after it is quiet unless a step fails.
    log.level = 'error';
    await daemon.close({ drainTimeoutMs: 0 }).catch(() => undefined);
    fail(err);
  }
}

/**
 * Under `run`, process.exit() is not for plugins: a call ends the daemon as a
 * fatal error (leave, exit 1), and throws so the caller does not carry on as if
 * the process were gone. Any other way out that agentd did not choose (the
 * event loop ran dry, say) exits 1, never 0.
 */
function guardExit(onExit: (code: number | string | null | undefined, stack: string | undefined) => void): void {
  process.exit = ((code?: number | string | null) => {
    const stack = new Error('process.exit() called').stack;
    onExit(code, stack);
    throw new Error('process.exit() is not allowed inside agentd: the daemon is stopping instead (exit code 1), see docs/plugins.md');
  }) as typeof process.exit;
  process.on('exit', (code) => {
    if (exitIsOurs || code !== 0) return;
    process.exitCode = 1;
    process.stderr.write('agentd: the process is ending without a stop by agentd; exit code 1\n');
  });
}

/** Dotted keys whose value differs between two configurations (secrets compared, never printed). */
function changedSettings(running: AgentdConfig, now: AgentdConfig): string[] {
  const flat = (value: unknown, prefix: string, out: Map<string, string>): Map<string, string> => {
    if (value !== null && typeof value === 'object' && !Array.isArray(value)) {
      for (const [k, v] of Object.entries(value)) flat(v, prefix ? `${prefix}.${k}` : k, out);
    } else out.set(prefix, JSON.stringify(value));
    return out;
  };
  const a = flat(running, '', new Map());
  const b = flat(now, '', new Map());
  return [...new Set([...a.keys(), ...b.keys()])].filter((k) => a.get(k) !== b.get(k));
}

async function main(argv: readonly string[]): Promise<number | undefined> {
  const args = parseCommandLine(argv);
  if (args.version) {
    io.stdout.write(`${VERSION}\n`);
    return 0;
  }
  const command = args.command ?? (args.help ? 'help' : undefined);
  if (command === undefined) {
    io.stderr.write(`${HELP.main}\n`);
    return 2;
  }
  if (command === 'help' || args.help) {
    const topic = command === 'help' ? args.positionals[0] : command;
    if (topic === 'settings') io.stdout.write(`${settingsHelp()}\n`);
    else if (topic !== undefined && topic in HELP) io.stdout.write(`${HELP[topic as keyof typeof HELP]}\n`);
    else if (topic === undefined) io.stdout.write(`${HELP.main}\n`);
    else throw new AgentdError('AGENTD_ERR_USAGE', `no help for "${topic}"`);
    return 0;
  }
  const takesArgs = ['publish', 'memory', 'send', 'request', 'submit', 'inbox', 'dead-letter'];
  if (!takesArgs.includes(command) && args.positionals.length > 0) {
    throw new AgentdError('AGENTD_ERR_USAGE', `${command} takes no arguments (got ${JSON.stringify(args.positionals[0])})`);
  }
  switch (command) {
    case 'run':
      await run(args);
      return undefined; // the daemon decides when to exit
    case 'members':
      return membersCommand(load(args), args.den, args.json, io);
    case 'watch': {
      const stop = new AbortController();
      process.once('SIGINT', () => stop.abort());
      process.once('SIGTERM', () => stop.abort());
      return watchCommand(load(args), args.den, args.json, io, stop.signal);
    }
    case 'publish':
      return publishCommand(load(args), args.positionals, args.json, io);
    case 'memory':
      return memoryCommand(load(args), args.positionals, { json: args.json, yes: args.yes }, io);
    case 'config':
      return configCommand(load(args), io);
    case 'send':
    case 'submit':
      return sendCommand(command, load(args), args.positionals, args.den, args.json, io, connectOnce);
    case 'request':
      return requestCommand(load(args), args.positionals, args.timeout, args.json, io, connectOnce);
    case 'inbox':
      return inboxCommand(load(args), args.positionals, args.den, args.json, io, connectOnce);
    case 'dead-letter':
      return deadLetterCommand(load(args), args.positionals, { den: args.den, json: args.json, yes: args.yes }, io, connectOnce);
    case 'acl': {
      const config = load(args);
      io.stdout.write(`${args.acl.cli ? cliAclRule(config, args.acl.user) : agentAclRule(config, args.acl.agent, args.den, args.acl.user)}\n`);
      return 0;
    }
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    if (code !== undefined) process.exitCode = code;
  },
  (err: unknown) => fail(err),
);
