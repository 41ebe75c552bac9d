/**
 * Which links are tracked, and the exact URL a tracked link stands for.
 *
 * A link is tracked only when it is an absolute http(s) URL (after `<base href>`, if the HTML has one):
 * never `mailto:`, `tel:`, `javascript:`, `data:`, an anchor (`#top`), a relative link with no base (it goes
 * nowhere in mail), our own tracking URLs, or a link that looks like an unsubscribe link (a scanner following
 * it, or a click counted on it, would be wrong). Its destination is the URL a browser would navigate to:
 * WHATWG URL parsing, which keeps the query, the fragment and existing percent-escapes exactly, punycodes the
 * host and percent-encodes non-ASCII characters as UTF-8 (what a browser does for a UTF-8 document).
 */
import { MAX_URL_LENGTH } from './tokens.js';

const UNSUBSCRIBE_WORDS = ['unsubscribe', 'optout', 'opt-out', 'opt_out'];

/** `href` as the HTML means it → the absolute URL to track, or null when it is not tracked. */
export function trackableUrl(href: string, base: string | null, ownBase: string): string | null {
  const trimmed = trimAsciiWhitespace(href);
  if (!trimmed || trimmed.startsWith('#')) return null;
  let url: URL;
  try {
    url = base ? new URL(trimmed, base) : new URL(trimmed);
  } catch {
    return null; // relative with no base, or not a URL at all (a template placeholder, say)
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') return null;
  const out = url.href;
  if (out.length > MAX_URL_LENGTH) return null;
  if (out.startsWith(ownBase + '/')) return null;
  const lower = out.toLowerCase();
  if (UNSUBSCRIBE_WORDS.some((w) => lower.includes(w))) return null;
  return out;
}

/** The base URL a `<base href>` gives, or null when it is not absolute. */
export function baseUrlOf(href: string): string | null {
  try {
    return new URL(trimAsciiWhitespace(href)).href;
  } catch {
    return null;
  }
}

/** HTML strips ASCII whitespace (tab, LF, FF, CR, space) around a URL attribute. */
function trimAsciiWhitespace(s: string): string {
  let a = 0;
  let b = s.length;
  const ws = (c: number) => c === 9 || c === 10 || c === 12 || c === 13 || c === 32;
  while (a < b && ws(s.charCodeAt(a))) a++;
  while (b > a && ws(s.charCodeAt(b - 1))) b--;
  return s.slice(a, b);
}
