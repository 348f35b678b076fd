/**
 * The Python helper of docs/security.md (run as written there, with
 * /usr/bin/python3 and redis-py) and agentd sign and verify the same bytes,
 * both ways.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import type { AgentEvent } from '../../src/bus/envelope.ts';
import { definePlugin } from '../../src/plugins/types.ts';
import { makeDaemon, redisSuite } from '../helpers/inproc.ts';
import { waitFor } from '../helpers/util.ts';
import { newSecret, writeKeysFile } from '../helpers/keys.ts';

const run = promisify(execFile);
const suite = redisSuite();

const doc = readFileSync(new URL('../../docs/security.md', import.meta.url), 'utf8');
const helper = /<!-- python-helper:start -->\n```python\n([\s\S]*?)```\n<!-- python-helper:end -->/.exec(doc)?.[1];
const dir = mkdtempSync(join(tmpdir(), 'agentd-pysign-'));
writeFileSync(join(dir, 'agentd_signing.py'), helper ?? '');
writeFileSync(
  join(dir, 'driver.py'),
  `import json, sys, redis
from agentd_signing import load_keys, sign, verify, envelope
cmd = sys.argv[1]
if cmd == "publish":
    url, channel, event, data, source, den, keys = sys.argv[2:9]
    env = envelope(event, json.loads(data), source, den)
    print(redis.Redis.from_url(url).publish(channel, sign(channel, env, load_keys(keys))))
elif cmd == "verify":
    channel, keys = sys.argv[2:4]
    try:
        env = verify(channel, sys.stdin.buffer.read(), load_keys(keys))
        print(json.dumps({"ok": True, "event": env["event"], "data": env["data"]}))
    except ValueError as e:
        print(json.dumps({"ok": False, "reason": str(e)}))
`,
);

async function py(...args: string[]): Promise<string> {
  const { stdout } = await run('/usr/bin/python3', [join(dir, 'driver.py'), ...args], { cwd: dir });
  return stdout.trim();
}

function pyVerify(channel: string, keys: string, payload: string): Promise<{ ok: boolean; reason?: string; event?: string; data?: unknown }> {
  return new Promise((resolve, reject) => {
    const child = execFile('/usr/bin/python3', [join(dir, 'driver.py'), 'verify', channel, keys], { cwd: dir }, (err, stdout) => {
      if (err) reject(err);
      else resolve(JSON.parse(stdout) as { ok: boolean; reason?: string });
    });
    child.stdin?.end(payload);
  });
}

describe('signed envelopes: the Python helper of docs/security.md and agentd agree', () => {
  it('the helper is in the docs', () => {
    expect(helper).toContain('def verify(');
  });

  it('Python signs, agentd (require) dispatches it; unsigned or signed with another key is dropped by reason', async () => {
    const secret = newSecret();
    const keys = writeKeysFile([['k1', secret]]);
    const otherKeys = writeKeysFile([['k9', newSecret()]]);
    const wrongSecret = writeKeysFile([['k1', newSecret()]]);
    const seen: AgentEvent[] = [];
    const t = await suite.start(
      makeDaemon(suite.redis.url, { security: { signing: 'require', keysFile: keys } }, [definePlugin({ name: 'rec', handlers: { py_event: (e) => void seen.push(e) } })]),
    );
    const channel = 'agent:events:py_event';
    await py('publish', suite.redis.url, channel, 'py_event', '{"n": 1, "text": "Grüße 🙂"}', 'py-agent', 'den-py', keys);
    await waitFor('the signed Python event', () => seen.length === 1);
    expect(seen[0]).toMatchObject({ event: 'py_event', data: { n: 1, text: 'Grüße 🙂' }, source: 'py-agent' });
    // The same key in a file saved by a Windows editor (a UTF-8 BOM, CRLF, trailing spaces): the same key for both.
    const windows = join(mkdtempSync(join(tmpdir(), 'agentd-keys-')), 'keys');
    writeFileSync(windows, `\uFEFFk1 ${secret}  \r\n`, { mode: 0o600 });
    await py('publish', suite.redis.url, channel, 'py_event', '{"n": 5}', 'py-agent', 'den-py', windows);
    await waitFor('the event signed with the Windows-saved keys file', () => seen.length === 2);
    await suite.cmd.publish(channel, JSON.stringify({ event: 'py_event', data: { n: 2 } }));
    await py('publish', suite.redis.url, channel, 'py_event', '{"n": 3}', 'py-agent', 'den-py', otherKeys);
    await py('publish', suite.redis.url, channel, 'py_event', '{"n": 4}', 'py-agent', 'den-py', wrongSecret);
    await waitFor('three refusals', () => {
      const inv = t.daemon.stats().invalid;
      return inv.unsigned === 1 && inv.unknown_key === 1 && inv.bad_signature === 1;
    });
    expect(seen).toHaveLength(2);
    // No line of the log holds a secret.
    for (const line of t.lines) expect(JSON.stringify(line)).not.toContain(secret);
  });

  it('agentd signs, Python verifies; a changed byte or another channel fails', async () => {
    const secret = newSecret();
    const keys = writeKeysFile([['k1', secret]]);
    const listener = suite.redis.client();
    const raw: Array<{ channel: string; message: string }> = [];
    listener.on('pmessage', (_p: string, channel: string, message: string) => raw.push({ channel, message }));
    await listener.psubscribe('agent:events:*');
    const t = await suite.start(makeDaemon(suite.redis.url, { security: { signing: 'require', keysFile: keys } }));
    await t.daemon.publish('js_event', { text: 'naïve café ☕', list: [1, 2.5, null] });
    await waitFor('both messages', () => raw.some((m) => m.channel === 'agent:events:js_event') && raw.some((m) => m.channel === 'agent:events:agent_online'));
    const js = raw.find((m) => m.channel === 'agent:events:js_event')!;
    const online = raw.find((m) => m.channel === 'agent:events:agent_online')!;
    expect(await pyVerify(js.channel, keys, js.message)).toEqual({ ok: true, event: 'js_event', data: { text: 'naïve café ☕', list: [1, 2.5, null] } });
    expect(await pyVerify(online.channel, keys, online.message)).toMatchObject({ ok: true, event: 'agent_online' });
    expect(await pyVerify(js.channel, keys, js.message.replace('café', 'cafe'))).toEqual({ ok: false, reason: 'bad_signature' });
    expect(await pyVerify('agent:events:other', keys, js.message)).toEqual({ ok: false, reason: 'bad_signature' });
    expect(await pyVerify(js.channel, keys, JSON.stringify({ event: 'js_event' }))).toEqual({ ok: false, reason: 'unsigned' });
    listener.disconnect();
  });
});
