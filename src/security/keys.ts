import { createSecretKey, type KeyObject } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import { AgentdError } from '../errors.ts';

/**
 * Signing keys, read from a file (never from the environment, never logged).
 *
 * Format: one key a line, `<kid> <secret>`; blank lines and lines starting
 * with `#` are skipped. The FIRST key signs; every listed key verifies. The
 * secret is the text after the kid (surrounding spaces trimmed), used as
 * UTF-8 bytes for HMAC-SHA256; at least 32 characters (e.g. the output of
 * `openssl rand -base64 32`). A kid is 1-64 characters of A-Z a-z 0-9 . _ -.
 *
 * Rotation without downtime: (1) add the new key as a second line on every
 * agent (it verifies, the old one still signs); (2) move it to the first line
 * everywhere (it signs; the old one still verifies messages in flight);
 * (3) remove the old line. Each step is a rolling restart.
 */

export const KID_PATTERN = /^[A-Za-z0-9._-]{1,64}$/;
export const MIN_SECRET_LENGTH = 32;

export interface SigningKey {
  readonly kid: string;
  /**
   * The HMAC key, as a KeyObject: it never prints its bytes, and createHmac
   * with a KeyObject is ~5x faster than with a Buffer (measured on Node 24).
   * Also kept off enumerable properties.
   */
  readonly secret: KeyObject;
}

export interface KeyRing {
  /** The key that signs. */
  readonly active: SigningKey;
  /** Every key that verifies, by kid. */
  readonly byKid: ReadonlyMap<string, SigningKey>;
}

function makeKey(kid: string, secret: string): SigningKey {
  const key = { kid } as { kid: string; secret: KeyObject };
  Object.defineProperty(key, 'secret', { value: createSecretKey(Buffer.from(secret, 'utf8')), enumerable: false });
  Object.defineProperty(key, 'toJSON', { value: () => ({ kid }), enumerable: false });
  return Object.freeze(key);
}

/** Parses the text of a keys file; `file` only names it in errors (which never quote a secret). */
export function parseKeys(text: string, file: string): KeyRing {
  const byKid = new Map<string, SigningKey>();
  let active: SigningKey | undefined;
  const lineOf = new Map<string, number>();
  const lines = text.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const line = (lines[i] as string).trim();
    if (line === '' || line.startsWith('#')) continue;
    const space = line.search(/\s/);
    const kid = space < 0 ? line : line.slice(0, space);
    const secret = space < 0 ? '' : line.slice(space).trim();
    const where = `security.keysFile ${file} line ${i + 1}`;
    // Errors never quote the key id either: a secret written alone (no kid) would be read as one.
    if (!KID_PATTERN.test(kid)) throw new AgentdError('AGENTD_ERR_CONFIG', `${where}: the key id must be 1-64 characters of A-Z a-z 0-9 . _ - (format: <kid> <secret>)`);
    if (secret === '') throw new AgentdError('AGENTD_ERR_CONFIG', `${where}: one word only, no secret after a key id (format: <kid> <secret>)`);
    if (secret.length < MIN_SECRET_LENGTH) throw new AgentdError('AGENTD_ERR_CONFIG', `${where}: the secret is shorter than ${MIN_SECRET_LENGTH} characters`);
    if (byKid.has(kid)) throw new AgentdError('AGENTD_ERR_CONFIG', `${where}: the key id is listed twice (also on line ${lineOf.get(kid)})`);
    lineOf.set(kid, i + 1);
    const key = makeKey(kid, secret);
    byKid.set(kid, key);
    active ??= key;
  }
  if (active === undefined) throw new AgentdError('AGENTD_ERR_CONFIG', `security.keysFile ${file}: lists no key (format: one "<kid> <secret>" a line)`);
  return { active, byKid };
}

/**
 * Reads a keys file. Refuses a file others may read or write (mode & 007):
 * anyone who reads a key can sign as any agent.
 */
export function loadKeys(file: string): KeyRing {
  let text: string;
  try {
    const st = statSync(file);
    if ((st.mode & 0o007) !== 0) {
      throw new AgentdError('AGENTD_ERR_CONFIG', `security.keysFile ${file}: other users may read or write it (mode ${(st.mode & 0o777).toString(8)}); chmod 600 or 640 it`);
    }
    text = readFileSync(file, 'utf8');
  } catch (err) {
    if (err instanceof AgentdError) throw err;
    throw new AgentdError('AGENTD_ERR_CONFIG', `security.keysFile: cannot read ${file} (${(err as NodeJS.ErrnoException).code ?? 'EIO'})`);
  }
  return parseKeys(text, file);
}
