import { listSettings } from './load.ts';

function formatDefault(key: string, value: unknown): string {
  if (key === 'agent.id') return 'host name';
  if (Array.isArray(value)) return value.length === 0 ? '(none)' : value.join(', ');
  if (value === '') return '(empty)';
  return String(value);
}

/** The settings as a Markdown table, generated from the schema; README.md embeds it and a test keeps them equal. */
export function settingsMarkdown(): string {
  const escape = (s: string): string => s.replace(/\|/g, '\\|');
  const rows = listSettings().map(
    (s) => `| \`${s.key}\` | \`${s.env}\` | \`--${s.arg}\` | ${escape(formatDefault(s.key, s.default))} | ${escape(s.doc)} |`,
  );
  return ['| setting | environment | flag | default | meaning |', '|---|---|---|---|---|', ...rows].join('\n');
}
