import { randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** A fresh signing secret (44 characters of base64). */
export const newSecret = (): string => randomBytes(32).toString('base64');

/** Writes a keys file (mode 600) with `[kid, secret]` lines; returns its path. */
export function writeKeysFile(keys: ReadonlyArray<readonly [string, string]>, dir = mkdtempSync(join(tmpdir(), 'agentd-keys-'))): string {
  const file = join(dir, `keys-${randomBytes(3).toString('hex')}`);
  writeFileSync(file, `# test keys\n${keys.map(([kid, secret]) => `${kid} ${secret}`).join('\n')}\n`, { mode: 0o600 });
  return file;
}
