/**
 * The agentd command turns Node's compile cache on before anything loads
 * (src/bin/agentd.ts). Wherever the cache would go, the daemon starts and
 * runs: a default folder under a TMPDIR where mkdir answers ENOENT (Node's
 * own recursive mkdir spun there forever at 100 % CPU), NODE_COMPILE_CACHE
 * naming a file, a cache folder whose files are garbage, two daemons
 * starting at once on one shared folder.
 */
import { readdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { processSuite } from '../helpers/process.ts';
import { keys, seedMessage, waitFor } from '../helpers/util.ts';

const suite = processSuite();
/** An environment variable left out of the child's environment (child_process skips undefined values). */
const UNSET = undefined as unknown as string;

/** Every file under `dir`. */
function files(dir: string): string[] {
  return readdirSync(dir, { recursive: true, encoding: 'utf8' })
    .map((f) => join(dir, f))
    .filter((f) => statSync(f).isFile());
}

describe('compile cache: the daemon starts wherever the cache would go', () => {
  it('default folder under TMPDIR=/proc (mkdir answers ENOENT): ready, handles an event', { timeout: 30_000 }, async () => {
    const d = await suite.start({ plugins: ['recorder.js'], env: { NODE_COMPILE_CACHE: UNSET, TMPDIR: '/proc' } });
    await suite.cmd.publish(keys.channel('cc_ok'), seedMessage('cc_ok', { uid: 'c1' }));
    await waitFor('event handled', () => d.records().some((r) => r.event === 'cc_ok'), 5_000);
  });

  it('NODE_COMPILE_CACHE names a file: ready', { timeout: 30_000 }, async () => {
    const file = join(suite.tmp, 'cache-file');
    writeFileSync(file, 'not a folder');
    await suite.start({ env: { NODE_COMPILE_CACHE: file } });
  });

  it('two commands writing one fresh folder at once, then its files turned to garbage: a daemon on it is ready and handles an event', { timeout: 60_000 }, async () => {
    const dir = join(suite.tmp, 'shared-cache');
    // The cache is written when the process exits (a daemon stopped by SIGKILL writes none): two CLI runs.
    const runs = await Promise.all([suite.run(['--version'], { env: { NODE_COMPILE_CACHE: dir } }), suite.run(['--version'], { env: { NODE_COMPILE_CACHE: dir } })]);
    expect(runs.map((r) => r.code)).toEqual([0, 0]);
    await Promise.all([suite.start({ env: { NODE_COMPILE_CACHE: dir } }), suite.start({ env: { NODE_COMPILE_CACHE: dir } })]);
    const written = files(dir);
    expect(written.length, 'the cache was written').toBeGreaterThan(0);
    written.forEach((f, i) => writeFileSync(f, Buffer.alloc(i % 3 === 0 ? 0 : 97 * i, i)));
    const d = await suite.start({ plugins: ['recorder.js'], env: { NODE_COMPILE_CACHE: dir } });
    await suite.cmd.publish(keys.channel('cc_ok'), seedMessage('cc_ok', { uid: 'c2' }));
    await waitFor('event handled', () => d.records().some((r) => r.event === 'cc_ok'), 5_000);
  });
});
