/**
 * From an HTTP send request to RFC 5322 messages: the checks a header value or name must pass (pure, and
 * property-tested), Liquid rendering per recipient, the text part made from the HTML when absent, and the
 * MIME message (nodemailer's composer, through its stream transport: CRLF, encoded words, QP/base64).
 *
 * One message per recipient whenever anything is personal (a recipient has substitutions, or the subject,
 * HTML or text has Liquid markup): each recipient then sees only its own address in To. Otherwise one
 * message serves every recipient, and To lists them all (as SMTP submission with several RCPT would).
 */
import crypto from 'node:crypto';
import { convert } from 'html-to-text';
import { Liquid, type Template } from 'liquidjs';
import nodemailer from 'nodemailer';
import { isHeaderSafe } from './validate.js';

export interface Party {
  email: string;
  name?: string;
}

export interface SendRequest {
  from: Party;
  reply_to?: Party;
  to: Array<Party & { substitutions?: Record<string, string | number | boolean | null> }>;
  subject: string;
  html?: string;
  text?: string;
  headers?: Record<string, string>;
  campaign?: string;
  stream?: 'marketing' | 'transactional';
  tracking?: boolean;
}

/** A problem with one field of the request, said so the caller can fix it. */
export class ComposeProblem extends Error {
  constructor(
    readonly field: string,
    message: string,
  ) {
    super(message);
  }
}

/** RFC 5322 §3.6.8 ftext: printable US-ASCII but colon. */
const FIELD_NAME = /^[\x21-\x39\x3b-\x7e]{1,76}$/;

/**
 * Headers an API call may not set: those the request's own fields make (From, To, Subject…), those the
 * node makes or must vouch for (Message-ID, Date, DKIM-Signature, Feedback-ID, List-Unsubscribe, Received…),
 * the MIME structure, and Tern's instructions (they have fields of their own: campaign, stream, tracking).
 */
const RESERVED = new Set([
  'from', 'sender', 'to', 'cc', 'bcc', 'reply-to', 'subject', 'date', 'message-id', 'return-path', 'received',
  'dkim-signature', 'arc-seal', 'arc-message-signature', 'arc-authentication-results', 'authentication-results', 'feedback-id',
  'list-unsubscribe', 'list-unsubscribe-post', 'mime-version', 'content-type', 'content-transfer-encoding', 'content-disposition',
  'resent-from', 'resent-to', 'resent-date', 'resent-sender', 'resent-message-id',
]);

/** Why a custom header may not be sent, or null when it may. */
export function headerProblem(name: string, value: string): string | null {
  if (!FIELD_NAME.test(name)) return 'is not a header name: printable ASCII without ":" or spaces, at most 76 characters';
  const lname = name.toLowerCase();
  if (RESERVED.has(lname)) return `is set by the request's own fields or by the node; it cannot be given in headers`;
  if (lname.startsWith('x-tern-')) return 'is one of Tern\'s instructions; use the campaign, stream and tracking fields';
  if (!isHeaderSafe(value)) return 'has a control character (CR, LF, NUL…) in its value';
  if (name.length + 2 + Buffer.byteLength(value) > 998) return 'is longer than a header line may be (998 octets)';
  return null;
}

/** A display name that may go into From, To or Reply-To. */
export function isDisplayName(name: string): boolean {
  return isHeaderSafe(name) && name.length <= 200;
}

const LIQUID_MARKUP = /\{\{|\{%/;
/** limits per render, so a template cannot make the node loop or allocate without end */
const LIMITS = { parseLimit: 1_000_000, renderLimit: 1_000, memoryLimit: 20_000_000 };
/** HTML output escapes substitutions (write `{{ x | raw }}` for markup); subject and text are taken as they are */
const htmlEngine = new Liquid({ outputEscape: 'escape', ownPropertyOnly: true, ...LIMITS });
const textEngine = new Liquid({ ownPropertyOnly: true, ...LIMITS });

/** True when the request needs a message of each recipient's own. */
export function isPersonal(req: SendRequest): boolean {
  return req.to.some((r) => r.substitutions && Object.keys(r.substitutions).length > 0) || [req.subject, req.html ?? '', req.text ?? ''].some((s) => LIQUID_MARKUP.test(s));
}

/** The text part from HTML: links kept as `text [url]`, images dropped, lines wrapped at 78. */
export function textOf(html: string): string {
  return convert(html, { wordwrap: 78, selectors: [{ selector: 'img', format: 'skip' }] });
}

interface Parsed {
  subject: Template[];
  html: Template[] | null;
  text: Template[] | null;
}

function parse(req: SendRequest): Parsed {
  const one = (engine: Liquid, source: string, field: string): Template[] => {
    try {
      return engine.parse(source);
    } catch (err) {
      throw new ComposeProblem(`body.${field}`, `is not a valid Liquid template: ${(err as Error).message.split('\n')[0]}`);
    }
  };
  return { subject: one(textEngine, req.subject, 'subject'), html: req.html === undefined ? null : one(htmlEngine, req.html, 'html'), text: req.text === undefined ? null : one(textEngine, req.text, 'text') };
}

async function render(engine: Liquid, templates: Template[], scope: Record<string, unknown>, field: string): Promise<string> {
  try {
    return await engine.render(templates, scope);
  } catch (err) {
    throw new ComposeProblem(field, `could not be rendered: ${(err as Error).message.split('\n')[0]}`);
  }
}

const mailer = nodemailer.createTransport({ streamTransport: true, buffer: true, newline: 'windows' });

async function build(req: SendRequest, to: Party[], content: { subject: string; html?: string; text?: string }, messageId: string): Promise<Buffer> {
  const headers: Record<string, string> = { ...req.headers };
  if (req.campaign) headers['X-Tern-Campaign'] = req.campaign;
  if (req.stream) headers['X-Tern-Stream'] = req.stream;
  if (req.tracking !== undefined) headers['X-Tern-Track'] = req.tracking ? 'on' : 'off';
  const info = await mailer.sendMail({
    from: { address: req.from.email, name: req.from.name ?? '' },
    to: to.map((p) => ({ address: p.email, name: p.name ?? '' })),
    replyTo: req.reply_to ? { address: req.reply_to.email, name: req.reply_to.name ?? '' } : undefined,
    subject: content.subject,
    html: content.html,
    text: content.text,
    headers,
    messageId,
    disableFileAccess: true,
    disableUrlAccess: true,
  } as never);
  const message = (info as unknown as { message: Buffer }).message;
  // a buffer of its own (not a slice of Node's shared pool) so it can be moved to a preparation thread
  const out = Buffer.allocUnsafeSlow(message.length);
  message.copy(out);
  return out;
}

/**
 * The messages of a request for `recipients` (indexes into req.to, the valid ones): one per recipient when
 * personal, else one for all. Throws a ComposeProblem when a template does not parse or render, or when a
 * rendered subject would break its header line.
 */
export async function composeMessages(req: SendRequest, recipients: number[], hostname: string): Promise<{ personal: boolean; messages: Buffer[] }> {
  const domain = req.from.email.slice(req.from.email.lastIndexOf('@') + 1) || hostname;
  const messageId = `<${crypto.randomBytes(12).toString('base64url')}@${domain}>`;
  if (!isPersonal(req)) {
    const text = req.text ?? (req.html !== undefined ? textOf(req.html) : undefined);
    return { personal: false, messages: [await build(req, recipients.map((i) => req.to[i]!), { subject: req.subject, html: req.html, text }, messageId)] };
  }
  const parsed = parse(req);
  const messages: Buffer[] = [];
  for (const i of recipients) {
    const r = req.to[i]!;
    const scope = { email: r.email, name: r.name ?? '', ...r.substitutions };
    const subject = await render(textEngine, parsed.subject, scope, `body.to[${i}].substitutions`);
    if (!isHeaderSafe(subject)) throw new ComposeProblem(`body.to[${i}].substitutions`, 'make the subject hold a control character (CR, LF, NUL…); a subject is one line');
    const html = parsed.html ? await render(htmlEngine, parsed.html, scope, `body.to[${i}].substitutions`) : undefined;
    const text = parsed.text ? await render(textEngine, parsed.text, scope, `body.to[${i}].substitutions`) : html !== undefined ? textOf(html) : undefined;
    messages.push(await build(req, [r], { subject, html, text }, messageId));
  }
  return { personal: true, messages };
}
