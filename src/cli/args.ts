import { parseArgs, type ParseArgsConfig } from 'node:util';
import { listSettings } from '../config/load.ts';
import { AgentdError } from '../errors.ts';

export const COMMANDS = ['run', 'members', 'watch', 'publish', 'memory', 'config', 'acl', 'help', 'send', 'request', 'submit', 'inbox', 'dead-letter'] as const;
export type CommandName = (typeof COMMANDS)[number];

export interface ParsedArgs {
  readonly command: CommandName | undefined;
  readonly positionals: readonly string[];
  readonly help: boolean;
  readonly version: boolean;
  readonly json: boolean;
  readonly yes: boolean;
  readonly configFile: string | undefined;
  /** Setting flags, re-serialised for convict: ['--redis-url', 'redis://…', …]. */
  readonly settingArgs: readonly string[];
  /** --den, which both sets agent.den and picks the den `members` lists. */
  readonly den: string | undefined;
  /** --timeout MS of `agentd request`. */
  readonly timeout: string | undefined;
  /** acl: --agent ID, --cli, --user NAME. */
  readonly acl: { readonly agent: string | undefined; readonly cli: boolean; readonly user: string | undefined };
}

type Options = NonNullable<ParseArgsConfig['options']>;

function optionTable(): Options {
  const options: Options = {
    help: { type: 'boolean', short: 'h' },
    version: { type: 'boolean', short: 'v' },
    json: { type: 'boolean' },
    yes: { type: 'boolean', short: 'y' },
    config: { type: 'string', short: 'c' },
    timeout: { type: 'string' },
    agent: { type: 'string' },
    cli: { type: 'boolean' },
    user: { type: 'string' },
  };
  for (const s of listSettings()) options[s.arg] = { type: 'string' };
  return options;
}

/** node:util parseArgs's messages, reworded in one clean line (its own advice has an unclosed quote). */
function usageMessage(err: unknown): string {
  const code = (err as { code?: unknown }).code;
  const message = String((err as Error).message ?? err).split('\n')[0] ?? 'bad arguments';
  const option = /'(-[^' ]*)/.exec(message)?.[1];
  if (code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION' && option !== undefined) return `unknown option ${option}`;
  if (code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE' && option !== undefined) {
    return /argument missing/.test(message) ? `option ${option} needs a value` : `option ${option} takes no value`;
  }
  return message;
}

/** Parses the whole command line; unknown flags and a missing value are usage errors (exit 2). */
export function parseCommandLine(argv: readonly string[]): ParsedArgs {
  let parsed: ReturnType<typeof parseArgs<{ options: Options; allowPositionals: true; strict: true }>>;
  try {
    parsed = parseArgs({ args: [...argv], options: optionTable(), allowPositionals: true, strict: true });
  } catch (err) {
    throw new AgentdError('AGENTD_ERR_USAGE', usageMessage(err));
  }
  const [first, ...rest] = parsed.positionals;
  let command: CommandName | undefined;
  if (first !== undefined) {
    if (!(COMMANDS as readonly string[]).includes(first)) {
      throw new AgentdError('AGENTD_ERR_USAGE', `unknown command "${first}" (commands: ${COMMANDS.join(', ')})`);
    }
    command = first as CommandName;
  }
  const values = parsed.values as Record<string, string | boolean | undefined>;
  const settingArgs: string[] = [];
  for (const s of listSettings()) {
    const v = values[s.arg];
    if (typeof v === 'string') settingArgs.push(`--${s.arg}`, v);
  }
  return {
    command,
    positionals: rest,
    help: values['help'] === true,
    version: values['version'] === true,
    json: values['json'] === true,
    yes: values['yes'] === true,
    configFile: typeof values['config'] === 'string' ? values['config'] : undefined,
    settingArgs,
    den: typeof values['den'] === 'string' ? values['den'] : undefined,
    timeout: typeof values['timeout'] === 'string' ? values['timeout'] : undefined,
    acl: { agent: typeof values['agent'] === 'string' ? values['agent'] : undefined, cli: values['cli'] === true, user: typeof values['user'] === 'string' ? values['user'] : undefined },
  };
}

const SETTINGS_HINT = `Settings (each also from a config file and the environment; see \`agentd help settings\`):
  -c, --config FILE         JSON config file (or AGENTD_CONFIG)
  --redis-url URL           redis:// or rediss:// URL (AGENTD_REDIS_URL, REDIS_URL)
  --agent-id ID             this agent's id (AGENTD_AGENT_ID)
  --den DEN                 den id (AGENTD_DEN)
  --plugins LIST            comma-separated plugin modules (AGENTD_PLUGINS)
  --log-level LEVEL         fatal|error|warn|info|debug|trace|silent (AGENTD_LOG_LEVEL)`;

export const HELP: Record<CommandName | 'main', string> = {
  main: `agentd — coordination daemon for AI agents on Redis

Usage: agentd <command> [options]

Commands:
  run                       run the daemon (heartbeat, presence, event dispatch to plugins)
  members [--den D] [--json]
                            list a den's agents (online and down) with host, TTL left, last beat
  watch [--den D] [--json]  print membership changes and events live until Ctrl-C
  publish EVENT [JSON]      publish {"event", "data", ...} on agent:events:EVENT
  memory context AGENT SESSION [--json]
                            print a conversation window
  memory clear AGENT [--yes]
                            delete every agent:AGENT:* key (asks first on a terminal)
  memory stats [--json]     Redis memory use, limit, eviction policy
  config                    print the effective configuration, secrets redacted
  send AGENT EVENT [JSON]   durable: append to inbox:AGENT (handled at least once)
  request AGENT EVENT [JSON] [--timeout MS]
                            send a request and print the handler's reply
  submit EVENT [JSON] [--den D]
                            durable: append to den:D:tasks (one member handles it)
  inbox [AGENT] [--den D]   length, pending, unread, oldest, dead letters of a stream
  dead-letter list|retry|purge [AGENT] [--den D]
                            show, re-queue or delete dead letters
  acl --agent ID --den DEN | --cli
                            print the least-privilege ACL SETUSER line for one agent, or the CLI
  help [COMMAND|settings]   show help

Options:
  -h, --help                help for a command
  -v, --version             print the version

${SETTINGS_HINT}

Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error.`,
  run: `Usage: agentd run [options]

Runs the daemon until SIGTERM or SIGINT. On the first signal it stops taking
events, drains queued handler calls (lifecycle.drainTimeoutMs), closes plugins,
leaves its den and exits 0; a second signal, or the drain timeout, exits 1.
SIGHUP stops nothing: it logs which settings on disk differ from the running
ones (reload is not supported; restart to apply them).

${SETTINGS_HINT}`,
  members: `Usage: agentd members [--den DEN] [--json] [options]

Lists the agents in den:<DEN>:online_agents (default: the configured den) with
their host, registry status, heartbeat TTL left and last beat, then the den's
agents that a watcher reported down.

${SETTINGS_HINT}`,
  watch: `Usage: agentd watch [--den DEN] [--json] [options]

Subscribes to the event patterns (events.patterns) and prints every event as it
happens, one line each: agent_online / agent_offline / agent_down with their
details, other events with their source and data. --den shows only events of
that den; --json prints {"channel", "message"} lines. Runs until Ctrl-C.

${SETTINGS_HINT}`,
  publish: `Usage: agentd publish EVENT [JSON] [--json] [options]

Publishes {"event": EVENT, "data": JSON, "id", "source", "ts", "den"} on the
channel agent:events:EVENT. JSON defaults to null. Prints how many subscribers
received it.

${SETTINGS_HINT}`,
  memory: `Usage: agentd memory context AGENT SESSION [--json]
       agentd memory clear AGENT [--yes]
       agentd memory stats [--json]

context  prints agent:AGENT:session:SESSION:messages, oldest first.
clear    deletes every agent:AGENT:* key (SCAN + UNLINK, never KEYS) and prints
         how many; asks for confirmation on a terminal, needs --yes otherwise.
stats    prints used and peak memory, maxmemory, used/max and the eviction
         policy from INFO memory; warns above memory.warnRatio.

${SETTINGS_HINT}`,
  config: `Usage: agentd config [options]

Prints the effective configuration (defaults < config file < environment <
flags) as JSON, with passwords redacted. Imports each plugin module to check
it (without running its setup). Exits 2 if anything is invalid.

${SETTINGS_HINT}`,
  acl: `Usage: agentd acl --agent ID --den DEN [--user NAME] [options]
       agentd acl --cli [--user NAME] [options]

Prints the ACL SETUSER line (Redis 7) for one agent: the commands it runs,
write access to agent:ID:*, inbox:ID, den:DEN:online_agents and the registry
only, read-only access to every heartbeat, its channels only. --cli prints the
line for the CLI's read-only commands. PASSWORD is a placeholder: replace it.
See docs/security.md.

${SETTINGS_HINT}`,
  help: `Usage: agentd help [COMMAND|settings]`,
  send: `Usage: agentd send AGENT EVENT [JSON] [--json] [options]

Appends {"event": EVENT, "data": JSON, "id", "source", "ts", "den"} to the
stream inbox:AGENT and rings its doorbell. The agent's handlers for EVENT get
it at least once, also if it is offline now (kept for durable.retention).

${SETTINGS_HINT}`,
  request: `Usage: agentd request AGENT EVENT [JSON] [--timeout MS] [--json] [options]

Sends a request to inbox:AGENT and prints the value its handler returns.
Exit 1 when the agent is unknown or down, the handler failed, the request was
dead-lettered, or no reply came within --timeout (default 30000 ms).

${SETTINGS_HINT}`,
  submit: `Usage: agentd submit EVENT [JSON] [--den DEN] [--json] [options]

Appends the event to den:DEN:tasks (default: the configured den); exactly one
live member of the den handles it, at least once.

${SETTINGS_HINT}`,
  inbox: `Usage: agentd inbox [AGENT] [--den DEN] [--json] [options]

For inbox:AGENT (or, without AGENT, den:DEN:tasks): length, entries pending
(read, not acknowledged), unread, the age of the oldest unacknowledged entry,
the dead letters, and each consumer's pending count and idle time.

${SETTINGS_HINT}`,
  'dead-letter': `Usage: agentd dead-letter list [AGENT] [--den DEN] [--json]
       agentd dead-letter retry [AGENT] [--den DEN]
       agentd dead-letter purge [AGENT] [--den DEN] --yes

The dead-letter stream of inbox:AGENT (inbox:AGENT:dead) or of the den's tasks
(den:DEN:dead). list shows each entry's event, attempts and error; retry moves
every entry back to its stream (handled again from attempt 1); purge deletes them.

${SETTINGS_HINT}`,
};

/** Every setting with its flag, environment variable and default. */
export function settingsHelp(): string {
  const lines = ['Settings (later wins: default < config file < environment < flag):', ''];
  for (const s of listSettings()) {
    const def = s.key === 'agent.id' ? '(host name)' : JSON.stringify(s.default);
    lines.push(`  ${s.key}`, `      --${s.arg}, ${s.env}; default ${def}`, `      ${s.doc}`);
  }
  return lines.join('\n');
}
