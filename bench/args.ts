/**
 * Command-line options for the bench scripts: one `node:util` `parseArgs`
 * (strict) behind a table of typed options with defaults. An unknown option,
 * a missing value or a value of the wrong type is an error that names the
 * option (exit 2); `--help` prints the usage and exits 0.
 *
 * The options of the benchmarks `npm run bench` runs are in BENCH_OPTIONS
 * below rather than in each file, so that bench/run.ts can hand each
 * benchmark only the options it takes and refuse the ones none takes.
 */
import { parseArgs } from 'node:util';

interface Common {
  /** One line for --help. */
  readonly help: string;
}
export type OptionSpec = Common &
  (
    | { readonly type: 'boolean'; readonly default?: boolean }
    // Without a default, a number or string option is required.
    | { readonly type: 'number'; readonly default?: number; readonly integer?: boolean; readonly min?: number }
    | { readonly type: 'string'; readonly default?: string; readonly choices?: readonly string[] }
    /** Comma-separated. */
    | { readonly type: 'numbers'; readonly default: readonly number[] }
    | { readonly type: 'strings'; readonly default: readonly string[]; readonly choices?: readonly string[] }
  );
export type OptionTable = Readonly<Record<string, OptionSpec>>;

type Choice<S> = S extends { readonly choices: readonly (infer C extends string)[] } ? C : string;
type ValueOf<S extends OptionSpec> = S['type'] extends 'boolean'
  ? boolean
  : S['type'] extends 'number'
    ? number
    : S['type'] extends 'numbers'
      ? number[]
      : S['type'] extends 'strings'
        ? Array<Choice<S>>
        : Choice<S>;
export type Options<T extends OptionTable> = { -readonly [K in keyof T]: ValueOf<T[K]> };

class OptionError extends Error {}

function convert(name: string, spec: OptionSpec, raw: string | boolean | undefined): unknown {
  const flag = `--${name}`;
  if (spec.type === 'boolean') return raw ?? spec.default ?? false;
  if (raw === undefined) {
    if (spec.default === undefined) throw new OptionError(`${flag} is required`);
    return Array.isArray(spec.default) ? [...spec.default] : spec.default;
  }
  const text = String(raw);
  const number = (s: string, integer: boolean, min: number | undefined): number => {
    const n = s.trim() === '' ? Number.NaN : Number(s);
    if (!Number.isFinite(n) || (integer && !Number.isInteger(n)) || (min !== undefined && n < min)) {
      throw new OptionError(`${flag} wants ${integer ? 'an integer' : 'a number'}${min !== undefined ? ` >= ${min}` : ''}, not '${s}'`);
    }
    return n;
  };
  const choose = (s: string, choices: readonly string[] | undefined): string => {
    if (choices && !choices.includes(s)) throw new OptionError(`${flag} wants one of ${choices.join(', ')}, not '${s}'`);
    return s;
  };
  switch (spec.type) {
    case 'number':
      return number(text, spec.integer ?? false, spec.min);
    case 'numbers':
      return text.split(',').map((s) => number(s, true, 1));
    case 'strings':
      return text.split(',').map((s) => choose(s, spec.choices));
    default:
      return choose(text, spec.choices);
  }
}

function describe(name: string, spec: OptionSpec): [string, string] {
  const value = spec.type === 'boolean' ? '' : spec.type === 'numbers' ? ' N,N' : spec.type === 'strings' ? ' A,B' : spec.type === 'number' ? ' N' : ' S';
  const on = spec.type === 'boolean' && spec.default === true;
  const flag = on ? `--[no-]${name}` : `--${name}${value}`;
  const def = spec.type === 'boolean' ? undefined : Array.isArray(spec.default) ? spec.default.join(',') : spec.default;
  const choices = 'choices' in spec && spec.choices ? ` (${spec.choices.join('|')})` : '';
  const tail = spec.type === 'boolean' ? (on ? ' (default on)' : '') : def === undefined ? ' (required)' : def === '' ? '' : ` (default ${def})`;
  return [flag, `${spec.help}${choices}${tail}`];
}

/** The --help text: a usage line, the summary, one line per option. */
export function usage(command: string, summary: string, table: OptionTable): string {
  const rows = [...Object.entries(table).map(([n, s]) => describe(n, s)), ['--help', 'print this and exit'] as [string, string]];
  const width = Math.max(...rows.map(([f]) => f.length));
  return `usage: ${command} [options]\n${summary}\n\n${rows.map(([f, h]) => `  ${f.padEnd(width)}  ${h}`).join('\n')}\n`;
}

/**
 * Parses `argv` (default: this process's arguments) against `table`. On --help prints the usage and exits 0;
 * on an error prints it with the command's name and exits 2.
 */
export function parseOptions<const T extends OptionTable>(command: string, summary: string, table: T, argv = process.argv.slice(2)): Options<T> {
  try {
    const { values }: { values: Record<string, string | boolean | undefined> } = parseArgs({
      args: argv,
      options: { ...Object.fromEntries(Object.entries(table).map(([n, s]) => [n, { type: s.type === 'boolean' ? 'boolean' : 'string' } as const])), help: { type: 'boolean' } },
      strict: true,
      allowPositionals: false,
      allowNegative: true,
    });
    if (values['help'] === true) {
      process.stdout.write(usage(command, summary, table));
      process.exit(0);
    }
    return Object.fromEntries(Object.entries(table).map(([n, s]) => [n, convert(n, s, values[n])])) as Options<T>;
  } catch (err) {
    const known = err instanceof OptionError || (err as { code?: string }).code?.startsWith('ERR_PARSE_ARGS');
    if (!known) throw err;
    process.stderr.write(`${command}: ${(err as Error).message}\n(--help lists the options)\n`);
    process.exit(2);
  }
}

const json = { type: 'boolean', help: 'one JSON document on stdout instead of a table' } as const;

/** The options of each benchmark `npm run bench` runs (bench/<name>.ts). */
export const BENCH_OPTIONS = {
  dispatch: {
    events: { type: 'number', default: 100_000, integer: true, min: 1, help: 'events in the backlog of each run' },
    reps: { type: 'number', default: 3, integer: true, min: 1, help: 'runs of each consumer (the median is reported)' },
    peers: { type: 'boolean', default: true, help: 'run the Moleculer peer too (installed on first use)' },
    json,
  },
  latency: {
    scale: { type: 'number', default: 1, min: 0.1, help: 'stretches each rate step (3, 2 and 1 s at 1)' },
    json,
  },
  overload: {
    seconds: { type: 'number', default: 10, min: 1, help: 'how long events are published at twice the capacity' },
    json,
  },
  footprint: {
    events: { type: 'number', default: 1_000_000, integer: true, min: 1, help: 'events in the flood' },
    reps: { type: 'number', default: 3, integer: true, min: 1, help: 'runs of each consumer (the median is reported)' },
    json,
  },
  memory: {
    ops: { type: 'number', default: 20_000, integer: true, min: 1, help: 'operations per measurement' },
    reps: { type: 'number', default: 3, integer: true, min: 1, help: 'runs of each measurement (the median is reported)' },
    json,
  },
  sweep: {
    sizes: { type: 'numbers', default: [100, 1_000, 10_000], help: 'den sizes' },
    json,
  },
  detection: {
    kills: { type: 'number', default: 15, integer: true, min: 1, help: 'victims killed per mode' },
    json,
  },
  durable: {
    events: { type: 'number', default: 50_000, integer: true, min: 1, help: 'entries in the backlog of each run' },
    reps: { type: 'number', default: 3, integer: true, min: 1, help: 'runs of each consumer (the median is reported)' },
    requests: { type: 'number', default: 2_000, integer: true, min: 1, help: 'sequential request/reply round trips' },
    json,
  },
  scale: {
    sizes: { type: 'numbers', default: [100, 1_000, 5_000, 10_000], help: 'den sizes' },
    modes: { type: 'strings', default: ['lease', 'every'], choices: ['lease', 'every'], help: 'sweeper modes' },
    window: { type: 'number', default: 20, min: 1, help: 'seconds of the steady window' },
    daemons: { type: 'number', default: 20, integer: true, min: 0, help: 'real daemons among the members' },
    processes: { type: 'number', default: 2, integer: true, min: 1, help: 'member processes at the most' },
    notify: { type: 'boolean', default: true, help: 'keyspace expiry notifications on' },
    // Thousands of members reacting in two Node processes starve those processes (not Redis) and delay the sweeper.
    'notify-lights': { type: 'boolean', help: 'hand expiry notifications to the light members too' },
    part: { type: 'strings', default: ['presence', 'delivery'], choices: ['presence', 'delivery'], help: 'parts to run' },
    subscribers: { type: 'numbers', default: [1, 10, 100, 1_000], help: 'subscriber counts of the delivery part' },
    'max-every': { type: 'number', default: 2_000, integer: true, min: 0, help: 'largest den run with every member sweeping (larger: projected)' },
    json,
  },
} as const satisfies Record<string, OptionTable>;
export type BenchName = keyof typeof BENCH_OPTIONS;

/** The options of bench/<name>.ts, parsed from this process's arguments. */
export function benchOptions<N extends BenchName>(name: N, summary: string): Options<(typeof BENCH_OPTIONS)[N]> {
  return parseOptions(`node bench/${name}.ts`, summary, BENCH_OPTIONS[name]);
}
