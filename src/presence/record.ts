import type { RegistryRecord } from './presence.ts';

/**
 * A registry record as read back from Redis. Whoever may write the registry
 * can put anything there (another program, an older agentd, a hostile
 * client), so each field is `unknown` until its reader checks it.
 */
export type UntrustedRecord = { readonly [K in keyof RegistryRecord]?: unknown };

/** The JSON object a registry value holds; undefined when absent, not JSON or not an object. */
export function recordObject(raw: string | null | undefined): Readonly<Record<string, unknown>> | undefined {
  if (!raw) return undefined;
  let value: unknown;
  try {
    value = JSON.parse(raw);
  } catch {
    return undefined;
  }
  return value !== null && typeof value === 'object' && !Array.isArray(value) ? (value as Record<string, unknown>) : undefined;
}

/** The fields of a registry value, unchecked: {} when it is not a JSON object (a record written badly shows nothing). */
export function parseRecord(raw: string | null | undefined): UntrustedRecord {
  return recordObject(raw) ?? {};
}
