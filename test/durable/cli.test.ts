/** `agentd send | request | submit | inbox | dead-letter` as real child processes against a running daemon. */
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { processSuite, readRecords } from '../helpers/process.ts';
import { uniqueId, waitFor } from '../helpers/util.ts';

const den = uniqueId('cli-den');
const suite = processSuite({
  redis: { requireControl: true },
  env: { AGENTD_DEN: den, AGENTD_DURABLE_ATTEMPTS: '2', AGENTD_DURABLE_BACKOFF_MS: '50', AGENTD_DURABLE_POLL_INTERVAL: '0.2' },
});

describe('durable commands', () => {
  let file: string;
  const id = uniqueId('cli-target');

  const done = () => readRecords<{ n: number; phase: string }>(file);
  const agentd = (...args: string[]) => suite.run(args, { env: { AGENTD_AGENT_ID: uniqueId('cli') }, timeoutMs: 20_000 });

  beforeAll(async () => {
    file = join(suite.tmp, 'rec.jsonl');
    await suite.start({ id, den, plugins: ['durable-worker.js'], env: { DURABLE_RECORD_FILE: file } });
  });

  it('send and submit reach the handlers; usage errors exit 2', async () => {
    const sent = await agentd('send', id, 'job', '{"n": 1}', '--json');
    expect(sent.code, sent.stderr).toBe(0);
    expect(JSON.parse(sent.stdout)).toMatchObject({ stream: `inbox:${id}` });
    const submitted = await agentd('submit', 'job', '{"n": 2}', '--den', den);
    expect(submitted.code, submitted.stderr).toBe(0);
    expect(submitted.stdout).toContain(`den:${den}:tasks`);
    await waitFor('both handled', () => done().filter((l) => l.phase === 'done').length === 2);
    expect((await agentd('send')).code).toBe(2);
    expect((await agentd('send', id, 'job', '{bad')).code).toBe(2);
    expect((await agentd('send', 'no:colons', 'job')).code).toBe(2);
  });

  it('request prints the reply; unknown agent and timeout exit 1', async () => {
    const ok = await agentd('request', id, 'echo', '{"a": 1}', '--json');
    expect(ok.code, ok.stderr).toBe(0);
    expect(JSON.parse(ok.stdout)).toMatchObject({ ok: true, data: { echoed: { a: 1 }, by: id } });
    const unknown = await agentd('request', uniqueId('nobody'), 'echo', '1');
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toContain('AGENTD_ERR_NO_SUCH_AGENT');
    const slow = await agentd('request', id, 'job', '{"n": 3, "ms": 2000}', '--timeout', '300');
    expect(slow.code).toBe(1);
    expect(slow.stderr).toContain('AGENTD_ERR_REQUEST_TIMEOUT');
    expect((await agentd('request', id, 'echo', '1', '--timeout', 'soon')).code).toBe(2);
  });

  it('inbox shows the stream; dead-letter list, retry and purge', async () => {
    const info = await agentd('inbox', id, '--json');
    expect(info.code, info.stderr).toBe(0);
    expect(JSON.parse(info.stdout)).toMatchObject({ stream: `inbox:${id}`, deadLetters: 0 });
    await agentd('submit', 'job', '{"n": 9, "failUntil": 99}');
    await waitFor('dead-lettered', async () => (await suite.cmd.xlen(`den:${den}:dead`)) === 1);
    const list = await agentd('dead-letter', 'list', '--json');
    expect(list.code, list.stderr).toBe(0);
    const entries = (JSON.parse(list.stdout) as { entries: Array<{ event: string; attempts: number; error: string }> }).entries;
    expect(entries).toHaveLength(1);
    expect(entries[0]).toMatchObject({ event: 'job', attempts: 2 });
    expect(entries[0]!.error).toContain('failing attempt 2');
    const tasks = await agentd('inbox', '--den', den, '--json');
    expect(JSON.parse(tasks.stdout)).toMatchObject({ stream: `den:${den}:tasks`, deadLetters: 1, pending: 0 });
    const retry = await agentd('dead-letter', 'retry');
    expect(retry.code, retry.stderr).toBe(0);
    expect(retry.stdout).toContain('moved 1 dead letter');
    // Handled again from attempt 1, fails again, dead-lettered again.
    await waitFor('dead-lettered again', async () => (await suite.cmd.xlen(`den:${den}:dead`)) === 1 && done().filter((l) => l.n === 9).length === 4, 10_000);
    expect((await agentd('dead-letter', 'purge')).code).toBe(2);
    const purge = await agentd('dead-letter', 'purge', '--yes');
    expect(purge.code).toBe(0);
    expect(await suite.cmd.exists(`den:${den}:dead`)).toBe(0);
  });
});
