/**
 * A plugin module whose top-level await does not finish: on a timer (a fetch
 * that never answers) the daemon stayed "starting" for ever without a line;
 * with nothing pending the event loop ran dry and the process ended 1 with a
 * line that did not name the plugin. Pass: exit 2 within the setup time limit
 * and one line naming the module, from `run` and from `config`.
 */
import { describe, expect, it } from 'vitest';
import { fixture, processSuite } from '../helpers/process.ts';
import { uniqueId } from '../helpers/util.ts';

const LIMIT_MS = 500;

const suite = processSuite({ redis: { requireControl: true } });

describe('a plugin module that never finishes loading', () => {
  for (const [file, command] of [
    ['load-hangs.js', 'run'],
    ['load-never.js', 'run'],
    ['load-hangs.js', 'config'],
  ] as const) {
    it(`${file}, agentd ${command}: exit 2, one line naming the module and the limit`, async () => {
      const res = await suite.run([command], {
        env: { AGENTD_AGENT_ID: uniqueId('load'), AGENTD_PLUGINS: fixture(file), AGENTD_SETUP_TIMEOUT_MS: String(LIMIT_MS) },
        timeoutMs: LIMIT_MS + 15_000,
      });
      expect(res.code, res.stderr).toBe(2);
      const lines = res.stderr.split('\n').filter((l) => l.trim() !== '');
      expect(lines, res.stderr).toHaveLength(1);
      expect(lines[0]).toContain(file);
      expect(lines[0]).toContain(`${LIMIT_MS} ms`);
      expect(res.stdout).not.toContain('agentd ready');
    });
  }
});
