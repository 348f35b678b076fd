#!/usr/bin/env node
/**
 * The agentd command line. This is the only file that touches `process`:
 * signals, exit codes, standard streams.
 */
import { HELP, parseCommandLine, settingsHelp, type ParsedArgs } from '../cli/args.ts';
import { configCommand, connectOnce, memoryCommand, membersCommand, publishCommand, watchCommand, type Io } from '../cli/commands.ts';
import { deadLetterCommand, inboxCommand, requestCommand, sendCommand } from '../cli/durable.ts';
import { loadConfig } from '../config/load.ts';
import { AgentDaemon } from '../daemon.ts';
import { AgentdError, describeError, isAgentdError } from '../errors.ts';
import { createLogger } from '../log.ts';
import { SystemdNotifier } from '../systemd/notify.ts';
import { VERSION } from '../version.ts';

const io: Io = { stdout: process.stdout, stderr: process.stderr, stdin: process.stdin };

function fail(err: unknown): never {
  const line = isAgentdError(err) ? `${err.message} [${err.code}]` : describeError(err);
  process.stderr.write(`agentd: ${line}\n`);
  if (isAgentdError(err) && err.code === 'AGENTD_ERR_USAGE') process.stderr.write('Try `agentd --help`.\n');
  process.exit(isAgentdError(err) ? err.exitCode : 1);
}

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
  const onSignal = (signal: NodeJS.Signals): void => {
    signals++;
    if (signals === 1) {
      log.info({ signal }, 'shutting down; a second signal forces exit');
      void notifier?.stopping('draining queued events, then leaving');
      void daemon.close().then((result) => {
        process.exitCode = result.drained && result.errors.length === 0 ? 0 : 1;
        process.exit();
      });
      return;
    }
    log.error({ signal, ...daemon.pendingWork() }, 'second signal: exiting now, abandoning queued and running handler calls');
    log.flush();
    process.exit(1);
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  process.on('unhandledRejection', (reason) => {
    log.fatal({ err: describeError(reason) }, 'unhandled promise rejection');
    log.flush();
    process.exit(1);
  });
  process.on('uncaughtException', (err) => {
    log.fatal({ err: describeError(err), stack: err.stack }, 'uncaught exception');
    log.flush();
    process.exit(1);
  });

  try {
    await daemon.start();
  } catch (err) {
    if (isAgentdError(err) && err.code === 'AGENTD_ERR_CLOSED') return; // a signal arrived during start; close() owns the exit
    log.fatal({ code: isAgentdError(err) ? err.code : undefined, err: describeError(err) }, 'start failed');
    log.flush();
    await daemon.close({ drainTimeoutMs: 0 }).catch(() => undefined);
    fail(err);
  }
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
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    if (code !== undefined) process.exitCode = code;
  },
  (err: unknown) => fail(err),
);
