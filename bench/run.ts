/**
 * `npm run bench`: every benchmark, one after the other, each against its
 * baseline in the same run. Prints a table per benchmark; with --json, one
 * JSON document (with the machine description) instead.
 *
 *   npm run bench [-- --json] [-- --only dispatch,latency]
 *   npm run bench -- scale [--sizes 100,1000] [--modes lease,every] (options go to bench/scale.ts)
 */
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { parseArgs, promisify } from 'node:util';
import { machine } from './lib.ts';
import { printTable } from './stats.ts';

const run = promisify(execFile);
// `npm run bench -- scale --sizes 100,1000`: positional names pick benchmarks; options after them go to each.
const { values } = parseArgs({ options: { json: { type: 'boolean' }, only: { type: 'string' } }, strict: false, allowPositionals: true });
const json = values.json === true;
/** Run by `npm run bench` with no names; the others only when named (`npm run bench -- scale`). */
const BENCHES = ['dispatch', 'latency', 'overload', 'footprint', 'memory', 'sweep', 'detection', 'durable'];
const NAMED_ONLY = ['scale'];
const ALL = [...BENCHES, ...NAMED_ONLY];
// A benchmark's name is a leading positional that names one; everything after the names goes to the benchmarks.
const firstOption = process.argv.slice(2).findIndex((a) => !ALL.includes(a));
const names = firstOption < 0 ? process.argv.slice(2) : process.argv.slice(2, 2 + firstOption);
const picked = [...names, ...(typeof values.only === 'string' ? values.only.split(',') : [])];
const only = picked.length > 0 ? new Set(picked) : undefined;
/** Options for the benchmarks themselves (everything after the names but --json and --only). */
const passOn = process.argv.slice(2 + names.length).filter((arg, i, all) => arg !== '--json' && arg !== '--only' && all[i - 1] !== '--only');

const results: Record<string, unknown> = {};
const started = new Date().toISOString();
for (const name of [...BENCHES, ...NAMED_ONLY]) {
  if (only ? !only.has(name) : NAMED_ONLY.includes(name)) continue;
  const script = fileURLToPath(new URL(`./${name}.ts`, import.meta.url));
  const strip = process.features.typescript ? [] : ['--experimental-strip-types'];
  if (!json) process.stdout.write(`\n== ${name} ==\n`);
  try {
    const { stdout } = await run(process.execPath, [...strip, '--disable-warning=ExperimentalWarning', script, '--json', ...passOn], {
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
