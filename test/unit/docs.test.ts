import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { settingsMarkdown } from '../../src/config/table.ts';
import { listSettings } from '../../src/config/load.ts';
import { AgentdError, Code, ErrorCodes, type ErrorCode } from '../../src/errors.ts';

const read = (path: string) => readFileSync(new URL(`../../${path}`, import.meta.url), 'utf8');

describe('docs match the code', () => {
  it('README settings table is the one generated from the schema', () => {
    const readme = read('README.md');
    const m = /<!-- settings:start -->\n([\s\S]*?)\n<!-- settings:end -->/.exec(readme);
    expect(m, 'README.md needs the settings markers').not.toBeNull();
    // On a mismatch, run `npm run docs`.
    expect(m![1]).toBe(settingsMarkdown());
  });

  it('documents every error code in docs/errors.md, and no code that does not exist', () => {
    const doc = read('docs/errors.md');
    for (const code of Object.keys(ErrorCodes)) expect(doc, code).toContain(`## ${code}`);
    const documented = [...doc.matchAll(/^## (AGENTD_ERR_\w+)/gm)].map((m) => m[1]);
    expect(documented.sort()).toEqual(Object.keys(ErrorCodes).sort());
  });

  it('lists every code in the table of docs/errors.md with its exit code and meaning', () => {
    const doc = read('docs/errors.md');
    const rows = new Map([...doc.matchAll(/^\| `(AGENTD_ERR_\w+)` \| ([^|]*) \| ([^|]*) \|$/gm)].map((m) => [m[1], { exit: m[2]!.trim(), meaning: m[3]!.trim() }]));
    expect([...rows.keys()].sort()).toEqual(Object.keys(ErrorCodes).sort());
    for (const [code, meaning] of Object.entries(ErrorCodes) as Array<[ErrorCode, string]>) {
      expect(rows.get(code)?.meaning, code).toBe(meaning);
      expect(rows.get(code)?.exit, code).toMatch(new RegExp(`^${new AgentdError(code, '').exitCode}\\b`));
      expect(Code[code], 'Code names each code by itself').toBe(code);
    }
    expect(Object.keys(Code).sort()).toEqual(Object.keys(ErrorCodes).sort());
  });

  it('config/agentd.json holds exactly the schema defaults (agent.id aside)', () => {
    const file = JSON.parse(read('config/agentd.json')) as Record<string, unknown>;
    const get = (obj: unknown, key: string) => key.split('.').reduce<unknown>((o, k) => (o as Record<string, unknown> | undefined)?.[k], obj);
    for (const s of listSettings()) {
      if (s.key === 'agent.id') expect(get(file, s.key), s.key).toBeUndefined();
      else expect(get(file, s.key), s.key).toEqual(s.default);
    }
  });
});
