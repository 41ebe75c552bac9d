/**
 * Finds the links of an HTML part with a real HTML tokenizer (htmlparser2's, which follows the HTML
 * standard's states for attributes, comments, raw-text elements and character references) and plans their
 * rewriting by byte offset: only the value of each tracked `href` is replaced, every other byte of the part
 * stays as it was.
 *
 * The HTML is read as a latin1 string (one character per byte) so that offsets are byte offsets and any
 * ASCII-compatible charset passes through untouched; `decode` turns the raw bytes of an attribute value into
 * text in the part's charset. Character references in a value are decoded as a browser decodes them in an
 * attribute (`&amp;` → `&`, while `&copy=1` in a query stays as written).
 *
 * Tracked: `href` of `<a>`, `<area>` and VML shapes (`<v:roundrect href>`, Outlook's "bulletproof
 * buttons"), also inside Outlook's conditional comments (`<!--[if mso]>…<![endif]-->`), which Outlook renders.
 * Not tracked: what links.ts refuses, and links marked `data-tern-notrack` or `clicktracking="off"`.
 * The open pixel (and the hidden trap link) go right after `<body …>`, or at the end without a body tag:
 * near the top, so that a message clipped by the reader (Gmail clips after 102 KB) still loads it.
 */
import { Tokenizer, QuoteType } from 'htmlparser2';
import { baseUrlOf, trackableUrl } from './links.js';

export interface HtmlLinkHole {
  /** [start, end) is replaced: from the end of the attribute name to the end of its value (closing quote included) */
  start: number;
  end: number;
  url: string;
}

export interface HtmlPlan {
  links: HtmlLinkHole[];
  /** where the pixel goes */
  insertAt: number;
}

export interface HtmlPlanOptions {
  /** raw bytes (as latin1) of an attribute value → text in the part's charset */
  decode: (raw: string) => string;
  /** our tracking base URL: links to it are left alone */
  ownBase: string;
}

interface Attribute {
  name: string;
  value: string;
  /** end of the name: the replaced span starts here */
  nameEnd: number;
  end: number;
  hasValue: boolean;
  /** an attribute whose value is read */
  wanted: boolean;
}

const WANTED = new Set(['href', 'clicktracking']);

interface Found {
  links: Array<{ start: number; end: number; href: string }>;
  base: string | null;
  bodyEnd: number | null;
}

const LINK_TAGS = new Set(['a', 'area']);

function scan(html: string, from: number, to: number, decode: (raw: string) => string, found: Found): void {
  const source = html.slice(from, to);
  let tag = '';
  let attrs: Attribute[] = [];
  let attr: Attribute | null = null;

  const endTag = (endIndex: number) => {
    if (tag === 'body' && found.bodyEnd === null) found.bodyEnd = from + endIndex + 1;
    const href = attrs.find((a) => a.name === 'href' && a.hasValue);
    if (href) {
      if (tag === 'base') found.base ??= baseUrlOf(href.value);
      else if ((LINK_TAGS.has(tag) || tag.startsWith('v:')) && !noTrack(attrs)) found.links.push({ start: from + href.nameEnd, end: from + href.end, href: href.value });
    }
    tag = '';
    attrs = [];
  };

  const tokenizer = new Tokenizer(
    { decodeEntities: true },
    {
      onopentagname(start, end) {
        tag = source.slice(start, end).toLowerCase();
        attrs = [];
      },
      onattribname(start, end) {
        const name = source.slice(start, end).toLowerCase();
        attr = { name, value: '', nameEnd: end, end, hasValue: false, wanted: WANTED.has(name) };
      },
      onattribdata(start, end) {
        // only the values that matter are decoded: most attributes of an email are styles
        if (attr?.wanted) attr.value += decode(source.slice(start, end));
      },
      onattribentity(codepoint) {
        if (attr?.wanted) attr.value += String.fromCodePoint(codepoint);
      },
      onattribend(quote, endIndex) {
        if (!attr) return;
        attr.end = endIndex;
        attr.hasValue = quote !== QuoteType.NoValue;
        // the first of two attributes with one name wins, as in a browser
        if (!attrs.some((a) => a.name === attr!.name)) attrs.push(attr);
        attr = null;
      },
      onopentagend: endTag,
      onselfclosingtag: endTag,
      oncomment(start, endIndex) {
        // Outlook renders what is inside <!--[if mso]> … <![endif]-->: its links are links
        const text = source.slice(start, endIndex);
        if (text.slice(0, 3).toLowerCase() !== '[if') return;
        const open = text.indexOf(']>');
        const close = text.toLowerCase().lastIndexOf('<![endif]');
        if (open > 0 && close > open + 2) scan(html, from + start + open + 2, from + start + close, decode, found);
      },
      onclosetag() {},
      ontext() {},
      ontextentity() {},
      oncdata() {},
      ondeclaration() {},
      onprocessinginstruction() {},
      onend() {},
    },
  );
  tokenizer.write(source);
  tokenizer.end();
}

function noTrack(attrs: Attribute[]): boolean {
  return attrs.some((a) => a.name === 'data-tern-notrack' || (a.name === 'clicktracking' && a.value.trim().toLowerCase() === 'off'));
}

/** Plans the rewriting of one HTML part: the links to replace and where the pixel goes. */
export function planHtml(html: string, opts: HtmlPlanOptions): HtmlPlan {
  const found: Found = { links: [], base: null, bodyEnd: null };
  scan(html, 0, html.length, opts.decode, found);
  const links: HtmlLinkHole[] = [];
  for (const l of found.links.sort((a, b) => a.start - b.start)) {
    const url = trackableUrl(l.href, found.base, opts.ownBase);
    if (url) links.push({ start: l.start, end: l.end, url });
  }
  return { links, insertAt: found.bodyEnd ?? html.length };
}

/** The markup inserted after `<body>`: the open pixel and, when given, the hidden trap link. */
export function pixelMarkup(pixelUrl: string, trapUrl: string | null): string {
  const img = `<img src="${pixelUrl}" width="1" height="1" alt="" style="display:block;width:1px;height:1px;border:0;margin:0;padding:0">`;
  // no text, hidden everywhere (mso-hide for Outlook): only a machine that follows every href finds it
  const trap = trapUrl ? `<a href="${trapUrl}" style="display:none;font-size:0;line-height:0;max-height:0;overflow:hidden;mso-hide:all" aria-hidden="true" tabindex="-1"></a>` : '';
  return img + trap;
}
