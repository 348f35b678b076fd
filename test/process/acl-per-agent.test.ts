/**
 * Issue 12, item 4: least-privilege users per agent. `agentd acl --agent ID
 * --den DEN` prints one ACL SETUSER line per agent; a den of three real
 * `agentd run` processes, each logged in as its own user (and signing with
 * security.signing=require), works — presence, a death detected and reaped,
 * announced once and accepted by both survivors — and each user is refused
 * (NOPERM) when it writes another agent's heartbeat or memory.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { newSecret, writeKeysFile } from '../helpers/keys.ts';
import { processSuite, readRecords } from '../helpers/process.ts';
import { collect, hasMsg, keys, uniqueId, waitFor } from '../helpers/util.ts';

const run = promisify(execFile);
const PASSWORDS = ['pw-agent-one-8f3a', 'pw-agent-two-1c9d', 'pw-agent-three-77e0'];

const suite = processSuite({ redis: { requireControl: true } });

describe('one least-privilege Redis user per agent', () => {
  const cli = async (user: string, password: string, ...args: string[]): Promise<string> => {
    const { stdout } = await run('redis-cli', ['-h', '127.0.0.1', '-p', String(suite.redis.port), '--user', user, '--pass', password, '--no-auth-warning', ...args]);
    return stdout.trim();
  };
  /** The words `agentd acl <args>` prints after ACL SETUSER <user>, checked to name `user`. */
  const aclWords = async (args: string[], user: string): Promise<string[]> => {
    const res = await suite.run(['acl', ...args], { timeoutMs: 15_000 });
    expect(res.code).toBe(0);
    const words = res.stdout.trim().split(' ');
    expect(words.slice(0, 3)).toEqual(['ACL', 'SETUSER', user]);
    return words.slice(3);
  };

  it('three agents as three users: presence, a reaped death, and NOPERM on each other\'s keys', { timeout: 90_000 }, async () => {
    const admin = suite.cmd;
    const den = uniqueId('acl3den');
    const ids = [uniqueId('u1'), uniqueId('u2'), uniqueId('u3')];
    const secret = newSecret();
    const keysFile = writeKeysFile([['k1', secret]], suite.tmp);
    const urls: string[] = [];
    for (const [i, id] of ids.entries()) urls.push(await suite.aclUser(`agent-${id}`, await aclWords(['--agent', id, '--den', den], `agent-${id}`), PASSWORDS[i]!));
    const downs = await collect(suite.redis.client(), keys.channel('agent_down'));
    const { agents: daemons } = await suite.group(
      ids.length,
      {
        den,
        plugins: ['recorder.js'],
        env: {
          AGENTD_HEARTBEAT_TTL: '2',
          AGENTD_HEARTBEAT_INTERVAL: '0.5',
          AGENTD_SWEEP_INTERVAL: '0.3',
          AGENTD_SECURITY_SIGNING: 'require',
          AGENTD_SECURITY_KEYS_FILE: keysFile,
        },
      },
      (i) => ({ id: ids[i]!, redisUrl: urls[i]! }),
    );
    const files = daemons.map((d) => d.file);
    expect((await admin.smembers(keys.den(den))).sort()).toEqual([...ids].sort());

    // Each user is refused on another agent's heartbeat and memory; its own keys and reading peers' heartbeats work.
    const [a, b] = ids as [string, string, string];
    expect(await cli(`agent-${a}`, PASSWORDS[0]!, 'SET', keys.heartbeat(b), '1')).toMatch(/^NOPERM/);
    expect(await cli(`agent-${a}`, PASSWORDS[0]!, 'SET', `agent:${b}:memory:notes`, 'x')).toMatch(/^NOPERM/);
    expect(await cli(`agent-${a}`, PASSWORDS[0]!, 'DEL', `agent:${b}:session:s1:messages`)).toMatch(/^NOPERM/);
    expect(await cli(`agent-${b}`, PASSWORDS[1]!, 'EXPIRE', keys.heartbeat(a), '1')).toMatch(/^NOPERM/);
    expect(await cli(`agent-${a}`, PASSWORDS[0]!, 'SADD', keys.den('another-den'), 'ghost')).toMatch(/^NOPERM/);
    expect(await cli(`agent-${a}`, PASSWORDS[0]!, 'SET', `agent:${a}:memory:notes`, 'mine')).toBe('OK');
    expect(await cli(`agent-${a}`, PASSWORDS[0]!, 'EXISTS', keys.heartbeat(b))).toBe('1');
    expect(await admin.exists(keys.heartbeat(b))).toBe(1);

    // A real death: the third agent is killed; a survivor reaps it as its own ACL user.
    const victim = ids[2]!;
    daemons[2]!.signal('SIGKILL');
    await waitFor('the killed agent announced down', () => downs.some((m) => (m.json?.['data'] as { agent?: string } | undefined)?.agent === victim), 15_000);
    await waitFor('both survivors accepted the signed agent_down', () => files.slice(0, 2).every((f) => readRecords(f).some((r) => r.event === 'agent_down' && (r.data as { agent?: string }).agent === victim)), 5_000);
    await new Promise((r) => setTimeout(r, 1_000));
    expect(downs.filter((m) => (m.json?.['data'] as { agent?: string } | undefined)?.agent === victim)).toHaveLength(1);
    expect((await admin.smembers(keys.den(den))).sort()).toEqual([a, b].sort());
    for (const d of daemons.slice(0, 2)) {
      expect(d.logs.filter(hasMsg(/NOPERM|refused/))).toEqual([]);
      const all = [...d.logs.map((l) => JSON.stringify(l)), ...d.stderr].join('\n');
      expect(all).not.toContain(secret);
      for (const pw of PASSWORDS) expect(all).not.toContain(pw);
    }
  });

  it('--cli prints a read-only user: `agentd members` works with it, writes are refused', { timeout: 30_000 }, async () => {
    const url = await suite.aclUser('agentd-cli', await aclWords(['--cli'], 'agentd-cli'), 'cli-pw-5521');
    const den = uniqueId('clid');
    await suite.cmd.sadd(keys.den(den), 'x1');
    const members = await suite.run(['members', '--den', den], { redisUrl: url, timeoutMs: 15_000 });
    expect(members.code).toBe(0);
    expect(members.stdout).toContain('x1');
    expect(`${members.stdout}${members.stderr}`).not.toContain('cli-pw-5521');
    expect(await cli('agentd-cli', 'cli-pw-5521', 'SET', 'agent:x1:heartbeat', '1')).toMatch(/^NOPERM/);
    expect(await cli('agentd-cli', 'cli-pw-5521', 'PUBLISH', 'agent:events:agent_down', '{}')).toMatch(/^NOPERM/);
  });
});
