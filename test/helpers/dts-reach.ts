/**
 * Which declarations are reachable from a package entry's public signatures,
 * read from the emitted `.d.ts` files (TypeScript 7 has no compiler API to
 * ask). Each file's top-level statements start in column 0 (tsc's
 * declaration emit); a declaration refers to a name when that name occurs in
 * its text, comments and string literals left out. A property that happens
 * to share its name with a declaration of the same file counts as a
 * reference too: the check errs towards "export more". A value named only
 * in a type query (`(typeof LOG_LEVELS)[number]`) is not a reference: the
 * type it gives can be named without it.
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, relative, resolve } from 'node:path';

interface Module {
  /** Top-level declarations by name: their text, comments and strings removed. */
  readonly decls: Map<string, string>;
  /** The same with string literals kept, to tell two declarations of one name apart. */
  readonly source: Map<string, string>;
  /** Local name → where it comes from (relative imports only; packages are their own business). */
  readonly imports: Map<string, { readonly file: string; readonly name: string }>;
  /** Exported name → local name, or a re-export from another file. */
  readonly exports: Map<string, { readonly local: string } | { readonly file: string; readonly name: string }>;
  readonly star: string[];
}

/** Comments removed; with `blankStrings`, the contents of string literals too (a string literal type refers to nothing). */
function strip(text: string, blankStrings: boolean): string {
  let out = '';
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    if (c === '/' && text[i + 1] === '*') {
      const end = text.indexOf('*/', i + 2);
      i = end < 0 ? text.length : end + 1;
      continue;
    }
    if (c === '/' && text[i + 1] === '/') {
      const end = text.indexOf('\n', i);
      i = end < 0 ? text.length : end - 1;
      continue;
    }
    if (c === "'" || c === '"' || c === '`') {
      let j = i + 1;
      while (j < text.length && text[j] !== c) j += text[j] === '\\' ? 2 : 1;
      out += blankStrings ? `${c}${c}` : text.slice(i, j + 1);
      i = j;
      continue;
    }
    out += c;
  }
  return out;
}

function resolveSpecifier(from: string, spec: string): string | undefined {
  if (!spec.startsWith('.')) return undefined;
  const base = resolve(dirname(from), spec).replace(/\.(ts|js)$/, '');
  for (const candidate of [`${base}.d.ts`, `${base}/index.d.ts`]) if (existsSync(candidate)) return candidate;
  throw new Error(`${from}: cannot resolve ${spec}`);
}

const cache = new Map<string, Module>();

function parse(file: string): Module {
  const known = cache.get(file);
  if (known) return known;
  const text = strip(readFileSync(file, 'utf8'), false);
  const statements: string[] = [];
  for (const line of text.split('\n')) {
    if (line === '') continue;
    if (/^[A-Za-z]/.test(line) || statements.length === 0) statements.push(line);
    else statements[statements.length - 1] += `\n${line}`;
  }
  const m: Module = { decls: new Map(), source: new Map(), imports: new Map(), exports: new Map(), star: [] };
  const names = (list: string): Array<[string, string]> =>
    list
      .split(',')
      .map((s) => s.trim().replace(/^type\s+/, ''))
      .filter(Boolean)
      .map((s) => {
        const [a, b] = s.split(/\s+as\s+/);
        return [a!.trim(), (b ?? a!).trim()];
      });
  for (const st of statements) {
    let r: RegExpExecArray | null;
    if ((r = /^(import|export)\s+(?:type\s+)?(\{[^}]*\}|\*)\s+from\s+'([^']*)'/.exec(st))) {
      const target = resolveSpecifier(file, r[3]!);
      if (r[1] === 'import') {
        if (target) for (const [imported, local] of names(r[2]!.slice(1, -1))) m.imports.set(local, { file: target, name: imported });
      } else if (r[2] === '*') {
        if (target) m.star.push(target);
      } else if (target) {
        for (const [inner, outer] of names(r[2]!.slice(1, -1))) m.exports.set(outer, { file: target, name: inner });
      }
      continue;
    }
    if ((r = /^import\s/.exec(st))) continue;
    if ((r = /^export\s+\{([^}]*)\};?$/.exec(st))) {
      for (const [local, outer] of names(r[1]!)) m.exports.set(outer, { local });
      continue;
    }
    r = /^(export\s+)?(?:declare\s+)?(?:abstract\s+)?(?:interface|type|class|enum|const|let|var|function|namespace)\s+([A-Za-z_$][\w$]*)/.exec(st);
    if (r) {
      const name = r[2]!;
      m.decls.set(name, (m.decls.get(name) ?? '') + strip(st, true) + '\n');
      m.source.set(name, (m.source.get(name) ?? '') + st.replace(/^export\s+/, '') + '\n');
      if (r[1]) m.exports.set(name, { local: name });
    }
  }
  cache.set(file, m);
  return m;
}

/** Where an exported or imported name is declared: its file and local name. */
function origin(file: string, name: string): { file: string; name: string } | undefined {
  const m = parse(file);
  const e = m.exports.get(name);
  if (e && 'local' in e) {
    const imported = m.imports.get(e.local);
    return imported ? origin(imported.file, imported.name) : m.decls.has(e.local) ? { file, name: e.local } : undefined;
  }
  if (e) return origin(e.file, e.name);
  for (const star of m.star) {
    const o = origin(star, name);
    if (o) return o;
  }
  return undefined;
}

export interface Reachable {
  /** `file:name` of every declaration the entry exports. */
  readonly exported: Set<string>;
  /** Declarations used by an exported one (directly or not) that the entry does not export: `name (file) ← used by`. */
  readonly missing: string[];
}

export function reachableDeclarations(entry: string): Reachable {
  cache.clear();
  const root = dirname(entry);
  const key = (o: { file: string; name: string }): string => `${relative(root, o.file)}:${o.name}`;
  const m = parse(entry);
  const exported = new Set<string>();
  const queue: Array<{ file: string; name: string }> = [];
  for (const name of m.exports.keys()) {
    const o = origin(entry, name);
    if (!o) throw new Error(`${entry}: cannot find the declaration of ${name}`);
    exported.add(key(o));
    queue.push(o);
  }
  const seen = new Set(queue.map(key));
  // A copy of an exported declaration (same name, same text) can be named by the exported one.
  const sameAsExported = (o: { file: string; name: string }): boolean => {
    const other = origin(entry, o.name);
    return other !== undefined && parse(other.file).source.get(other.name) === parse(o.file).source.get(o.name);
  };
  const missing: string[] = [];
  while (queue.length > 0) {
    const o = queue.shift()!;
    const mod = parse(o.file);
    const text = mod.decls.get(o.name) ?? '';
    for (const [, word] of text.replace(/\btypeof\s+[\w$.]+/g, '').matchAll(/(?<![.\w$#])([A-Za-z_$][\w$]*)/g)) {
      if (word === o.name) continue;
      const imported = mod.imports.get(word!);
      const target = imported ? origin(imported.file, imported.name) : mod.decls.has(word!) ? { file: o.file, name: word! } : undefined;
      if (!target || seen.has(key(target))) continue;
      seen.add(key(target));
      queue.push(target);
      if (!exported.has(key(target)) && !sameAsExported(target)) missing.push(`${target.name} (${relative(root, target.file)}) ← ${o.name}`);
    }
  }
  return { exported, missing };
}
