/**
 * JSON text exactly as Python's `json.dumps` writes it with default options
 * (`", "` and `": "` separators, every non-ASCII character as a lowercase
 * `\uXXXX` escape). Conversation messages are stored in this form so that what
 * agentd writes is byte-for-byte what an agent following the reference
 * article's Python writes for the same message.
 */

const SHORT: Record<string, string> = { '"': '\\"', '\\': '\\\\', '\n': '\\n', '\r': '\\r', '\t': '\\t', '\b': '\\b', '\f': '\\f' };

export function pythonJsonString(value: string): string {
  let out = '"';
  for (let i = 0; i < value.length; i++) {
    const ch = value[i]!;
    const code = value.charCodeAt(i);
    const short = SHORT[ch];
    if (short !== undefined) out += short;
    else if (code < 0x20 || code > 0x7e) out += `\\u${code.toString(16).padStart(4, '0')}`;
    else out += ch;
  }
  return `${out}"`;
}

/** `json.dumps({"role": role, "content": content})`, byte for byte. */
export function pythonMessageJson(role: string, content: string): string {
  return `{"role": ${pythonJsonString(role)}, "content": ${pythonJsonString(content)}}`;
}
