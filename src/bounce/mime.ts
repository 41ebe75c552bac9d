/**
 * A small MIME reader for reports, bounded on every axis: bytes read, header count and length, nesting
 * depth, part count, bytes decoded. It reads the message as a latin1 string (one character per byte, so
 * offsets are byte offsets and slices are cheap), splits multiparts by boundary with indexOf, and decodes
 * only the parts a report needs. No regular expression here runs over more than one header line or one
 * bounded text, so no input can make it backtrack.
 */

export interface MimeLimits {
  /** headers kept per header block (the rest are skipped, not parsed) */
  maxHeaders: number;
  /** characters kept of one header value */
  maxHeaderLength: number;
  /** multipart nesting below the top (deeper parts are not opened) */
  maxDepth: number;
  /** parts visited in all */
  maxParts: number;
  /** bytes decoded from one part */
  maxDecoded: number;
}

export const DEFAULT_MIME_LIMITS: MimeLimits = { maxHeaders: 500, maxHeaderLength: 16_384, maxDepth: 12, maxParts: 200, maxDecoded: 256 * 1024 };

export class Headers {
  constructor(readonly list: Array<[name: string, value: string]>) {}

  /** First value of a header (name in lowercase), unfolded, raw (not RFC 2047-decoded). */
  get(name: string): string | null {
    for (const [n, v] of this.list) if (n === name) return v;
    return null;
  }

  getAll(name: string): string[] {
    return this.list.filter(([n]) => n === name).map(([, v]) => v);
  }
}

export interface Part {
  headers: Headers;
  /** lowercased "type/subtype"; text/plain when absent or unreadable */
  type: string;
  params: Record<string, string>;
  depth: number;
  /** the raw body, still transfer-encoded (a latin1 string: one character per byte) */
  body: string;
}

export interface Walk {
  root: Headers;
  /** leaf parts in document order (a message/rfc822 part is a leaf: reports only need its headers) */
  parts: Part[];
  /** limits that cut something short: "depth", "parts", "headers" */
  limited: string[];
}

/** Splits a header block from its body: the end of the header block and the start of the body. */
function headerEnd(s: string, start: number, end: number): { headEnd: number; bodyStart: number } {
  let pos = start;
  while (pos < end) {
    const nl = s.indexOf('\n', pos);
    if (nl < 0 || nl >= end) return { headEnd: end, bodyStart: end };
    const lineLen = nl - pos;
    if (lineLen === 0 || (lineLen === 1 && s.charCodeAt(pos) === 13)) return { headEnd: pos, bodyStart: nl + 1 };
    pos = nl + 1;
  }
  return { headEnd: end, bodyStart: end };
}

/** Parses header lines in [start, end): unfolds continuations, keeps at most `limits.maxHeaders`. */
export function parseHeaderBlock(s: string, start: number, end: number, limits: Pick<MimeLimits, 'maxHeaders' | 'maxHeaderLength'>, limited?: string[]): Headers {
  const list: Array<[string, string]> = [];
  let name: string | null = null;
  let value = '';
  const flush = () => {
    if (name !== null && list.length < limits.maxHeaders) list.push([name, value.trim()]);
    name = null;
  };
  let pos = start;
  while (pos < end) {
    let nl = s.indexOf('\n', pos);
    if (nl < 0 || nl > end) nl = end;
    let lineEnd = nl;
    if (lineEnd > pos && s.charCodeAt(lineEnd - 1) === 13) lineEnd--;
    const c = s.charCodeAt(pos);
    if (c === 32 || c === 9) {
      if (name !== null && value.length < limits.maxHeaderLength) value += ' ' + s.slice(pos, Math.min(lineEnd, pos + limits.maxHeaderLength - value.length)).trim();
    } else {
      flush();
      if (list.length >= limits.maxHeaders) {
        limited?.push('headers');
        break; // the rest of the block is not read at all
      }
      const colon = s.indexOf(':', pos);
      if (colon > pos && colon < lineEnd && colon - pos <= 76) {
        const n = s.slice(pos, colon).trim().toLowerCase();
        if (/^[\x21-\x39\x3b-\x7e]+$/.test(n)) {
          name = n;
          value = s.slice(colon + 1, Math.min(lineEnd, colon + 1 + limits.maxHeaderLength));
        }
      }
    }
    pos = nl + 1;
  }
  flush();
  return new Headers(list);
}

/** Parses the header block at the start of [start, end) (a whole message or part). */
export function readHeaders(s: string, start: number, end: number, limits: Pick<MimeLimits, 'maxHeaders' | 'maxHeaderLength'>, limited?: string[]): { headers: Headers; bodyStart: number } {
  const { headEnd, bodyStart } = headerEnd(s, start, end);
  return { headers: parseHeaderBlock(s, start, headEnd, limits, limited), bodyStart };
}

/** "multipart/report; report-type=delivery-status; boundary="x"" → type and lowercased parameter names. */
export function parseContentType(value: string | null): { type: string; params: Record<string, string> } {
  const params: Record<string, string> = {};
  if (!value) return { type: 'text/plain', params };
  const semi = value.indexOf(';');
  const type = (semi < 0 ? value : value.slice(0, semi)).trim().toLowerCase();
  if (semi >= 0) {
    // name=token or name="quoted string"; a quoted value may hold ';'
    const re = /;\s*([^=;\s]+)\s*=\s*(?:"((?:[^"\\]|\\.){0,1000})"|([^;\s]{0,1000}))/g;
    const rest = value.slice(semi).slice(0, 4000);
    for (let m = re.exec(rest); m; m = re.exec(rest)) {
      const name = m[1]!.toLowerCase().replace(/\*$/, '');
      let v = m[2] !== undefined ? m[2].replace(/\\(.)/g, '$1') : m[3]!;
      if (m[1]!.endsWith('*')) v = v.replace(/^[^']*'[^']*'/, ''); // RFC 2231 charset'lang'value, without continuations
      if (!(name in params)) params[name] = v;
    }
  }
  return { type: /^[a-z0-9!#$&^_.+-]+\/[a-z0-9!#$&^_.+-]+$/.test(type) ? type : 'text/plain', params };
}

/** Offsets of the body parts of a multipart in [start, end), by its boundary; the preamble and epilogue are dropped. */
function splitMultipart(s: string, start: number, end: number, boundary: string, maxParts: number): Array<[number, number]> {
  // searching a slice keeps every indexOf within this part (a slice of a flat string is not a copy)
  const body = s.slice(start, end);
  const delim = '--' + boundary;
  const bounds: Array<[number, number]> = [];
  let partStart = -1;
  let pos = 0;
  while (bounds.length < maxParts) {
    const at = body.indexOf(delim, pos);
    if (at < 0) break;
    pos = at + delim.length;
    if (at !== 0 && body.charCodeAt(at - 1) !== 10) continue; // only at the start of a line
    const closing = body.startsWith('--', pos);
    let lineEnd = body.indexOf('\n', pos);
    if (lineEnd < 0) lineEnd = body.length;
    // the rest of a delimiter line may only hold whitespace
    if (!closing && body.slice(pos, lineEnd).trim() !== '') continue;
    if (partStart >= 0) {
      // the line break before the delimiter belongs to the delimiter
      let partEnd = at - 1;
      if (partEnd > partStart && body.charCodeAt(partEnd - 1) === 13) partEnd--;
      bounds.push([start + partStart, start + Math.max(partStart, partEnd)]);
    }
    if (closing) return bounds;
    partStart = lineEnd + 1;
    pos = partStart;
  }
  // no closing delimiter (a truncated message): the last part runs to the end
  if (partStart >= 0 && partStart < body.length && bounds.length < maxParts) bounds.push([start + partStart, end]);
  return bounds;
}

/** Walks a whole message. Never throws on malformed input: what cannot be read is skipped. */
export function walkMessage(s: string, limits: MimeLimits = DEFAULT_MIME_LIMITS): Walk {
  const limited: string[] = [];
  const parts: Part[] = [];
  const note = (what: string) => {
    if (!limited.includes(what)) limited.push(what);
  };
  const top = readHeaders(s, 0, s.length, limits, limited);
  let visited = 0;

  const visit = (headers: Headers, bodyStart: number, end: number, depth: number) => {
    if (++visited > limits.maxParts) return note('parts');
    const { type, params } = parseContentType(headers.get('content-type'));
    if (type.startsWith('multipart/')) {
      const boundary = params.boundary;
      if (depth >= limits.maxDepth) return note('depth');
      if (boundary && boundary.length <= 200) {
        const bounds = splitMultipart(s, bodyStart, end, boundary, limits.maxParts);
        if (bounds.length) {
          for (const [ps, pe] of bounds) {
            if (visited >= limits.maxParts) return note('parts');
            const child = readHeaders(s, ps, pe, limits);
            visit(child.headers, child.bodyStart, pe, depth + 1);
          }
          return;
        }
      }
      // a multipart without a usable boundary: read its body as text, for the words it holds
      parts.push({ headers, type: 'text/plain', params: {}, depth, body: s.slice(bodyStart, end) });
      return;
    }
    parts.push({ headers, type, params, depth, body: s.slice(bodyStart, end) });
  };
  visit(top.headers, top.bodyStart, s.length, 0);
  return { root: top.headers, parts, limited };
}

// ---- decoding ----------------------------------------------------------------------------------------------

const decoders = new Map<string, TextDecoder | null>();
const utf8Fatal = new TextDecoder('utf-8', { fatal: true });
const latin1 = new TextDecoder('windows-1252');

function decoderFor(charset: string): TextDecoder | null {
  const key = charset.trim().toLowerCase();
  let d = decoders.get(key);
  if (d === undefined) {
    try {
      d = key ? new TextDecoder(key) : null;
    } catch {
      d = null; // an unknown or bogus charset: guessed below
    }
    if (decoders.size < 200) decoders.set(key, d);
  }
  return d;
}

/** Bytes in a charset to text; an unknown charset is read as UTF-8 when the bytes are valid UTF-8, else windows-1252. */
export function decodeCharset(bytes: Uint8Array, charset: string | undefined): string {
  const d = charset ? decoderFor(charset) : null;
  if (d) return d.decode(bytes);
  try {
    return utf8Fatal.decode(bytes);
  } catch {
    return latin1.decode(bytes);
  }
}

function decodeQuotedPrintable(s: string): Buffer {
  const out = Buffer.allocUnsafe(s.length);
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c === 61 /* = */) {
      const h = s.slice(i + 1, i + 3);
      if (/^[0-9A-Fa-f]{2}$/.test(h)) {
        out[n++] = parseInt(h, 16);
        i += 2;
        continue;
      }
      // soft line break: "=" followed by optional whitespace and the line end
      let j = i + 1;
      while (j < s.length && (s.charCodeAt(j) === 32 || s.charCodeAt(j) === 9)) j++;
      if (s.charCodeAt(j) === 13) j++;
      if (s.charCodeAt(j) === 10 || j >= s.length) {
        i = j;
        continue;
      }
    }
    out[n++] = c & 0xff;
  }
  return out.subarray(0, n);
}

/** A part's body without its transfer encoding, at most `max` bytes of input read. */
export function decodeTransfer(part: Pick<Part, 'headers' | 'body'>, max: number): Buffer {
  const body = part.body.length > max ? part.body.slice(0, max) : part.body;
  const cte = (part.headers.get('content-transfer-encoding') ?? '').trim().toLowerCase();
  if (cte === 'base64') return Buffer.from(body.replace(/[^A-Za-z0-9+/]/g, ''), 'base64');
  if (cte === 'quoted-printable') return decodeQuotedPrintable(body);
  return Buffer.from(body, 'latin1');
}

/** A text part as a string: transfer encoding and charset decoded, bounded. */
export function partText(part: Part, max: number): string {
  return decodeCharset(decodeTransfer(part, max), part.params.charset);
}

/** A header value as text: raw UTF-8 (RFC 6532) and RFC 2047 encoded words decoded. */
export function decodeHeader(raw: string): string {
  let v = raw;
  // eslint-disable-next-line no-control-regex
  if (/[\x80-\xff]/.test(v)) v = decodeCharset(Buffer.from(v, 'latin1'), undefined);
  if (!v.includes('=?')) return v;
  return v
    .replace(/(=\?[^?\s]{1,40}\?[bBqQ]\?[^?\s]{0,1000}\?=)\s+(?==\?)/g, '$1') // whitespace between encoded words is not text
    .replace(/=\?([^?\s]{1,40})\?([bBqQ])\?([^?\s]{0,1000})\?=/g, (_m, charset: string, enc: string, text: string) => {
      const bytes = enc.toUpperCase() === 'B' ? Buffer.from(text, 'base64') : decodeQuotedPrintable(text.replace(/_/g, ' '));
      return decodeCharset(bytes, charset.replace(/\*.*$/, ''));
    });
}

/** `html` without style, script and head elements (an unclosed one ends the text). Linear in the input. */
function dropInvisible(html: string): string {
  const lower = html.toLowerCase();
  const open = /<(style|script|head)\b/g;
  let out = '';
  let pos = 0;
  for (let m = open.exec(lower); m; m = open.exec(lower)) {
    out += html.slice(pos, m.index);
    const close = lower.indexOf(`</${m[1]}`, m.index);
    if (close < 0) return out;
    const end = lower.indexOf('>', close);
    pos = end < 0 ? html.length : end + 1;
    open.lastIndex = pos;
  }
  return out + html.slice(pos);
}

/** Visible text of an HTML part: tags, styles and scripts removed, a few entities decoded, line breaks kept. */
export function htmlToText(html: string): string {
  return dropInvisible(html)
    .replace(/<(?:br|\/p|\/div|\/tr|\/li|\/h[1-6]|p|div|tr|li|table)\b[^<>]{0,1000}>/gi, '\n')
    .replace(/<[^<>]{0,2000}>/g, '')
    .replace(/&(nbsp|amp|lt|gt|quot|apos|#\d{1,6}|#x[0-9a-f]{1,6});/gi, (_m, e: string) => {
      const named: Record<string, string> = { nbsp: ' ', amp: '&', lt: '<', gt: '>', quot: '"', apos: "'" };
      const low = e.toLowerCase();
      if (named[low]) return named[low]!;
      const cp = low.startsWith('#x') ? parseInt(low.slice(2), 16) : parseInt(low.slice(1), 10);
      return cp > 0 && cp < 0x110000 ? String.fromCodePoint(cp) : ' ';
    })
    .replace(/[ \t\r]+\n/g, '\n')
    .replace(/\n{3,}/g, '\n\n');
}
