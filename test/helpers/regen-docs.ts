/**
 * Rewrites the generated parts of the docs from the settings schema: the
 * README settings table and config/agentd.json. `npm run docs`; the docs test
 * fails when they are out of date.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { listSettings } from '../../src/config/load.ts';
import { settingsMarkdown } from '../../src/config/table.ts';

const readme = new URL('../../README.md', import.meta.url);
const text = readFileSync(readme, 'utf8');
writeFileSync(readme, text.replace(/(<!-- settings:start -->\n)[\s\S]*?(\n<!-- settings:end -->)/, `$1${settingsMarkdown()}$2`));

const defaults: Record<string, unknown> = {};
for (const s of listSettings()) {
  if (s.key === 'agent.id') continue; // the host name: machine-specific
  const parts = s.key.split('.');
  let node = defaults;
  for (const part of parts.slice(0, -1)) node = (node[part] ??= {}) as Record<string, unknown>;
  node[parts.at(-1)!] = s.default;
}
writeFileSync(new URL('../../config/agentd.json', import.meta.url), `${JSON.stringify(defaults, null, 2)}\n`);
