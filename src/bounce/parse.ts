/**
 * Reads one inbound report: an RFC 3464 DSN, an RFC 5965 ARF complaint, an RFC 3834 auto-reply, a bounce in
 * some MTA's own words, or none of these. Synchronous and bounded (bytes, headers, MIME depth and parts,
 * decoded text); run it through BounceParser (parse-pool.ts) to add a deadline on a worker thread.
 *
 * Why not mailparser: it builds the whole message (every part decoded, HTML sanitised, attachments hashed)
 * where a report needs three parts, its author warns its regexes are not safe on hostile input, and it costs
 * an order of magnitude more CPU per DSN than this reader (see bench/RESULTS.md).
 */
import { DEFAULT_MIME_LIMITS, decodeCharset, decodeHeader, decodeTransfer, htmlToText, parseHeaderBlock, partText, readHeaders, walkMessage, type Headers, type MimeLimits, type Part } from './mime.js';
import { normalizeReplyText } from './classify.js';
import { cutAtOriginal, readPlainBounce, type TextRecipient } from './plaintext.js';

export type ReportKind = 'dsn' | 'arf' | 'autoreply' | 'unknown';

export interface ReportRecipient {
  /** Final-Recipient (else Original-Recipient) of a DSN; the complainant of an ARF report; the auto-replier */
  address: string | null;
  /** DSN Action: failed, delayed, delivered, relayed, expanded */
  action: string | null;
  /** enhanced status code, "5.1.1" */
  status: string | null;
  reply_code: number | null;
  /** the remote server's words (Diagnostic-Code without its "smtp;" type) */
  diagnostic: string | null;
  remote_mta: string | null;
  /** Original-Recipient of a DSN (the address as first given), when it says one */
  original_recipient: string | null;
}

export interface Feedback {
  /** Feedback-Type, lowercased: abuse, fraud, virus, other, not-spam, auth-failure */
  type: string | null;
  user_agent: string | null;
  /** Original-Rcpt-To, else Removal-Recipient, else a recipient header of the returned message */
  original_rcpt: string | null;
  arrival_date: string | null;
  source_ip: string | null;
}

export interface OriginalMessage {
  /** Return-Path (the envelope sender, a VERP address when we sent it) */
  returnPath: string | null;
  /** X-Tern-Ref header value */
  ref: string | null;
  messageId: string | null;
  /** the returned message's headers (lowercase names, first occurrence, decoded), when it was returned */
  headers: Record<string, string> | null;
}

export interface Report {
  kind: ReportKind;
  recipients: ReportRecipient[];
  feedback: Feedback | null;
  original: OriginalMessage;
  /**
   * Addresses that may carry a VERP token, most direct first: the report's own X-Original-To, Delivered-To,
   * Envelope-To and To headers, ARF Original-Mail-From, the original's Return-Path, VERP-looking addresses
   * anywhere in the text.
   */
  envelopeCandidates: string[];
  /** how the report was read ("rfc3464", "plain-text exim", "arf", "autoreply auto-submitted") or why it is unknown */
  detail: string;
}

export interface ParseOptions {
  /** bytes read; the rest is ignored (the machine-readable parts of a report come first). Default 1 MiB */
  maxBytes?: number;
  /** multipart nesting opened. Default 12 */
  maxDepth?: number;
}

export const DEFAULT_MAX_BYTES = 1024 * 1024;
const MAX_TEXT = 64 * 1024;
const MAX_CANDIDATES = 32;
const MAX_ORIGINAL_HEADERS = 100;
const MAX_FIELD = 1000;

const ORIGINAL_TYPES = new Set(['message/rfc822', 'message/global', 'text/rfc822-headers', 'text/global-headers', 'message/rfc822-headers']);
const DSN_TYPES = new Set(['message/delivery-status', 'message/global-delivery-status']);
const FEEDBACK_TYPE = 'message/feedback-report';

const VERP_LIKE = /\bb-[a-z2-7]{20,62}@[a-z0-9.-]{1,253}/gi;
const REF_LINE = /^x-tern-ref:[ \t]*([a-z2-7]{20,62})[ \t]*$/im;
const TOKEN = /^[a-z2-7]{20,62}$/i;
const ANGLE = /<([^<>\s]{1,254})>/;
const BARE_ADDRESS = /[^\s<>()[\]\\,;:"'@]{1,64}@[A-Za-z0-9.-]{1,253}/;

export function emptyOriginal(): OriginalMessage {
  return { returnPath: null, ref: null, messageId: null, headers: null };
}

export function unknownReport(detail: string): Report {
  return { kind: 'unknown', recipients: [], feedback: null, original: emptyOriginal(), envelopeCandidates: [], detail };
}

/** The address in a header value or DSN field: "Name <a@b>", "<a@b>", "rfc822; a@b". */
export function addressOf(value: string | null | undefined): string | null {
  if (!value) return null;
  let v = value.trim();
  const semi = v.indexOf(';');
  if (semi >= 0 && semi < 20 && /^[a-z0-9-]+$/i.test(v.slice(0, semi).trim())) v = v.slice(semi + 1).trim();
  const angle = ANGLE.exec(v);
  if (angle) return angle[1]!.trim() || null;
  const bare = BARE_ADDRESS.exec(v);
  return bare ? bare[0] : null;
}

function clip(v: string | null, max = MAX_FIELD): string | null {
  if (v === null) return null;
  const t = v.replace(/\s+/g, ' ').trim();
  return t ? (t.length > max ? t.slice(0, max) : t) : null;
}

/** The value after a DSN type prefix: "dns; mx.example.com" → "mx.example.com", "smtp; 550 …" → "550 …". */
function typed(value: string | null): string | null {
  if (!value) return null;
  const m = /^\s*[a-z0-9-]{1,20}\s*;\s*/i.exec(value);
  return clip(m ? value.slice(m[0].length) : value);
}

const STATUS_START = /^\s*([245]\.\d{1,3}\.\d{1,3})/;
const STATUS_IN = /(?<![\d.])([245]\.\d{1,3}\.\d{1,3})(?!\.?\d)/;
const CODE_START = /^([2-5]\d\d)(?=[\s-]|$)/;

function fieldBlocks(text: string, limits: MimeLimits): Headers[] {
  const blocks: Headers[] = [];
  for (const chunk of text.split(/\r?\n[ \t]*\r?\n/)) {
    if (!chunk.trim()) continue;
    blocks.push(parseHeaderBlock(chunk, 0, chunk.length, limits));
    if (blocks.length >= 1000) break;
  }
  return blocks;
}

/** The per-recipient fields of a message/delivery-status part. */
function readDeliveryStatus(part: Part, limits: MimeLimits): { recipients: ReportRecipient[]; envid: string | null } {
  const text = decodeCharset(decodeTransfer(part, limits.maxDecoded), part.type === 'message/global-delivery-status' ? 'utf-8' : undefined);
  const recipients: ReportRecipient[] = [];
  let envid: string | null = null;
  for (const f of fieldBlocks(text, limits)) {
    envid ??= f.get('original-envelope-id');
    const final = f.get('final-recipient');
    const original = f.get('original-recipient');
    if (!final && !original && !f.get('action')) continue; // the per-message block
    const rawDiagnostic = f.get('diagnostic-code');
    const diagnostic = rawDiagnostic ? clip(normalizeReplyText(rawDiagnostic)) : null;
    const status = STATUS_START.exec(f.get('status') ?? '')?.[1] ?? (diagnostic ? STATUS_IN.exec(diagnostic)?.[1] : null) ?? null;
    const code = diagnostic ? (CODE_START.exec(diagnostic)?.[1] ?? null) : null;
    recipients.push({
      address: addressOf(final) ?? addressOf(original),
      action: clip(f.get('action'), 40)?.toLowerCase().split(/[\s(]/)[0] ?? null,
      status,
      reply_code: code ? Number(code) : null,
      diagnostic,
      // "dns; aspmx.l.google.com. (142.250.102.26, the server for …)" → the host name
      remote_mta: typed(f.get('remote-mta'))?.split(/[\s(]/)[0]!.replace(/\.$/, '') || null,
      original_recipient: addressOf(original),
    });
  }
  return { recipients, envid: envid && TOKEN.test(envid.trim()) ? envid.trim() : null };
}

function readFeedback(part: Part, limits: MimeLimits): { fields: Headers; feedback: Feedback } {
  const text = decodeCharset(decodeTransfer(part, limits.maxDecoded), undefined);
  const fields = parseHeaderBlock(text, 0, text.length, limits);
  const feedback: Feedback = {
    type: clip(fields.get('feedback-type'), 100)?.toLowerCase() ?? null,
    user_agent: clip(fields.get('user-agent'), 200),
    original_rcpt: addressOf(fields.get('original-rcpt-to')) ?? addressOf(fields.get('removal-recipient')),
    arrival_date: clip(fields.get('arrival-date') ?? fields.get('received-date'), 100),
    source_ip: clip(fields.get('source-ip'), 100),
  };
  return { fields, feedback };
}

/** Headers of the returned message (message/rfc822 or text/rfc822-headers part). */
function originalFrom(headers: Headers): OriginalMessage {
  const record: Record<string, string> = {};
  let n = 0;
  for (const [name, value] of headers.list) {
    if (name in record) continue;
    record[name] = clip(decodeHeader(value), 2000) ?? '';
    if (++n >= MAX_ORIGINAL_HEADERS) break;
  }
  const ref = headers.get('x-tern-ref')?.trim() ?? null;
  return {
    returnPath: addressOf(headers.get('return-path')),
    ref: ref && TOKEN.test(ref) ? ref : null,
    messageId: clip(headers.get('message-id'), 998),
    headers: record,
  };
}

/** A header block quoted in the text after "--- Below this line is a copy of the message." and the like. */
function originalInText(fullText: string, limits: MimeLimits): OriginalMessage | null {
  const cut = cutAtOriginal(fullText);
  if (cut.length === fullText.length) return null;
  let rest = fullText.slice(cut.length);
  rest = rest.slice(rest.indexOf('\n') + 1).replace(/^\s*\n/, '');
  const { headers } = readHeaders(rest, 0, Math.min(rest.length, 64 * 1024), limits);
  const mailish = headers.list.filter(([n]) => ['from', 'to', 'subject', 'date', 'message-id', 'return-path', 'received'].includes(n)).length;
  return mailish >= 2 ? originalFrom(headers) : null;
}

const AUTOREPLY_SUBJECT =
  /out of (?:the )?office|automatic reply|auto(?:matic)?[- ]?(?:reply|response|respon[sd]er|antwort)|autoreply|abwesenheit|automatische antwort|ich bin (?:nicht im büro|abwesend)|r[ée]ponse automatique|absence du bureau|absent du bureau|respuesta autom[áa]tica|fuera de la oficina|risposta automatica|fuori ufficio|automatisch antwoord|afwezig|resposta autom[áa]tica|aus[êe]ncia|fora do escrit[óo]rio|autosvar|fr[åa]nvaro|automaattinen vastaus|odpowied[źz] automatyczna|nieobecno[śs][ćc]|автоответ|автоматический ответ|自動応答|自動返信|自动回复|vacation|on (?:annual )?leave|away from (?:the )?office/i;

/** Why a message is an auto-reply (RFC 3834 headers, vendor headers, subject), or null. */
function autoReplyReason(root: Headers, subject: string): string | null {
  const submitted = (root.get('auto-submitted') ?? '').trim().toLowerCase();
  if (submitted.startsWith('auto-replied')) return 'auto-submitted';
  for (const h of ['x-autoreply', 'x-autorespond', 'x-autoresponder', 'x-auto-reply']) {
    const v = root.get(h);
    if (v !== null && !/^\s*(?:no|false|0)\s*$/i.test(v)) return h;
  }
  if (/^\s*auto[_-]reply\s*$/i.test(root.get('precedence') ?? root.get('x-precedence') ?? '')) return 'precedence';
  if (AUTOREPLY_SUBJECT.test(subject)) return 'subject';
  if (/vacation|autorespond/i.test(root.get('x-mailer') ?? '')) return 'x-mailer';
  return null;
}

const BOUNCE_SENDER = /mailer-daemon|mailer_daemon|postmaster@|mail delivery (?:sub)?system|mail-daemon|^\s*"?(?:bounces?|mdaemon)@/i;
const BOUNCE_SUBJECT =
  /undeliver|undelivered|delivery (?:status notification|failure|failed|has failed|problem|notification|incomplete)|returned mail|mail delivery failed|failure notice|non[- ]?delivery|nondeliverable|could not be delivered|mail system error|returned to sender|message not delivered|unable to deliver|warning: could not send|delayed mail|delivery delayed|unzustellbar|non remis|no se puede entregar|non recapitabile/i;

function textOf(part: Part): string {
  const t = partText(part, MAX_TEXT * 2);
  const text = part.type === 'text/html' ? htmlToText(t) : t;
  return text.length > MAX_TEXT ? text.slice(0, MAX_TEXT) : text;
}

function fromText(r: TextRecipient): ReportRecipient {
  return { ...r, diagnostic: clip(r.diagnostic), original_recipient: null };
}

/** Parses one raw report. Never throws: what cannot be read makes an `unknown` report with the reason. */
export function parseReport(raw: Uint8Array, opts: ParseOptions = {}): Report {
  const maxBytes = opts.maxBytes ?? DEFAULT_MAX_BYTES;
  const bytes = raw.byteLength > maxBytes ? raw.subarray(0, maxBytes) : raw;
  const truncated = raw.byteLength > maxBytes;
  const s = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('latin1');
  const limits: MimeLimits = { ...DEFAULT_MIME_LIMITS, maxDepth: opts.maxDepth ?? DEFAULT_MIME_LIMITS.maxDepth };
  const walk = walkMessage(s, limits);
  const root = walk.root;
  const note = [truncated ? `read the first ${maxBytes} bytes` : '', walk.limited.length ? `limits reached: ${walk.limited.join(', ')}` : ''].filter(Boolean).join('; ');
  const withNote = (d: string) => (note ? `${d} (${note})` : d);
  if (root.list.length === 0) return unknownReport(withNote('no message headers'));

  const dsnPart = walk.parts.find((p) => DSN_TYPES.has(p.type));
  const feedbackPart = walk.parts.find((p) => p.type === FEEDBACK_TYPE);
  const originalPart = walk.parts.find((p) => ORIGINAL_TYPES.has(p.type));
  // the human-readable text: the first text part before the returned message
  const firstOriginal = originalPart ? walk.parts.indexOf(originalPart) : walk.parts.length;
  const textParts = walk.parts.slice(0, firstOriginal).filter((p) => p.type === 'text/plain' || p.type === 'text/html');
  const textPart = textParts.find((p) => p.type === 'text/plain') ?? textParts[0];
  const fullText = textPart ? textOf(textPart) : '';
  const text = cutAtOriginal(fullText);

  let original = emptyOriginal();
  if (originalPart) {
    const body = decodeTransfer(originalPart, limits.maxDecoded).toString('latin1');
    original = originalFrom(readHeaders(body, 0, body.length, limits).headers);
  } else {
    original = originalInText(fullText, limits) ?? original;
  }
  if (!original.ref) original.ref = REF_LINE.exec(fullText)?.[1] ?? null;

  const candidates: string[] = [];
  const addCandidate = (a: string | null) => {
    if (a && candidates.length < MAX_CANDIDATES && !candidates.some((c) => c.toLowerCase() === a.toLowerCase())) candidates.push(a);
  };
  for (const h of ['x-original-to', 'delivered-to', 'envelope-to', 'x-envelope-to', 'to']) for (const v of root.getAll(h)) addCandidate(addressOf(v));

  const subject = decodeHeader(root.get('subject') ?? '');
  const from = decodeHeader(root.get('from') ?? '');
  const report = (kind: ReportKind, recipients: ReportRecipient[], feedback: Feedback | null, detail: string): Report => {
    addCandidate(original.returnPath);
    for (const source of [fullText, originalPart?.body.slice(0, MAX_TEXT) ?? '']) for (const m of source.matchAll(VERP_LIKE)) addCandidate(m[0]);
    return { kind, recipients, feedback, original, envelopeCandidates: candidates, detail: withNote(detail) };
  };
  const reportType = parseReportType(root);

  if (feedbackPart || reportType === 'feedback-report') {
    if (!feedbackPart) return report('unknown', [], null, 'multipart/report of type feedback-report without a message/feedback-report part');
    const { fields, feedback } = readFeedback(feedbackPart, limits);
    addCandidate(addressOf(fields.get('original-mail-from')));
    const h = original.headers ?? {};
    feedback.original_rcpt ??= addressOf(h['x-hmxmroriginalrecipient'] ?? h['x-original-to'] ?? null);
    const rcpts = fields.getAll('original-rcpt-to').map(addressOf).filter((a): a is string => a !== null);
    const addresses = rcpts.length ? rcpts.slice(0, 100) : [feedback.original_rcpt];
    return report('arf', addresses.map((address) => ({ address, action: null, status: null, reply_code: null, diagnostic: null, remote_mta: null, original_recipient: null })), feedback, 'arf');
  }

  // a bounce by its sender or subject; a null Return-Path alone is not enough (auto-replies have one too)
  const bounceSignature = BOUNCE_SENDER.test(from) || BOUNCE_SUBJECT.test(subject);
  const nullSender = /^\s*<\s*>\s*$/.test(root.get('return-path') ?? '');
  if (dsnPart) {
    const { recipients, envid } = readDeliveryStatus(dsnPart, limits);
    if (!original.ref && envid) original.ref = envid;
    // a DSN that says less than its text: the text fills in what the fields leave out
    if (recipients.length === 0 || recipients.some((r) => !r.diagnostic || !r.address)) {
      const plain = text ? readPlainBounce(text, true) : null;
      if (plain && recipients.length === 0) return report('dsn', plain.recipients.map(fromText), null, `rfc3464 without recipients; plain-text ${plain.mta}`);
      for (const r of recipients) {
        const t = plain?.recipients.find((p) => (r.address ? p.address?.toLowerCase() === r.address.toLowerCase() : true));
        if (!t) continue;
        r.address ??= t.address;
        r.diagnostic ??= clip(t.diagnostic);
        r.reply_code ??= t.reply_code;
        r.remote_mta ??= t.remote_mta;
        r.status ??= t.status;
      }
    }
    if (recipients.length) return report('dsn', recipients, null, 'rfc3464');
    return report('unknown', [], null, 'delivery-status part without recipient fields');
  }

  const plain = text ? readPlainBounce(text, bounceSignature || nullSender) : null;
  if (plain) return report('dsn', plain.recipients.map(fromText), null, `plain-text ${plain.mta}`);
  if (bounceSignature) return report('unknown', [], null, 'looks like a bounce, but no recipient could be read from it');

  const autoreply = autoReplyReason(root, subject);
  if (autoreply) {
    const address = addressOf(root.get('reply-to') && !root.get('from') ? root.get('reply-to') : root.get('from'));
    return report('autoreply', [{ address, action: null, status: null, reply_code: null, diagnostic: null, remote_mta: null, original_recipient: null }], null, `autoreply ${autoreply}`);
  }
  return report('unknown', [], null, walk.parts.length ? 'not a DSN, ARF report, bounce or auto-reply' : 'no readable body');
}

function parseReportType(root: Headers): string | null {
  const ct = root.get('content-type') ?? '';
  const m = /report-type\s*=\s*"?([a-z0-9-]{1,40})/i.exec(ct);
  return m ? m[1]!.toLowerCase() : null;
}
