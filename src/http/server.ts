import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { AgentdError } from '../errors.ts';
import type { Logger } from '../log.ts';
import type { Registry } from 'prom-client';
import { STATUS_PAGE_CSP, STATUS_PAGE_HTML } from './status-page.ts';
import type { StatusCollector } from './status.ts';

export interface Readiness {
  readonly ready: boolean;
  readonly state: string;
  /** Why not ready; empty when ready. */
  readonly reasons: readonly string[];
}

export interface HealthSource {
  readiness(): Readiness;
  loopDelayMs(): number;
}

export interface HttpEndpoint {
  readonly port: number;
  close(): Promise<void>;
}

function json(body: unknown): string {
  return `${JSON.stringify(body)}\n`;
}

/**
 * /healthz — the process answers, so its event loop runs (liveness).
 * /readyz  — 200 when ready, else 503 with the reasons (readiness).
 * /metrics — Prometheus text format.
 * /status, /status.json — the den status page and its data, only when `status` is given (http.statusPage).
 */
export async function startHttpEndpoint(options: {
  host: string;
  port: number;
  source: HealthSource;
  registry: Registry;
  log: Logger;
  status?: StatusCollector | undefined;
}): Promise<HttpEndpoint> {
  const { source, registry, log, status } = options;
  const paths = ['/healthz', '/readyz', '/metrics', ...(status ? ['/status', '/status.json'] : [])];
  const server: Server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?', 1)[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD', 'content-type': 'application/json' }).end(json({ error: 'method not allowed' }));
      return;
    }
    if (path === '/healthz') {
      res.writeHead(200, { 'content-type': 'application/json' }).end(json({ status: 'ok', loopDelayMs: source.loopDelayMs() }));
      return;
    }
    if (path === '/readyz') {
      const r = source.readiness();
      res.writeHead(r.ready ? 200 : 503, { 'content-type': 'application/json' }).end(json({ status: r.ready ? 'ready' : 'not ready', state: r.state, reasons: r.reasons }));
      return;
    }
    if (path === '/metrics') {
      registry.metrics().then(
        (text) => res.writeHead(200, { 'content-type': registry.contentType }).end(text),
        (err: unknown) => {
          log.error({ err: String(err) }, 'metrics collection failed');
          res.writeHead(500, { 'content-type': 'text/plain' }).end('metrics collection failed\n');
        },
      );
      return;
    }
    if (status && path === '/status') {
      res
        .writeHead(200, {
          'content-type': 'text/html; charset=utf-8',
          'content-security-policy': STATUS_PAGE_CSP,
          'x-content-type-options': 'nosniff',
          'referrer-policy': 'no-referrer',
          'cache-control': 'no-store',
        })
        .end(STATUS_PAGE_HTML);
      return;
    }
    if (status && path === '/status.json') {
      status.snapshot().then(
        (snapshot) => res.writeHead(200, { 'content-type': 'application/json', 'x-content-type-options': 'nosniff', 'cache-control': 'no-store' }).end(json(snapshot)),
        (err: unknown) => {
          log.error({ err: String(err) }, 'status collection failed');
          res.writeHead(500, { 'content-type': 'application/json' }).end(json({ error: 'status collection failed' }));
        },
      );
      return;
    }
    res.writeHead(404, { 'content-type': 'application/json' }).end(json({ error: 'not found', paths }));
  });
  server.keepAliveTimeout = 5_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) => {
      reject(
        new AgentdError(
          'AGENTD_ERR_CONFIG',
          `http.port: cannot listen on ${options.host}:${options.port} (${err.code ?? err.message}); pick another port or 0 to turn the endpoint off`,
        ),
      );
    });
    server.listen(options.port, options.host, () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  log.info({ host: options.host, port }, 'health and metrics endpoint listening');
  return {
    port,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
