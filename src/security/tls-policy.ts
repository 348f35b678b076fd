import { isIP } from 'node:net';
import { AgentdError } from '../errors.ts';
import type { AgentdConfig } from '../config/schema.ts';

/** Loopback: 127.0.0.0/8, ::1 and the name localhost (development on one machine). */
export function isLoopbackHost(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '').toLowerCase();
  // Only the name itself: glibc resolves other names under .localhost through DNS, which may answer anything.
  if (h === 'localhost') return true;
  if (isIP(h) === 4) return h.startsWith('127.');
  if (isIP(h) === 6) return h === '::1' || /^::ffff:127\./.test(h) || /^(0{1,4}:){7}0{0,3}1$/.test(h);
  return false;
}

/**
 * `redis.tls.required`: refuses a plain redis:// URL (auto: unless the host is
 * loopback; true: always). Throws AGENTD_ERR_CONFIG (exit 2) with one line
 * that names the host, never the password.
 */
export function checkTlsRequired(config: Pick<AgentdConfig, 'redis'>): void {
  const { url, tls } = config.redis;
  const required = tls.required;
  if (required === 'false' || url.startsWith('rediss:')) return;
  let host: string;
  try {
    host = new URL(url).hostname;
  } catch {
    return; // the URL check reports it
  }
  if (required === 'auto' && isLoopbackHost(host)) return;
  throw new AgentdError(
    'AGENTD_ERR_CONFIG',
    `redis.tls.required: redis.url is a plain redis:// URL to ${required === 'auto' ? 'the non-loopback host ' : ''}${host.slice(0, 100)}; use rediss:// (or set redis.tls.required=false on a trusted network)`,
  );
}
