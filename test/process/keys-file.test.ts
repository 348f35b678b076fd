/**
 * security.keysFile mistakes of a careless operator, with real `agentd run`
 * processes: each stops the start with exit 2 and one line that names the
 * file and line, never the secret (docs/security.md "Keys file").
 */
import { randomBytes } from 'node:crypto';
import { chmodSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { processSuite } from '../helpers/process.ts';

// No Redis: each start stops at the keys file, before connecting.
const suite = processSuite({ redis: false });

async function start(keysFile: string): Promise<{ code: number | null; out: string; lines: string[] }> {
  const res = await suite.run(['run'], {
    redisUrl: 'redis://127.0.0.1:1/0',
    env: { AGENTD_AGENT_ID: 'keys-a1', AGENTD_SECURITY_SIGNING: 'require', AGENTD_SECURITY_KEYS_FILE: keysFile },
    timeoutMs: 15_000,
  });
  return { code: res.code, out: `${res.stdout}${res.stderr}`, lines: res.stderr.split('\n').filter((l) => l.trim() !== '') };
}

describe('keys file mistakes', () => {
  it('a secret written without its key id (openssl rand -hex 32) is refused without printing it', async () => {
    const secret = randomBytes(32).toString('hex');
    const file = join(suite.tmp, 'hex');
    writeFileSync(file, `${secret}\n`, { mode: 0o600 });
    const res = await start(file);
    expect(res.code).toBe(2);
    expect(res.lines).toHaveLength(1);
    expect(res.lines[0]).toMatch(new RegExp(`security\\.keysFile ${file} line 1: `));
    expect(res.out).not.toContain(secret);
    expect(res.out).not.toContain(secret.slice(0, 16));
  });

  it('a world-readable file, also behind a symlink, and a missing one: exit 2, one line, no secret', async () => {
    const secret = randomBytes(32).toString('base64');
    const open = join(suite.tmp, 'open');
    writeFileSync(open, `k1 ${secret}\n`);
    chmodSync(open, 0o644);
    const link = join(suite.tmp, 'link');
    symlinkSync(open, link);
    for (const [file, why] of [[open, /other users may read/], [link, /other users may read/], [join(suite.tmp, 'missing'), /cannot read .*ENOENT/]] as const) {
      const res = await start(file);
      expect(res.code).toBe(2);
      expect(res.lines).toHaveLength(1);
      expect(res.lines[0]).toMatch(why);
      expect(res.out).not.toContain(secret);
    }
  });
});
