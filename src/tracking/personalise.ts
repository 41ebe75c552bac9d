/**
 * The tracking step of message preparation (before DKIM): one body per recipient, because every token names
 * its recipient. It adds, for each recipient,
 *   - tracked links (`<base>/c/TOKEN`) in place of the http(s) links of the HTML and plain-text parts,
 *   - the open pixel (`<base>/o/TOKEN`) and a hidden trap link in each HTML part,
 *   - `List-Unsubscribe: <base/u/TOKEN>, <mailto:u-TOKEN@bounce domain>` and
 *     `List-Unsubscribe-Post: List-Unsubscribe=One-Click` (RFC 8058) on marketing mail (and on transactional
 *     mail unless the tenant turned it off), unless the message has its own List-Unsubscribe.
 *
 * The message is analysed once (`planPersonalisation`); each recipient's copy is then filled in from the
 * plan, so N recipients cost one parse and N string assemblies (and, in prepare.ts, N signatures).
 */
import { headerValue, type HeaderField } from '../mta/headers.js';
import { planHtml, pixelMarkup } from './html.js';
import { asciiCompatible, decodePart, encodePart, findTextParts, withTransferEncoding, type TextPart } from './mime.js';
import { planText } from './text.js';
import type { TokenFields, TrackingTokens } from './tokens.js';

/** What the node decided for the message's tenant (see settings.ts); it travels to the preparation threads. */
export interface TrackingSettings {
  /** public URL of the tracking listener, without a trailing slash */
  baseUrl: string;
  /** open and click tracking for this tenant; a message's `X-Tern-Track` header decides over it */
  track: boolean;
  /** List-Unsubscribe on transactional mail too (marketing mail always carries it) */
  unsubscribeTransactional: boolean;
  /** insert the hidden trap link that only machines follow */
  trapLink: boolean;
  /** domain of the mailto: unsubscribe address (the tenant's bounce domain) */
  mailDomain: string;
  /** the recipients in the spool's order: a token's recipient index points into this list */
  recipients: string[];
}

export interface PersonaliseContext {
  msgId: string;
  tenant: string;
  campaign: string;
  stream: 'marketing' | 'transactional';
  /** open and click tracking for this message (the tenant's setting or the X-Tern-Track header) */
  track: boolean;
  now: number;
}

export interface RecipientCopy {
  fields: HeaderField[];
  body: string;
}

type Hole = { kind: 'link'; link: number; url: string; html: boolean } | { kind: 'pixel'; trap: boolean };

interface PartPlan {
  part: TextPart;
  /** static text between the holes: pieces.length === holes.length + 1 */
  pieces: string[];
  holes: Hole[];
}

export interface Personaliser {
  /** how many links are tracked (over all parts) */
  links: number;
  forRecipient(i: number): RecipientCopy;
}

const decoders = new Map<string, TextDecoder | null>();

/** Raw bytes (latin1 view) → text in `charset`; null when the charset is unknown here. */
function decoderFor(charset: string): ((raw: string) => string) | null {
  if (charset === '' || charset === 'utf-8' || charset === 'utf8' || charset === 'us-ascii' || charset === 'ascii')
    return (raw) => Buffer.from(raw, 'latin1').toString('utf8');
  let d = decoders.get(charset);
  if (d === undefined) {
    try {
      d = new TextDecoder(charset);
    } catch {
      d = null;
    }
    if (decoders.size < 100) decoders.set(charset, d);
  }
  const decoder = d;
  return decoder && asciiCompatible(charset) ? (raw) => decoder.decode(Buffer.from(raw, 'latin1')) : null;
}

function planPart(part: TextPart, content: string, ownBase: string, nextLink: () => number, trap: boolean): PartPlan | null {
  const decode = decoderFor(part.charset);
  if (!decode) return null; // UTF-16 and the like: left as they are
  const pieces: string[] = [];
  const holes: Hole[] = [];
  let pos = 0;
  const cut = (at: number, end: number, hole: Hole) => {
    pieces.push(content.slice(pos, at));
    holes.push(hole);
    pos = end;
  };
  if (part.html) {
    const plan = planHtml(content, { decode, ownBase });
    let pixelDone = false;
    for (const l of plan.links) {
      if (!pixelDone && plan.insertAt <= l.start) {
        cut(plan.insertAt, plan.insertAt, { kind: 'pixel', trap });
        pixelDone = true;
      }
      cut(l.start, l.end, { kind: 'link', link: nextLink(), url: l.url, html: true });
    }
    if (!pixelDone) cut(plan.insertAt, plan.insertAt, { kind: 'pixel', trap });
  } else {
    for (const l of planText(content, { decode, ownBase })) cut(l.start, l.end, { kind: 'link', link: nextLink(), url: l.url, html: false });
    if (!holes.length) return null;
  }
  pieces.push(content.slice(pos));
  return { part, pieces, holes };
}

/**
 * Plans the per-recipient copies of a message, or returns null when every recipient can have the same
 * body (nothing to track, no List-Unsubscribe to add).
 */
export function planPersonalisation(fields: HeaderField[], body: string, settings: TrackingSettings, ctx: PersonaliseContext, tokens: TrackingTokens): Personaliser | null {
  const listUnsubscribe = (ctx.stream === 'marketing' || settings.unsubscribeTransactional) && !fields.some((f) => f.lname === 'list-unsubscribe');
  const plans: PartPlan[] = [];
  let links = 0;
  if (ctx.track) {
    const parts = findTextParts(
      { contentType: headerValue(fields, 'content-type') ?? null, cte: headerValue(fields, 'content-transfer-encoding') ?? null, disposition: headerValue(fields, 'content-disposition') ?? null },
      body,
    );
    let trapPlaced = !settings.trapLink;
    for (const part of parts) {
      const plan = planPart(part, decodePart(body.slice(part.bodyStart, part.bodyEnd), part.cte), settings.baseUrl, () => links++, part.html && !trapPlaced);
      if (!plan) continue;
      if (part.html) trapPlaced = true;
      plans.push(plan);
    }
  }
  if (!plans.length && !listUnsubscribe) return null;

  const base = settings.baseUrl;
  return {
    links,
    forRecipient(i: number): RecipientCopy {
      const who: TokenFields = { msgId: ctx.msgId, rcptIndex: i, rcpt: settings.recipients[i]!, tenant: ctx.tenant, campaign: ctx.campaign, sentAt: ctx.now };
      const out: HeaderField[] = [...fields];
      let text = '';
      let pos = 0;
      for (const plan of plans) {
        let content = plan.pieces[0]!;
        plan.holes.forEach((h, n) => {
          if (h.kind === 'pixel') content += pixelMarkup(`${base}/o/${tokens.open(who)}`, h.trap ? `${base}/c/${tokens.trap(who)}` : null);
          else {
            const url = `${base}/c/${tokens.click({ ...who, link: h.link, url: h.url })}`;
            content += h.html ? `="${url}"` : url; // base64url and the base URL need no escaping in an attribute
          }
          content += plan.pieces[n + 1]!;
        });
        const { part } = plan;
        const encoded = encodePart(content, part.cte);
        const changed = encoded.cte !== part.cte;
        if (part.header === null) {
          // a single-part message: its own header says the transfer encoding
          if (changed) setField(out, 'Content-Transfer-Encoding', encoded.cte);
          text += body.slice(pos, part.bodyStart) + encoded.text;
        } else if (changed) {
          const header = withTransferEncoding(part.header, encoded.cte);
          text += body.slice(pos, part.headerStart) + header + '\r\n\r\n' + encoded.text;
        } else {
          text += body.slice(pos, part.bodyStart) + encoded.text;
        }
        pos = part.bodyEnd;
      }
      text += body.slice(pos);
      if (listUnsubscribe) {
        const mailto = tokens.mailto(who, settings.mailDomain);
        const https = `<${base}/u/${tokens.unsubscribe(who)}>`;
        out.push({ name: 'List-Unsubscribe', lname: 'list-unsubscribe', value: mailto ? ` ${https},\r\n <mailto:${mailto}?subject=unsubscribe>` : ` ${https}` });
        out.push({ name: 'List-Unsubscribe-Post', lname: 'list-unsubscribe-post', value: ' List-Unsubscribe=One-Click' });
      }
      return { fields: out, body: text };
    },
  };
}

function setField(fields: HeaderField[], name: string, value: string): void {
  const lname = name.toLowerCase();
  const at = fields.findIndex((f) => f.lname === lname);
  const field = { name, lname, value: ` ${value}` };
  if (at >= 0) fields[at] = field;
  else fields.push(field);
}
