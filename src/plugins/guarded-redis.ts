import type { Redis } from 'ioredis';

/**
 * What a plugin's `ctx.redis` may not do: it is the daemon's own command
 * connection, shared with presence, the watcher and publishing. Closing it,
 * switching it into subscriber or monitor mode, or changing its database,
 * user or protocol would silence the daemon while it still looks alive.
 */
const REFUSED = new Set([
  'quit',
  'disconnect',
  'end',
  'connect',
  'subscribe',
  'psubscribe',
  'ssubscribe',
  'unsubscribe',
  'punsubscribe',
  'sunsubscribe',
  'monitor',
  'select',
  'auth',
  'hello',
  'reset',
  'shutdown',
  'removeAllListeners',
  // Its events are the connection's state ('end', 'close', 'error', 'ready'): only ioredis raises them.
  'emit',
]);
/**
 * Blocking commands: the connection (and every heartbeat behind it) waits
 * until they return; with a timeout of 0, for ever, so the agent's heartbeat
 * expires while it is alive. XREAD and XREADGROUP only with BLOCK.
 */
const BLOCKING = new Set(['blpop', 'brpop', 'brpoplpush', 'blmove', 'blmpop', 'bzpopmin', 'bzpopmax', 'bzmpop', 'wait', 'waitaof']);
const BLOCKING_WITH_OPTION = new Set(['xread', 'xreadgroup']);
/** CLIENT subcommands that change this connection (or kill others). */
const REFUSED_CLIENT = new Set(['kill', 'setname', 'reply', 'tracking', 'pause', 'no-evict', 'no-touch']);
const GENERIC = new Set(['call', 'callBuffer', 'sendCommand']);

/** A method that may block the connection: blpop, blpopBuffer, xread… */
function isBlocking(prop: string): boolean {
  const name = prop.replace(/Buffer$/, '').toLowerCase();
  return BLOCKING.has(name) || BLOCKING_WITH_OPTION.has(name);
}

function refusal(what: string, plugin: string): Error {
  return new Error(
    `plugin ${plugin}: ctx.redis.${what} is refused: ctx.redis is agentd's shared command connection ` +
      '(for a connection of your own, use ctx.redis.duplicate() and close that one)',
  );
}

function commandName(value: unknown): string {
  if (typeof value === 'string') return value.toLowerCase();
  if (value !== null && typeof value === 'object' && typeof (value as { name?: unknown }).name === 'string') {
    return (value as { name: string }).name.toLowerCase();
  }
  return '';
}

function checkCommand(name: string, args: readonly unknown[], plugin: string): void {
  if (REFUSED.has(name) || BLOCKING.has(name)) throw refusal(`${name}()`, plugin);
  if (BLOCKING_WITH_OPTION.has(name) && args.some((a) => (typeof a === 'string' || Buffer.isBuffer(a)) && a.toString().toLowerCase() === 'block')) {
    throw refusal(`${name}('BLOCK', …)`, plugin);
  }
  if (name === 'client') {
    const sub = commandName(args[0]);
    if (REFUSED_CLIENT.has(sub)) throw refusal(`client('${sub}')`, plugin);
  }
}

/**
 * A view of `target` for one plugin: every command and property as usual,
 * except those above, which throw (synchronously, so an un-awaited call fails
 * the handler instead of becoming a floating rejection). MULTI and pipelines
 * are guarded the same way. Methods are bound to the real client and cached:
 * a command costs one Map lookup more than on the client itself.
 */
export function guardRedis(target: Redis, plugin: string): Redis {
  return guard(target, plugin, undefined) as Redis;
}

/** `root` is the client's view, for a MULTI or pipeline of it: its `.redis` is the view, not the client. */
function guard(target: object, plugin: string, root: { readonly client: object; readonly view: object } | undefined): object {
  const cache = new Map<PropertyKey, unknown>();
  const proxy: object = new Proxy(target, {
    get(t, prop) {
      const hit = cache.get(prop);
      if (hit !== undefined) return hit;
      const value: unknown = Reflect.get(t, prop, t);
      if (root !== undefined && value === root.client) return root.view;
      if (typeof value !== 'function') return value;
      const fn = value as (...args: unknown[]) => unknown;
      let wrapped: (...args: unknown[]) => unknown;
      if (typeof prop === 'string' && REFUSED.has(prop)) {
        wrapped = () => {
          throw refusal(`${prop}()`, plugin);
        };
      } else if (typeof prop === 'string' && GENERIC.has(prop)) {
        wrapped = (...args) => {
          checkCommand(commandName(args[0]), args.slice(1), plugin);
          return fn.apply(t, args);
        };
      } else if (prop === 'client' || (typeof prop === 'string' && isBlocking(prop))) {
        const name = typeof prop === 'string' ? prop.replace(/Buffer$/, '').toLowerCase() : 'client';
        wrapped = (...args) => {
          checkCommand(name, args, plugin);
          return fn.apply(t, args);
        };
      } else if (prop === 'multi' || prop === 'pipeline') {
        wrapped = (...args) => guard(fn.apply(t, args) as object, plugin, root ?? { client: t, view: proxy });
      } else {
        wrapped = (...args) => {
          const out = fn.apply(t, args);
          return out === t ? proxy : out; // chaining (on(), once()) stays on the view
        };
      }
      cache.set(prop, wrapped);
      return wrapped;
    },
    set() {
      throw refusal('<property> = …', plugin);
    },
  });
  return proxy;
}
