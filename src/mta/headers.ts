/**
 * Header block handling on raw message bytes. Everything is done on a latin1 view so that bytes survive
 * untouched (8BITMIME / SMTPUTF8 content is carried as is).
 */

export interface HeaderField {
  /** the name as written */
  name: string;
  /** lower-cased name */
  lname: string;
  /** the raw value after the colon, folding included, without the final CRLF */
  value: string;
}

export interface SplitMessage {
  fields: HeaderField[];
  /** latin1 text of the body, after the blank line */
  body: string;
  /** a header line that is not `name: value` or a continuation */
  malformed?: string;
}

const FIELD_NAME = /^[\x21-\x39\x3b-\x7e]+$/;

/** Splits a CRLF message into header fields and body. A message with no blank line is all headers. */
export function splitMessage(text: string): SplitMessage {
  let end = text.startsWith('\r\n') ? 0 : text.indexOf('\r\n\r\n');
  let body = '';
  if (end === -1) end = text.length;
  else body = text.slice(end + (end === 0 ? 2 : 4));
  const block = text.slice(0, end);
  const fields: HeaderField[] = [];
  if (!block) return { fields, body };
  for (const line of block.split('\r\n')) {
    if (line.startsWith(' ') || line.startsWith('\t')) {
      const last = fields[fields.length - 1];
      if (!last) return { fields, body, malformed: line };
      last.value += '\r\n' + line;
      continue;
    }
    const colon = line.indexOf(':');
    const name = colon > 0 ? line.slice(0, colon) : '';
    // "Name :" (space before the colon) is obsolete syntax that mail software still reads
    const trimmed = name.replace(/[ \t]+$/, '');
    if (!trimmed || !FIELD_NAME.test(trimmed)) return { fields, body, malformed: line };
    fields.push({ name: trimmed, lname: trimmed.toLowerCase(), value: line.slice(colon + 1) });
  }
  return { fields, body };
}

export function joinMessage(fields: HeaderField[], body: string): string {
  let out = '';
  for (const f of fields) out += `${f.name}:${f.value}\r\n`;
  return `${out}\r\n${body}`;
}

export function headerValue(fields: HeaderField[], lname: string): string | undefined {
  const f = fields.find((h) => h.lname === lname);
  return f ? unfold(f.value) : undefined;
}

export function unfold(value: string): string {
  return value.replace(/\r\n(?=[ \t])/g, '').trim();
}
