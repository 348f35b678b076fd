/**
 * `npm run bench`: every benchmark, one after the other, each against its
 * baseline in the same run. Prints a table per benchmark; with --json, one
 * JSON document (with the machine description) instead.
 *
 *   npm run bench [-- --json] [-- --only dispatch,latency]
 */
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { machine } from './lib.ts';
import { printTable } from './stats.ts';

const run = promisify(execFile);
const json = process.argv.includes('--json');
const onlyAt = process.argv.indexOf('--only');
const only = onlyAt > 0 ? new Set(process.argv[onlyAt + 1]?.split(',')) : undefined;
const BENCHES = ['dispatch', 'latency', 'overload', 'footprint', 'memory', 'sweep', 'detection', 'durable'];

const results: Record<string, unknown> = {};
const started = new Date().toISOString();
for (const name of BENCHES) {
  if (only && !only.has(name)) continue;
  const script = fileURLToPath(new URL(`./${name}.ts`, import.meta.url));
  const strip = process.features.typescript ? [] : ['--experimental-strip-types'];
  if (!json) process.stdout.write(`\n== ${name} ==\n`);
  try {
    const { stdout } = await run(process.execPath, [...strip, '--disable-warning=ExperimentalWarning', script, '--json'], {
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
