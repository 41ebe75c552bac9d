/**
 * Finds the http(s) URLs of a plain-text part, for tracking. Plain text has no markup, so a URL is what
 * readers' mail programs turn into a link: `http://` or `https://` at a word start, up to whitespace, a
 * control character, `<`, `>` or `"`, without trailing punctuation (`.`, `,`, `;`, `:`, `!`, `?`, quotes) or
 * an unbalanced closing bracket. `<https://…>` (RFC 3986 appendix C) is covered by the `>` rule.
 *
 * Like the HTML planner it reads the part as latin1 (offsets are byte offsets; the delimiters are ASCII) and
 * decodes a URL's bytes with `decode`.
 */
import { trackableUrl } from './links.js';

export interface TextLinkHole {
  start: number;
  end: number;
  url: string;
}

const TRAILING = new Set(['.', ',', ';', ':', '!', '?', "'", '"', '*', '_']);
const CLOSERS: Record<string, string> = { ')': '(', ']': '[', '}': '{' };

function isDelimiter(c: number): boolean {
  return c <= 0x20 || c === 0x7f || c === 0x3c /* < */ || c === 0x3e /* > */ || c === 0x22 /* " */;
}

function isWordChar(c: number): boolean {
  return (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a) || c >= 0x80;
}

export function planText(text: string, opts: { decode: (raw: string) => string; ownBase: string }): TextLinkHole[] {
  const lower = text.toLowerCase();
  const out: TextLinkHole[] = [];
  let pos = 0;
  for (;;) {
    const at = lower.indexOf('http', pos);
    if (at < 0) return out;
    pos = at + 4;
    const scheme = lower.startsWith('https://', at) ? 8 : lower.startsWith('http://', at) ? 7 : 0;
    if (!scheme || (at > 0 && isWordChar(text.charCodeAt(at - 1)))) continue;
    let end = at + scheme;
    while (end < text.length && !isDelimiter(text.charCodeAt(end))) end++;
    end = trimEnd(text, at + scheme, end);
    pos = Math.max(pos, end);
    if (end === at + scheme) continue;
    let raw = text.slice(at, end);
    let url = opts.decode(raw);
    // a Unicode space (no-break space, ideographic space…) ends the URL too; cut the raw bytes to match
    const space = url.search(/\s/u);
    if (space >= 0) {
      const keptBytes = Buffer.byteLength(url.slice(0, space), 'utf8');
      if (opts.decode(text.slice(at, at + keptBytes)) !== url.slice(0, space)) continue; // not UTF-8: leave it alone
      end = trimEnd(text, at + scheme, at + keptBytes);
      raw = text.slice(at, end);
      url = opts.decode(raw);
    }
    const tracked = trackableUrl(url, null, opts.ownBase);
    if (tracked) out.push({ start: at, end, url: tracked });
  }
}

/** Drops trailing punctuation and closing brackets that have no opening one inside the URL. */
function trimEnd(text: string, from: number, end: number): number {
  while (end > from) {
    const c = text[end - 1]!;
    if (TRAILING.has(c)) {
      end--;
      continue;
    }
    const opener = CLOSERS[c];
    if (opener) {
      const inside = text.slice(from, end - 1);
      const opens = inside.split(opener).length - 1;
      const closes = inside.split(c).length - 1;
      if (opens <= closes) {
        end--;
        continue;
      }
    }
    return end;
  }
  return end;
}
