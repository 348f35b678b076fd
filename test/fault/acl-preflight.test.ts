/**
 * The server check's pipelined probes (INFO server + INFO replication sent
 * together; EXEC + DISCARD sent together) against ACL users that lack one of
 * them, or that may run INFO only for some sections. Pass: exit 2 with one
 * AGENTD_ERR_REDIS_PERMISSION line naming the command, nothing raw.
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { freePort } from '../helpers/ports.ts';
import { processSuite } from '../helpers/process.ts';
import { uniqueId } from '../helpers/util.ts';

const PASSWORD = 'acl-preflight-password';
const suite = processSuite({ redis: { requireControl: true, args: ['--notify-keyspace-events', 'Kx'] } });

function ruleWords(): string[] {
  const doc = readFileSync(new URL('../../docs/operations.md', import.meta.url), 'utf8');
  const line = doc.split('\n').find((l) => l.startsWith('ACL SETUSER agentd ')) as string;
  return line.split(' ').slice(3);
}

describe('server check: pipelined probes against partial ACL users', () => {
  const cases: Array<[string, (w: string[]) => string[], RegExp]> = [
    ['without +discard', (w) => w.filter((x) => x !== '+discard'), /commands .*\bDISCARD\b/],
    ['without +exec and +discard', (w) => w.filter((x) => x !== '+exec' && x !== '+discard'), /commands .*\bEXEC\b.*\bDISCARD\b|commands .*\bDISCARD\b.*\bEXEC\b/],
    ['without +multi and +discard', (w) => w.filter((x) => x !== '+multi' && x !== '+discard'), /commands .*\bMULTI\b/],
    ['INFO server only (+info|server)', (w) => w.map((x) => (x === '+info' ? '+info|server' : x)), /commands .*\bINFO\b/],
    ['INFO replication only (+info|replication)', (w) => w.map((x) => (x === '+info' ? '+info|replication' : x)), /commands .*\bINFO\b/],
  ];
  cases.forEach(([name, edit, names], i) => {
    it(`${name}: exit 2, one line naming it`, { timeout: 30_000 }, async () => {
      const user = `agentd-pf-${i}`;
      const url = await suite.aclUser(user, edit(ruleWords()), PASSWORD);
      const r = await suite.run(['run'], {
        redisUrl: url,
        env: { AGENTD_AGENT_ID: uniqueId('pf'), AGENTD_DEN: uniqueId('pfden'), AGENTD_HTTP_PORT: String(await freePort()) },
        timeoutMs: 20_000,
      });
      const lines = r.stderr.split('\n').filter((l) => l.trim() !== '');
      expect({ code: r.code, lines }, `stdout: ${r.stdout.slice(-2000)}`).toMatchObject({ code: 2, lines: [expect.stringMatching(/\[AGENTD_ERR_REDIS_PERMISSION\]$/)] });
      expect(lines[0]).toMatch(names);
      expect(r.stdout.split('\n').filter((l) => l.trim() !== '' && !l.startsWith('{'))).toEqual([]);
    });
  });
});
