/** `npm run demo` from start to finish: what a newcomer runs first must work. */
import { execFile } from 'node:child_process';
import { connect } from 'node:net';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';

const run = promisify(execFile);
const DEMO = fileURLToPath(new URL('../../examples/demo.ts', import.meta.url));

function refused(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1');
    s.once('connect', () => {
      s.destroy();
      resolve(false);
    });
    s.once('error', () => resolve(true));
  });
}

describe('npm run demo', () => {
  it('runs three agents, reports the killed one down exactly once, and cleans up', async () => {
    const strip = process.features.typescript ? [] : ['--experimental-strip-types'];
    const env: NodeJS.ProcessEnv = {};
    for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('AGENTD_') && k !== 'REDIS_URL') env[k] = v;
    const { stdout } = await run(process.execPath, [...strip, '--disable-warning=ExperimentalWarning', DEMO], { timeout: 60_000, env });
    expect(stdout).toMatch(/agent_online +alpha/);
    expect(stdout).toMatch(/agent_online +bravo/);
    expect(stdout).toMatch(/agent_online +charlie/);
    expect(stdout).toMatch(/agent:alpha:task:demo-task-1:status = done/);
    expect(stdout).toMatch(/agent_down +charlie +reported by (alpha|bravo) via (sweep|expiry)/);
    expect(stdout).toMatch(/registry says charlie is down/);
    expect(stdout).toContain('agent_down for charlie: 1 (exactly once); all as expected');
    expect(stdout).toContain('cleanup  agents stopped, Redis removed');
    const seconds = Number(/all as expected; ([\d.]+) s/.exec(stdout)?.[1]);
    expect(seconds).toBeLessThan(30);
    const port = Number(/redis:\/\/127\.0\.0\.1:(\d+)/.exec(stdout)?.[1]);
    if (port) expect(await refused(port)).toBe(true); // the throwaway Redis is gone
  });
});
