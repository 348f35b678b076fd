/** `npm run demo` from start to finish: what a newcomer runs first must work. */
import { spawn } from 'node:child_process';
import { connect } from 'node:net';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { childEnv } from '../helpers/daemon.ts';
import { processSuite } from '../helpers/process.ts';

// No Redis of the suite's: the demo starts its own. The suite stops the demo after the test.
const suite = processSuite({ redis: false });

interface PageSeen {
  html: string;
  members: Array<{ id: string; status: string }>;
}

/**
 * Runs the demo to the end (stdin is not a terminal: no pauses) and, as soon
 * as it prints the status page URL, loads the page and its JSON.
 */
function runDemo(env: NodeJS.ProcessEnv, timeoutMs: number): Promise<{ stdout: string; page: PageSeen | undefined; pageError: string | undefined }> {
  const strip = process.features.typescript ? [] : ['--experimental-strip-types'];
  const child = spawn(process.execPath, [...strip, '--disable-warning=ExperimentalWarning', DEMO], { env, stdio: ['pipe', 'pipe', 'inherit'] });
  suite.trackProcess(child);
  let stdout = '';
  let page: Promise<PageSeen> | undefined;
  createInterface({ input: child.stdout! }).on('line', (line) => {
    stdout += `${line}\n`;
    const url = /status +(http:\/\/127\.0\.0\.1:\d+\/status)\b/.exec(line)?.[1];
    if (url && !page) {
      page = (async () => {
        const html = await (await fetch(url)).text();
        const json = (await (await fetch(`${url}.json`)).json()) as { members: Array<{ id: string; status: string }> };
        return { html, members: json.members };
      })();
    }
  });
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  return new Promise((resolve) => {
    child.once('close', () => {
      clearTimeout(timer);
      if (!page) return resolve({ stdout, page: undefined, pageError: 'no status URL printed' });
      page.then(
        (p) => resolve({ stdout, page: p, pageError: undefined }),
        (err: unknown) => resolve({ stdout, page: undefined, pageError: String(err) }),
      );
    });
  });
}

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
    const { stdout, page, pageError } = await runDemo(childEnv({}), 60_000);
    // The status page of the demo den was up while the demo ran, listing the three agents.
    expect(pageError).toBeUndefined();
    expect(page?.html).toContain('<table id="members-table">');
    expect(page?.members.map((m) => m.id).sort()).toEqual(['alpha', 'bravo', 'charlie']);
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
