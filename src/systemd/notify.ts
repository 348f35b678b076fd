import { execFile } from 'node:child_process';
import { createRequire } from 'node:module';
import { describeError } from '../errors.ts';
import type { Logger } from '../log.ts';

/**
 * systemd's notify protocol (sd_notify): datagrams of `VAR=value` lines on
 * the unix socket named by NOTIFY_SOCKET. Node has no unix datagram sockets,
 * so the optional native module `unix-dgram` sends them; without it (or for
 * an abstract socket) the `systemd-notify` tool does, which needs
 * `NotifyAccess=all` in the unit because the sender is then a child process.
 */

type Send = (message: string) => Promise<void>;

interface UnixDgramSocket {
  send(buf: Buffer, offset: number, length: number, path: string, callback: (err?: Error) => void): void;
  on(event: 'error', listener: (err: Error) => void): void;
  close(): void;
}

function nativeSender(socketPath: string): { send: Send; close: () => void } | undefined {
  if (socketPath.startsWith('@')) return undefined; // abstract namespace: the module cannot address it
  let socket: UnixDgramSocket;
  try {
    const unix = createRequire(import.meta.url)('unix-dgram') as { createSocket(type: 'unix_dgram'): UnixDgramSocket };
    socket = unix.createSocket('unix_dgram');
  } catch {
    return undefined;
  }
  socket.on('error', () => undefined); // each send reports its own error
  return {
    send: (message) =>
      new Promise((resolve, reject) => {
        const buf = Buffer.from(message);
        socket.send(buf, 0, buf.length, socketPath, (err) => (err ? reject(err) : resolve()));
      }),
    close: () => socket.close(),
  };
}

function toolSender(pid: number): Send {
  return (message) =>
    new Promise((resolve, reject) => {
      execFile('systemd-notify', [`--pid=${pid}`, ...message.split('\n')], { timeout: 5_000 }, (err) => (err ? reject(err) : resolve()));
    });
}

export interface NotifierOptions {
  /** NOTIFY_SOCKET; nothing is sent when it is absent. */
  readonly socket: string | undefined;
  /** WATCHDOG_USEC: send WATCHDOG=1 at half this period. */
  readonly watchdogUsec?: string | undefined;
  /** WATCHDOG_PID: the watchdog is for us only if this is absent or our pid. */
  readonly watchdogPid?: string | undefined;
  readonly pid: number;
  readonly log: Logger;
}

export class SystemdNotifier {
  readonly #send: Send;
  readonly #close: () => void;
  readonly #log: Logger;
  readonly #watchdogMs: number | undefined;
  #timer: NodeJS.Timeout | undefined;
  #failed = false;
  /** How messages go out: the native module or the systemd-notify tool. */
  readonly transport: 'unix-dgram' | 'systemd-notify';

  private constructor(send: Send, close: () => void, transport: SystemdNotifier['transport'], watchdogMs: number | undefined, log: Logger) {
    this.#send = send;
    this.#close = close;
    this.transport = transport;
    this.#watchdogMs = watchdogMs;
    this.#log = log;
  }

  /** A notifier when systemd asked for one (NOTIFY_SOCKET set), else undefined. */
  static create(options: NotifierOptions): SystemdNotifier | undefined {
    if (!options.socket) return undefined;
    const log = options.log.child({ component: 'systemd' });
    const usec = Number(options.watchdogUsec);
    const forUs = options.watchdogPid === undefined || options.watchdogPid === '' || Number(options.watchdogPid) === options.pid;
    const watchdogMs = Number.isFinite(usec) && usec > 0 && forUs ? Math.max(1, Math.floor(usec / 2000)) : undefined;
    const native = nativeSender(options.socket);
    const notifier = native
      ? new SystemdNotifier(native.send, native.close, 'unix-dgram', watchdogMs, log)
      : new SystemdNotifier(toolSender(options.pid), () => undefined, 'systemd-notify', watchdogMs, log);
    log.info({ transport: notifier.transport, watchdogMs }, 'systemd notify socket found');
    return notifier;
  }

  /** Sends `VAR=value` lines; failures are logged once and never thrown. */
  async notify(fields: Readonly<Record<string, string>>): Promise<void> {
    const message = Object.entries(fields)
      .map(([k, v]) => `${k}=${v.replace(/\n/g, ' ')}`)
      .join('\n');
    try {
      await this.#send(message);
    } catch (err) {
      if (!this.#failed) {
        this.#failed = true;
        this.#log.error({ err: describeError(err), transport: this.transport }, 'cannot notify systemd');
      }
    }
  }

  ready(status: string): Promise<void> {
    return this.notify({ READY: '1', STATUS: status });
  }

  status(status: string): Promise<void> {
    return this.notify({ STATUS: status });
  }

  /** The watchdog keeps running while draining: TimeoutStopSec bounds the stop. */
  stopping(status: string): Promise<void> {
    return this.notify({ STOPPING: '1', STATUS: status });
  }

  /** WATCHDOG=1 from a timer on the event loop: a frozen loop stops the pings and systemd restarts us. */
  startWatchdog(): void {
    if (this.#watchdogMs === undefined || this.#timer) return;
    void this.notify({ WATCHDOG: '1' });
    this.#timer = setInterval(() => void this.notify({ WATCHDOG: '1' }), this.#watchdogMs);
    this.#timer.unref();
  }

  stopWatchdog(): void {
    clearInterval(this.#timer);
    this.#timer = undefined;
  }

  close(): void {
    this.stopWatchdog();
    this.#close();
  }
}
