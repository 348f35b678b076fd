/**
 * A TCP proxy for fault tests: sits between a daemon and a real redis-server
 * and, per connection, forwards, holds, discards, delays or resets bytes.
 *
 * Modes (`direction`: 'up' is client → server, 'down' server → client):
 *   pass       forward everything
 *   pause      hold: stop reading in that direction (TCP backpressure); what
 *              was held is delivered when the mode changes back, like a path
 *              whose packets are retransmitted once it heals
 *   blackhole  read and discard: the bytes are gone for good (a NAT or proxy
 *              that keeps the TCP connection open and forwards nothing)
 *   latency    forward every chunk `ms` later, in order
 *   drop       reset the connection (RST) — on an open connection at once,
 *              and every new connection as soon as it is accepted
 *
 * A connection's mode is, in order: its own override (`conn.setMode`), the
 * proxy's rule (`proxy.setRule`, asked again on every chunk, so it can match
 * on what the client has sent so far, e.g. its CLIENT SETNAME), and the
 * proxy's default (`proxy.setMode`).
 */
import { createServer, connect as netConnect, type Server, type Socket } from 'node:net';
import { freePort } from './ports.ts';

export type Direction = 'both' | 'up' | 'down';
export type ProxyMode =
  | { readonly kind: 'pass' }
  | { readonly kind: 'pause'; readonly direction?: Direction }
  | { readonly kind: 'blackhole'; readonly direction?: Direction }
  | { readonly kind: 'latency'; readonly ms: number }
  | { readonly kind: 'drop' };

export const PASS: ProxyMode = { kind: 'pass' };

export interface ProxiedConnection {
  readonly id: number;
  readonly openedAt: number;
  closedAt: number | undefined;
  /** The first 4 KB the client sent (RESP text: AUTH, CLIENT SETNAME, SELECT...). */
  readonly sent: string;
  /** Bytes forwarded / discarded so far, per direction. */
  readonly forwarded: { up: number; down: number };
  readonly discarded: { up: number; down: number };
  /** Overrides the rule and the default for this connection (undefined: back to them). */
  setMode(mode: ProxyMode | undefined): void;
  /** Resets (RST) both sides. */
  drop(): void;
  readonly closed: boolean;
}

export interface TcpProxy {
  readonly port: number;
  readonly host: string;
  /** redis://host:port/db through the proxy. */
  url(db?: number): string;
  /** Every connection accepted so far, open or closed, in order. */
  readonly connections: readonly ProxiedConnection[];
  /** Open connections whose client sent `text` (e.g. a connection name). */
  open(text?: string): ProxiedConnection[];
  setMode(mode: ProxyMode): void;
  setRule(rule: ((c: ProxiedConnection) => ProxyMode | undefined) | undefined): void;
  close(): Promise<void>;
}

const SNIFF_BYTES = 4096;

function applies(mode: ProxyMode, dir: 'up' | 'down'): boolean {
  if (mode.kind !== 'pause' && mode.kind !== 'blackhole') return false;
  const d = mode.direction ?? 'both';
  return d === 'both' || d === dir;
}

export async function startProxy(target: { host: string; port: number }): Promise<TcpProxy> {
  const host = '127.0.0.1';
  const port = await freePort();
  let defaultMode: ProxyMode = PASS;
  let rule: ((c: ProxiedConnection) => ProxyMode | undefined) | undefined;
  const connections: Conn[] = [];
  let nextId = 1;

  class Conn implements ProxiedConnection {
    readonly id = nextId++;
    readonly openedAt = Date.now();
    closedAt: number | undefined;
    sent = '';
    readonly forwarded = { up: 0, down: 0 };
    readonly discarded = { up: 0, down: 0 };
    #override: ProxyMode | undefined;
    readonly #client: Socket;
    readonly #server: Socket;
    #lastDelivery = { up: 0, down: 0 };

    constructor(client: Socket) {
      this.#client = client;
      this.#server = netConnect({ host: target.host, port: target.port });
      client.on('error', () => undefined);
      this.#server.on('error', () => undefined);
      const end = (): void => this.#close();
      client.on('close', end);
      this.#server.on('close', end);
      client.on('data', (chunk: Buffer) => this.#onData('up', chunk));
      this.#server.on('data', (chunk: Buffer) => this.#onData('down', chunk));
      this.refresh();
    }

    get closed(): boolean {
      return this.closedAt !== undefined;
    }

    get mode(): ProxyMode {
      return this.#override ?? rule?.(this) ?? defaultMode;
    }

    setMode(mode: ProxyMode | undefined): void {
      this.#override = mode;
      this.refresh();
    }

    /** Applies the current mode to the sockets' flow (pause holds by not reading). */
    refresh(): void {
      if (this.closed) return;
      const mode = this.mode;
      if (mode.kind === 'drop') {
        this.drop();
        return;
      }
      for (const [dir, source] of [
        ['up', this.#client],
        ['down', this.#server],
      ] as const) {
        if (mode.kind === 'pause' && applies(mode, dir)) source.pause();
        else source.resume();
      }
    }

    #onData(dir: 'up' | 'down', chunk: Buffer): void {
      if (dir === 'up' && this.sent.length < SNIFF_BYTES) this.sent += chunk.subarray(0, SNIFF_BYTES - this.sent.length).toString('latin1');
      const mode = this.mode;
      const source = dir === 'up' ? this.#client : this.#server;
      const sink = dir === 'up' ? this.#server : this.#client;
      if (mode.kind === 'drop') {
        this.drop();
        return;
      }
      if (mode.kind === 'blackhole' && applies(mode, dir)) {
        this.discarded[dir] += chunk.length;
        return;
      }
      if (mode.kind === 'pause' && applies(mode, dir)) {
        // Arrived before the pause took hold: hold it by unshifting and stop reading.
        source.pause();
        source.unshift(chunk);
        return;
      }
      if (mode.kind === 'latency' && mode.ms > 0) {
        // In order: never deliver before the previous chunk of this direction.
        const at = Math.max(Date.now() + mode.ms, this.#lastDelivery[dir]);
        this.#lastDelivery[dir] = at;
        setTimeout(() => {
          if (!sink.destroyed) {
            this.forwarded[dir] += chunk.length;
            sink.write(chunk);
          }
        }, at - Date.now()).unref();
        return;
      }
      this.forwarded[dir] += chunk.length;
      sink.write(chunk);
    }

    drop(): void {
      if (!this.#client.destroyed) this.#client.resetAndDestroy();
      if (!this.#server.destroyed) this.#server.resetAndDestroy();
      this.#close();
    }

    #close(): void {
      if (this.closed) return;
      this.closedAt = Date.now();
      this.#client.destroy();
      this.#server.destroy();
    }
  }

  const server: Server = createServer((socket) => {
    const c = new Conn(socket);
    connections.push(c);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });

  const refreshAll = (): void => {
    for (const c of connections) c.refresh();
  };

  return {
    port,
    host,
    url: (db = 0) => `redis://${host}:${port}/${db}`,
    connections,
    open: (text) => connections.filter((c) => !c.closed && (text === undefined || c.sent.includes(text))),
    setMode(mode) {
      defaultMode = mode;
      refreshAll();
    },
    setRule(r) {
      rule = r;
      refreshAll();
    },
    async close() {
      for (const c of connections) c.drop();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
