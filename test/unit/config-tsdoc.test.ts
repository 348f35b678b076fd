/** AgentdConfig's field docs (what an editor shows) say what the settings schema says. */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { listSettings } from '../../src/config/load.ts';

/** Each leaf field of `export interface AgentdConfig` by dotted path: its TSDoc's text and @defaultValue. */
function configFieldDocs(source: string): Map<string, { doc: string; defaultValue: string | undefined }> {
  const start = source.indexOf('export interface AgentdConfig {');
  expect(start, 'src/config/schema.ts declares AgentdConfig').toBeGreaterThan(-1);
  const out = new Map<string, { doc: string; defaultValue: string | undefined }>();
  const path: string[] = [];
  let comment: string | undefined;
  const lines = source.slice(start).split('\n').slice(1);
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!.trim();
    if (line.startsWith('/**')) {
      const body: string[] = [];
      for (; !lines[i]!.includes('*/'); i++) body.push(lines[i]!);
      body.push(lines[i]!);
      comment = body.map((l) => l.trim().replace(/^\/\*\*|\*\/$/g, '').replace(/^\*\s?/, '')).join('\n');
      continue;
    }
    if (line === '}' && path.length === 0) break;
    if (line === '};') {
      path.pop();
      continue;
    }
    const field = /^readonly (\w+): (\{)?/.exec(line);
    if (!field) continue;
    if (field[2]) {
      path.push(field[1]!);
    } else {
      const key = [...path, field[1]!].join('.');
      const text = comment ?? '';
      const [prose = ''] = text.split(/\n\s*\n/);
      out.set(key, { doc: prose.replace(/\s+/g, ' ').trim(), defaultValue: /@defaultValue (.*)/.exec(text)?.[1]?.trim() });
    }
    comment = undefined;
  }
  return out;
}

function expectedDefault(key: string, value: unknown): string {
  if (key === 'agent.id') return 'the host name (`os.hostname()`)';
  if (typeof value === 'string') return `\`'${value}'\``;
  if (Array.isArray(value)) return `\`[${value.map((v) => `'${String(v)}'`).join(', ')}]\``;
  return `\`${String(value)}\``;
}

describe('AgentdConfig TSDoc', () => {
  it('documents every setting with the schema doc and default, and nothing else', () => {
    const fields = configFieldDocs(readFileSync(new URL('../../src/config/schema.ts', import.meta.url), 'utf8'));
    const settings = listSettings();
    expect([...fields.keys()].sort()).toEqual(settings.map((s) => s.key).sort());
    for (const s of settings) {
      expect(fields.get(s.key), s.key).toEqual({ doc: s.doc, defaultValue: expectedDefault(s.key, s.default) });
    }
  });
});
