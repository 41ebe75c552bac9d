/**
 * The text parts of an outgoing message, by offset, and their transfer encodings: what the tracking step
 * needs to rewrite an HTML or plain-text part in place and leave every other byte of the message alone.
 *
 * Works on the latin1 view of the message (one character per byte). Attachments (Content-Disposition:
 * attachment) and anything inside an attached message (message/rfc822) are never touched.
 */
import { Headers, decodeTransfer, parseContentType, readHeaders } from '../bounce/mime.js';

export interface TextPart {
  html: boolean;
  /** lowercased charset parameter, '' when absent */
  charset: string;
  /** lowercased Content-Transfer-Encoding, '' when absent */
  cte: string;
  /**
   * The part's header block as written (without the CRLF that ends its last line), starting at `headerStart`
   * in the body; null for a single-part message (its header is the message's).
   */
  header: string | null;
  headerStart: number;
  bodyStart: number;
  bodyEnd: number;
}

const MAX_DEPTH = 10;
const MAX_PARTS = 100;
const LIMITS = { maxHeaders: 500, maxHeaderLength: 16_384 };

/**
 * The text/html and text/plain parts of a message that a reader sees, in order. `top` is the message's own
 * Content-Type, Content-Transfer-Encoding and Content-Disposition; `body` the latin1 text after the header.
 */
export function findTextParts(top: { contentType: string | null; cte: string | null; disposition: string | null }, body: string): TextPart[] {
  const parts: TextPart[] = [];
  let visited = 0;
  const visit = (headers: Headers, header: TextPart['header'], headerStart: number, start: number, end: number, depth: number) => {
    if (++visited > MAX_PARTS) return;
    const { type, params } = parseContentType(headers.get('content-type'));
    if ((headers.get('content-disposition') ?? '').trim().toLowerCase().startsWith('attachment')) return;
    if (type.startsWith('multipart/')) {
      if (depth >= MAX_DEPTH || !params.boundary) return;
      for (const [ps, pe] of splitMultipart(body, start, end, params.boundary)) {
        const child = readHeaders(body, ps, pe, LIMITS);
        // "<header lines>CRLF CRLF<body>", or "CRLF<body>" without headers (lines are CRLF: preparation refused the rest)
        const header = child.bodyStart - ps >= 4 ? body.slice(ps, child.bodyStart - 4) : '';
        visit(child.headers, header, ps, child.bodyStart, pe, depth + 1);
      }
      return;
    }
    // an empty part has nothing to track (and one without a blank line has no body to add a pixel to)
    if ((type !== 'text/html' && type !== 'text/plain') || start >= end) return;
    const cte = (headers.get('content-transfer-encoding') ?? '').trim().toLowerCase();
    parts.push({ html: type === 'text/html', charset: (params.charset ?? '').trim().toLowerCase(), cte, header, headerStart, bodyStart: start, bodyEnd: end });
  };
  const list: Array<[string, string]> = [];
  if (top.contentType !== null) list.push(['content-type', top.contentType]);
  if (top.cte !== null) list.push(['content-transfer-encoding', top.cte]);
  if (top.disposition !== null) list.push(['content-disposition', top.disposition]);
  visit(new Headers(list), null, 0, 0, body.length, 0);
  return parts;
}

/** Offsets of the body parts of a multipart in [start, end); the CRLF before each delimiter belongs to it. */
function splitMultipart(s: string, start: number, end: number, boundary: string): Array<[number, number]> {
  const delim = '--' + boundary;
  const bounds: Array<[number, number]> = [];
  let partStart = -1;
  let pos = start;
  while (bounds.length < MAX_PARTS) {
    const at = s.indexOf(delim, pos);
    if (at < 0 || at >= end) break;
    pos = at + delim.length;
    if (at !== start && s.charCodeAt(at - 1) !== 10) continue; // only at the start of a line
    const closing = s.startsWith('--', pos);
    let lineEnd = s.indexOf('\r\n', pos);
    if (lineEnd < 0 || lineEnd > end) lineEnd = end;
    if (!closing && s.slice(pos, lineEnd).trim() !== '') continue;
    if (partStart >= 0) bounds.push([partStart, Math.max(partStart, at - 2)]);
    if (closing) return bounds;
    partStart = lineEnd + 2;
    pos = partStart;
  }
  // a multipart without its closing delimiter: its parts are not rewritten (where it ends is a guess)
  return bounds;
}

/** Charsets in which `<`, `>`, quotes, `=`, `&` and whitespace are the ASCII bytes they look like. */
export function asciiCompatible(charset: string): boolean {
  return !/^(utf-?16|utf-?32|ucs-?2|ucs-?4|utf-?7|iso-2022|hz|csiso2022)/.test(charset);
}

/** A part's content as latin1 text (one character per byte), transfer encoding undone. */
export function decodePart(raw: string, cte: string): string {
  if (cte !== 'base64' && cte !== 'quoted-printable') return raw;
  return decodeTransfer({ headers: new Headers([['content-transfer-encoding', cte]]), body: raw }, Number.MAX_SAFE_INTEGER).toString('latin1');
}

const MAX_LINE = 998;

/**
 * Content (latin1 text) in the part's transfer encoding. A 7bit/8bit part whose rewritten lines would pass
 * the 998-octet limit becomes quoted-printable: the caller changes its header when `cte` differs.
 */
export function encodePart(content: string, cte: string): { text: string; cte: string } {
  if (cte === 'base64') return { text: encodeBase64(content), cte };
  if (cte === 'quoted-printable') return { text: encodeQuotedPrintable(content), cte };
  if (longestLine(content) <= MAX_LINE) return { text: content, cte };
  return { text: encodeQuotedPrintable(content), cte: 'quoted-printable' };
}

function longestLine(s: string): number {
  let longest = 0;
  let from = 0;
  for (;;) {
    const nl = s.indexOf('\r\n', from);
    const len = (nl < 0 ? s.length : nl) - from;
    if (len > longest) longest = len;
    if (nl < 0) return longest;
    from = nl + 2;
  }
}

function encodeBase64(content: string): string {
  const b64 = Buffer.from(content, 'latin1').toString('base64');
  let out = '';
  for (let i = 0; i < b64.length; i += 76) out += (i ? '\r\n' : '') + b64.slice(i, i + 76);
  // a part that ended with a line break keeps one after its encoded lines
  return content.endsWith('\r\n') ? out + '\r\n' : out;
}

const HEX = '0123456789ABCDEF';

/** RFC 2045 §6.7: lines of at most 76 characters, CRLF kept as line breaks, trailing whitespace encoded. */
export function encodeQuotedPrintable(content: string): string {
  let out = '';
  let lineStart = 0;
  for (;;) {
    const nl = content.indexOf('\r\n', lineStart);
    const lineEnd = nl < 0 ? content.length : nl;
    let col = 0;
    for (let i = lineStart; i < lineEnd; i++) {
      const c = content.charCodeAt(i);
      const plain = (c >= 33 && c <= 126 && c !== 61) || ((c === 32 || c === 9) && i < lineEnd - 1);
      const tok = plain ? content[i]! : '=' + HEX[c >> 4] + HEX[c & 15];
      if (col + tok.length > 75) {
        out += '=\r\n';
        col = 0;
      }
      out += tok;
      col += tok.length;
    }
    if (nl < 0) return out;
    out += '\r\n';
    lineStart = nl + 2;
  }
}

/** A part's header block with its Content-Transfer-Encoding set to `cte` (replaced, or added at the end). */
export function withTransferEncoding(header: string, cte: string): string {
  const lines = header ? header.split('\r\n') : [];
  const out: string[] = [];
  let skipping = false;
  for (const line of lines) {
    if (skipping && (line.startsWith(' ') || line.startsWith('\t'))) continue;
    skipping = line.slice(0, 26).toLowerCase() === 'content-transfer-encoding:';
    if (!skipping) out.push(line);
  }
  out.push(`Content-Transfer-Encoding: ${cte}`);
  return out.join('\r\n');
}
