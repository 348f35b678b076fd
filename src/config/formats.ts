import convict from 'convict';
import { ID_PATTERN } from './schema.ts';

/** Custom convict formats. Messages never echo a value that could hold a secret. */

let registered = false;

function positiveNumber(value: unknown): number {
  if (typeof value !== 'string' || value.trim() === '') return value as number;
  const n = Number(value);
  // Text that is no number stays text, so the message quotes what was given (not "null" for NaN).
  return Number.isNaN(n) ? (value as unknown as number) : n;
}

function splitList(value: unknown): unknown {
  if (typeof value !== 'string') return value;
  return value
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s.length > 0);
}

/** `host:port` (IPv6 in brackets) as host and port, or undefined when it is not one. */
export function parseHostPort(entry: string): { host: string; port: number } | undefined {
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([^\s:[\]]+)):(\d{1,5})$/.exec(entry.trim());
  if (!m) return undefined;
  const port = Number(m[3]);
  if (port < 1 || port > 65_535) return undefined;
  return { host: (m[1] ?? m[2])!, port };
}

export function checkRedisUrl(value: unknown): void {
  if (typeof value !== 'string' || value.length === 0) throw new Error('must be a redis:// or rediss:// URL');
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new Error('must be a redis:// or rediss:// URL (it does not parse as a URL)');
  }
  if (url.protocol !== 'redis:' && url.protocol !== 'rediss:') {
    throw new Error(`must be a redis:// or rediss:// URL (got scheme "${url.protocol.slice(0, 20)}")`);
  }
  if (url.hostname === '') throw new Error('must name a host');
  // The client decodes these; a bad escape would only fail at connect ("URI malformed").
  for (const [part, raw] of [
    ['password', url.password],
    ['user name', url.username],
  ] as const) {
    try {
      decodeURIComponent(raw);
    } catch {
      if (url.password !== '') url.password = '***';
      throw new Error(`the ${part} has a malformed % escape (write a literal % as %25) (got ${url.toString()})`);
    }
  }
  const db = url.pathname.replace(/^\//, '');
  if (db !== '' && !/^\d{1,5}$/.test(db)) throw new Error(`must end in a database number, like /0 (got "/${db.slice(0, 20)}")`);
}

export function registerFormats(): void {
  if (registered) return;
  registered = true;
  convict.addFormats({
    'redis-url': { validate: checkRedisUrl },
    'agent-id': {
      validate(value: unknown) {
        if (typeof value !== 'string' || !ID_PATTERN.test(value)) {
          throw new Error(
            `must be 1-128 characters of A-Z a-z 0-9 . _ - (got ${JSON.stringify(String(value).slice(0, 140))})`,
          );
        }
      },
    },
    'positive-int': {
      validate(value: unknown) {
        if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 1) {
          throw new Error(`must be a whole number of at least 1 (got ${JSON.stringify(value)})`);
        }
      },
      coerce: positiveNumber,
    },
    'positive-number': {
      validate(value: unknown) {
        if (typeof value !== 'number' || !Number.isFinite(value) || value <= 0) {
          throw new Error(`must be a number above 0 (got ${JSON.stringify(value)})`);
        }
      },
      coerce: positiveNumber,
    },
    'non-negative-int': {
      validate(value: unknown) {
        if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
          throw new Error(`must be a whole number of at least 0 (got ${JSON.stringify(value)})`);
        }
      },
      coerce: positiveNumber,
    },
    // convict's own Boolean reads every string but "false" as true, so "off" would turn a feature on.
    switch: {
      validate(value: unknown) {
        if (typeof value !== 'boolean') throw new Error(`must be one of true, false, on, off, yes, no, 1, 0 (got ${JSON.stringify(value)})`);
      },
      coerce(value: unknown) {
        if (typeof value !== 'string') return value;
        const v = value.trim().toLowerCase();
        if (['true', 'on', 'yes', '1'].includes(v)) return true;
        if (['false', 'off', 'no', '0'].includes(v)) return false;
        return value;
      },
    },
    'port-or-off': {
      validate(value: unknown) {
        if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0 || value > 65_535) {
          throw new Error(`must be a TCP port, 1-65535, or 0 for off (got ${JSON.stringify(value)})`);
        }
      },
      coerce: positiveNumber,
    },
    ratio: {
      validate(value: unknown) {
        if (typeof value !== 'number' || !(value > 0 && value <= 1)) throw new Error(`must be a number above 0 and at most 1 (got ${JSON.stringify(value)})`);
      },
      coerce: positiveNumber,
    },
    'optional-path': {
      validate(value: unknown) {
        if (typeof value !== 'string') throw new Error('must be a file path or empty');
      },
    },
    'pattern-list': {
      validate(value: unknown) {
        if (!Array.isArray(value) || value.length === 0) throw new Error('must list at least one channel pattern');
        for (const p of value) {
          if (typeof p !== 'string' || p.length === 0) throw new Error('each channel pattern must be a non-empty string');
        }
      },
      coerce: splitList,
    },
    'host-port-list': {
      validate(value: unknown) {
        if (!Array.isArray(value)) throw new Error('must be a list of host:port');
        for (const entry of value) {
          if (typeof entry !== 'string' || parseHostPort(entry) === undefined) {
            throw new Error(`each entry must be host:port with a port of 1-65535, IPv6 as [::1]:26379 (got ${JSON.stringify(String(entry).slice(0, 80))})`);
          }
        }
      },
      coerce: splitList,
    },
    'den-list': {
      validate(value: unknown) {
        if (!Array.isArray(value)) throw new Error('must be a list of den ids, or "*"');
        for (const den of value) {
          if (typeof den !== 'string' || (den !== '*' && !ID_PATTERN.test(den))) {
            throw new Error(`each den must be 1-128 characters of A-Z a-z 0-9 . _ - or "*" (got ${JSON.stringify(den)})`);
          }
        }
        if (value.includes('*') && value.length > 1) throw new Error('"*" watches every den; list it alone');
      },
      coerce: splitList,
    },
    'plugin-list': {
      validate(value: unknown) {
        if (!Array.isArray(value)) throw new Error('must be a list of plugin modules');
        value.forEach((entry: unknown, i: number) => {
          if (typeof entry === 'string' && entry.length > 0) return;
          if (entry !== null && typeof entry === 'object' && !Array.isArray(entry)) {
            const { module, options, ...rest } = entry as Record<string, unknown>;
            const extra = Object.keys(rest);
            if (extra.length > 0) throw new Error(`entry ${i} has unknown key "${extra[0]}" (allowed: module, options)`);
            if (typeof module !== 'string' || module.length === 0) throw new Error(`entry ${i} needs a "module" string`);
            if (options !== undefined && (options === null || typeof options !== 'object' || Array.isArray(options))) {
              throw new Error(`entry ${i} "options" must be an object`);
            }
            return;
          }
          throw new Error(`entry ${i} must be a module specifier or {"module": "...", "options": {...}}`);
        });
      },
      coerce: splitList,
    },
  });
}
