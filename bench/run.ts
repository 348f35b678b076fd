/**
 * `npm run bench`: every benchmark, one after the other, each against its
 * baseline in the same run. Prints a table per benchmark; with --json, one
 * JSON document (with the machine description) instead.
 *
 *   npm run bench [-- --json] [-- --only dispatch,latency] [-- --help]
 *   npm run bench -- scale [--sizes 100,1000] [--modes lease,every] (options go to bench/scale.ts)
 *   npm run bench -- --only footprint --events 100000 --reps 1
 *
 * Options after the names go to each benchmark that takes them (bench/args.ts
 * lists them); one that no picked benchmark takes is an error.
 */
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { parseArgs, promisify } from 'node:util';
import { BENCH_OPTIONS, parseOptions, usage, type BenchName } from './args.ts';
import { machine } from './lib.ts';
import { printTable } from './stats.ts';

const run = promisify(execFile);
/** Run by `npm run bench` with no names; the others only when named (`npm run bench -- scale`). */
const BENCHES: BenchName[] = ['dispatch', 'latency', 'overload', 'footprint', 'memory', 'sweep', 'detection', 'durable'];
const NAMED_ONLY: BenchName[] = ['scale'];
const ALL: BenchName[] = [...BENCHES, ...NAMED_ONLY];
const COMMAND = 'npm run bench --';
const SUMMARY = `Runs the benchmarks (default: ${BENCHES.join(', ')}; ${NAMED_ONLY.join(', ')} only when named), each against its baseline.`;
const OWN = {
  json: { type: 'boolean', help: 'one JSON document (with the machine) instead of tables' },
  only: { type: 'strings', default: [], choices: ALL, help: 'benchmarks to run (as leading names do)' },
} as const;

function fail(message: string): never {
  process.stderr.write(`${COMMAND}: ${message}\n(--help lists the options)\n`);
  process.exit(2);
}

// `npm run bench -- scale --sizes 100,1000`: leading names pick benchmarks; the options after them go to each.
const argv = process.argv.slice(2);
const nameCount = argv.findIndex((a) => !(ALL as string[]).includes(a));
const names = (nameCount < 0 ? argv : argv.slice(0, nameCount)) as BenchName[];
const rest = argv.slice(names.length);
// Every benchmark's options, to tell each token's name and whether it takes a value.
const parseable: Record<string, { type: 'boolean' | 'string' }> = { help: { type: 'boolean' }, json: { type: 'boolean' }, only: { type: 'string' } };
for (const table of Object.values(BENCH_OPTIONS)) {
  for (const [name, spec] of Object.entries(table)) parseable[name] = { type: spec.type === 'boolean' ? 'boolean' : 'string' };
}
let tokens;
try {
  tokens = parseArgs({ args: rest, options: parseable, strict: true, allowPositionals: false, allowNegative: true, tokens: true }).tokens;
} catch (err) {
  fail((err as Error).message);
}
if (tokens.some((t) => t.kind === 'option' && t.name === 'help')) {
  process.stdout.write(usage(COMMAND, SUMMARY, OWN));
  for (const name of ALL) process.stdout.write(`\n${usage(`${COMMAND} ${name}`, `bench/${name}.ts`, BENCH_OPTIONS[name])}`);
  process.exit(0);
}
const own = tokens.filter((t) => t.kind === 'option' && (t.name === 'json' || t.name === 'only'));
const { json, only } = parseOptions(COMMAND, SUMMARY, OWN, own.flatMap((t) => (t.kind === 'option' ? [t.rawName, ...(t.value !== undefined ? [t.value] : [])] : [])));
const picked = [...names, ...only];
const selected = ALL.filter((name) => (picked.length > 0 ? picked.includes(name) : BENCHES.includes(name)));
/** Per benchmark, the options it takes, as given; refused when no picked benchmark takes one, checked before anything runs. */
const passOn = new Map<BenchName, string[]>(selected.map((name) => [name, []]));
for (const t of tokens) {
  if (t.kind !== 'option' || own.includes(t)) continue;
  const takers = selected.filter((name) => t.name in BENCH_OPTIONS[name]);
  if (takers.length === 0) fail(`${t.rawName} is not an option of ${selected.join(', ')}`);
  for (const name of takers) passOn.get(name)!.push(t.rawName, ...(t.value !== undefined ? [t.value] : []));
}
for (const [name, args] of passOn) parseOptions(`${COMMAND} ${name}`, `bench/${name}.ts`, BENCH_OPTIONS[name], args);

const results: Record<string, unknown> = {};
const started = new Date().toISOString();
for (const name of selected) {
  const script = fileURLToPath(new URL(`./${name}.ts`, import.meta.url));
  const strip = process.features.typescript ? [] : ['--experimental-strip-types'];
  if (!json) process.stdout.write(`\n== ${name} ==\n`);
  try {
    const { stdout } = await run(process.execPath, [...strip, '--disable-warning=ExperimentalWarning', script, '--json', ...passOn.get(name)!], {
      maxBuffer: 1 << 26,
      timeout: 15 * 60_000,
    });
    const doc = JSON.parse(stdout.slice(stdout.indexOf('{'))) as { rows: Array<Record<string, string | number>> } & Record<string, unknown>;
    results[name] = doc;
    if (!json) printTable(doc.rows);
  } catch (err) {
    results[name] = { error: (err as Error).message.split('\n')[0] };
    if (!json) console.log(`failed: ${(err as Error).message.split('\n')[0]}`);
  }
}
if (json) console.log(JSON.stringify({ started, machine: machine(), results }, null, 2));
