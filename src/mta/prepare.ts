/**
 * Message preparation: the named steps every accepted message goes through before it is spooled.
 *   checkLineEndings → parseHeaders → checkAddresses → readTernHeaders → completeHeaders → personalise → sign
 * Pure: bytes in, bytes (or a refusal) out. It runs in worker threads (see prepare-pool.ts).
 * `personalise` (src/tracking/personalise.ts) makes one copy per recipient when the message is tracked or
 * gets a List-Unsubscribe (its tokens name the recipient); each copy is signed on its own.
 */
import { dkimSignatures, type SigningKey } from './dkim.js';
import { parseAddressHeader, domainOf } from './address.js';
import { splitMessage, joinMessage, type HeaderField } from './headers.js';
import { planPersonalisation, type TrackingSettings } from '../tracking/personalise.js';
import type { TrackingTokens } from '../tracking/tokens.js';

export interface PrepareInput {
  raw: Uint8Array;
  /** the node's name, used in an added Message-ID */
  hostname: string;
  /** the spool's queue id: tracking tokens carry it, and an added Message-ID's left part is made of it */
  id: string;
  /** SMTPUTF8 was given: UTF-8 addresses are fine */
  utf8: boolean;
  /** the tenant the message is sent for, and the sender id, for Feedback-ID */
  tenant: string;
  feedbackSenderId: string;
  now?: number;
  /** the tenant's stream when the message does not say (X-Tern-Stream), or the API call's; default marketing */
  stream?: 'marketing' | 'transactional';
  /** tracking and List-Unsubscribe for the tenant (src/tracking/settings.ts); null: one body for all */
  tracking?: TrackingSettings | null;
}

export interface Refusal {
  ok: false;
  /** SMTP reply code and enhanced status for the client */
  code: number;
  status: string;
  reason: string;
}

export interface Prepared {
  ok: true;
  message: Uint8Array;
  messageId: string;
  fromDomain: string;
  signedBy: string[];
  /** from X-Tern-Campaign ('-' when absent) */
  campaign: string;
  /** from X-Tern-Stream, else the input's stream: transactional or marketing (the default) */
  stream: 'marketing' | 'transactional';
  /** one signed copy per recipient of `tracking.recipients`, when personalised (then `message` is the first) */
  personal?: Uint8Array[];
}

const MAX_LINE = 998;

const refuse = (code: number, status: string, reason: string): Refusal => ({ ok: false, code, status, reason });

/**
 * Refuses NUL, bare CR, bare LF and over-long lines. A bare CR or LF is how SMTP smuggling hides a second
 * message inside the first (`\n.\n`, `\r.\r`…): no such byte may reach the spool or another MTA.
 */
export function checkLineEndings(raw: Uint8Array): Refusal | null {
  const buf = Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength);
  if (buf.indexOf(0) !== -1) return refuse(554, '5.6.0', 'Message contains a NUL byte; NUL is not allowed in mail');
  let lineStart = 0;
  let lf = buf.indexOf(10);
  let cr = buf.indexOf(13);
  while (lf !== -1) {
    if (lf === 0 || buf[lf - 1] !== 13) return refuse(554, '5.6.0', 'Message contains a bare LF; lines must end with CRLF');
    if (cr !== -1 && cr < lf - 1) return refuse(554, '5.6.0', 'Message contains a bare CR; lines must end with CRLF');
    if (lf - 1 - lineStart > MAX_LINE) return refuse(554, '5.6.0', `Message has a line longer than ${MAX_LINE} octets; wrap or encode it`);
    lineStart = lf + 1;
    cr = buf.indexOf(13, lineStart);
    lf = buf.indexOf(10, lineStart);
  }
  if (cr !== -1) return refuse(554, '5.6.0', 'Message contains a bare CR; lines must end with CRLF');
  if (buf.length - lineStart > MAX_LINE) return refuse(554, '5.6.0', `Message has a line longer than ${MAX_LINE} octets; wrap or encode it`);
  return null;
}

const ADDRESS_HEADERS: Record<string, { allowGroups: boolean; single?: boolean }> = {
  from: { allowGroups: false },
  sender: { allowGroups: false, single: true },
  'reply-to': { allowGroups: true },
  to: { allowGroups: true },
  cc: { allowGroups: true },
  bcc: { allowGroups: true },
};

function checkAddresses(fields: HeaderField[], utf8: boolean): Refusal | { fromDomain: string } {
  const froms = fields.filter((f) => f.lname === 'from');
  if (froms.length !== 1) return refuse(550, '5.6.0', froms.length ? 'Message has more than one From header' : 'Message has no From header; add one');
  let fromDomain = '';
  for (const f of fields) {
    const rule = ADDRESS_HEADERS[f.lname];
    if (!rule) continue;
    const raw = /[^\x00-\x7f]/.test(f.value) ? Buffer.from(f.value, 'latin1').toString('utf8') : f.value;
    const value = raw.replace(/\r\n(?=[ \t])/g, '').trim();
    if (!value && (f.lname === 'bcc' || f.lname === 'cc' || f.lname === 'to')) continue;
    const parsed = parseAddressHeader(value, { utf8, ...rule });
    if ('error' in parsed) return refuse(550, '5.6.0', `${f.name} header: ${parsed.error}`);
    if (f.lname === 'from') fromDomain = domainOf(parsed.addresses[0]!);
  }
  return { fromDomain };
}

const DAYS = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'];
const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];
const pad = (n: number) => String(n).padStart(2, '0');

/** RFC 5322 date-time in UTC. */
export function rfc5322Date(ms: number): string {
  const d = new Date(ms);
  return `${DAYS[d.getUTCDay()]}, ${d.getUTCDate()} ${MONTHS[d.getUTCMonth()]} ${d.getUTCFullYear()} ${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())} +0000`;
}

/** Instructions to Tern in the message's own headers; they are removed before it is sent. */
const TERN_HEADERS = new Set(['x-tern-campaign', 'x-tern-stream', 'x-tern-track']);
const CAMPAIGN = /^[A-Za-z0-9._-]{1,64}$/;

interface TernInstructions {
  campaign: string;
  stream: 'marketing' | 'transactional' | undefined;
  /** X-Tern-Track: on/off, when given */
  track: boolean | undefined;
}

function readTernHeaders(fields: HeaderField[]): Refusal | TernInstructions {
  const value = (name: string) => {
    const found = fields.filter((f) => f.lname === name);
    if (found.length > 1) return { error: `Message has more than one ${found[0]!.name} header` };
    return { value: found[0]?.value.replace(/\r\n(?=[ \t])/g, '').trim() };
  };
  const campaign = value('x-tern-campaign');
  const stream = value('x-tern-stream');
  const track = value('x-tern-track');
  if ('error' in campaign) return refuse(550, '5.6.0', campaign.error!);
  if ('error' in stream) return refuse(550, '5.6.0', stream.error!);
  if ('error' in track) return refuse(550, '5.6.0', track.error!);
  if (campaign.value !== undefined && !CAMPAIGN.test(campaign.value))
    return refuse(550, '5.6.0', 'X-Tern-Campaign must be 1 to 64 letters, digits, ".", "_" or "-"');
  const s = stream.value?.toLowerCase();
  if (s !== undefined && s !== 'marketing' && s !== 'transactional') return refuse(550, '5.6.0', 'X-Tern-Stream must be "marketing" or "transactional"');
  const t = track.value?.toLowerCase();
  if (t !== undefined && t !== 'on' && t !== 'off') return refuse(550, '5.6.0', 'X-Tern-Track must be "on" or "off"');
  return { campaign: campaign.value ?? '-', stream: s as 'marketing' | 'transactional' | undefined, track: t === undefined ? undefined : t === 'on' };
}

export function prepareMessage(input: PrepareInput, keysFor: (fromDomain: string) => SigningKey[], tokens: TrackingTokens | null = null): Prepared | Refusal {
  const now = input.now ?? Date.now();
  const lineProblem = checkLineEndings(input.raw);
  if (lineProblem) return lineProblem;

  const text = Buffer.from(input.raw.buffer, input.raw.byteOffset, input.raw.byteLength).toString('latin1');
  const { fields, body, malformed } = splitMessage(text);
  if (malformed !== undefined) return refuse(550, '5.6.0', `Malformed header line "${malformed.slice(0, 60)}"; headers are "Name: value"`);

  const checked = checkAddresses(fields, input.utf8);
  if ('ok' in checked) return checked;

  const ternHeaders = readTernHeaders(fields);
  if ('ok' in ternHeaders) return ternHeaders;
  const tern = { ...ternHeaders, stream: ternHeaders.stream ?? input.stream ?? 'marketing' };

  // Bcc must not travel (RFC 5322 §3.6.3): the envelope already carries those recipients. Neither do our
  // own instructions, nor a Feedback-ID the client made up: ours identifies the tenant for complaint reports.
  const kept = fields.filter((f) => f.lname !== 'bcc' && f.lname !== 'feedback-id' && !TERN_HEADERS.has(f.lname));
  // Gmail's format: campaign:customer:mail type:sender id, signed with the rest
  kept.push({ name: 'Feedback-ID', lname: 'feedback-id', value: ` ${tern.campaign}:${input.tenant}:${tern.stream}:${input.feedbackSenderId}` });
  let messageIdField = kept.find((f) => f.lname === 'message-id');
  if (!messageIdField) {
    messageIdField = { name: 'Message-ID', lname: 'message-id', value: ` <${input.id}@${input.hostname}>` };
    kept.push(messageIdField);
  }
  if (!kept.some((f) => f.lname === 'date')) kept.push({ name: 'Date', lname: 'date', value: ` ${rfc5322Date(now)}` });

  const keys = keysFor(checked.fromDomain);
  const plan = personalisation(input, kept, body, tern, tokens, now);
  const personal = plan?.recipients.map((_, i) => {
    const copy = plan.forRecipient(i);
    return signedCopy(copy.fields, copy.body, keys, now);
  });
  const message = personal?.[0] ?? withBody(dkimSignatures(kept, body, keys, now) + joinMessage(kept, ''), input.raw, body.length);
  return {
    ok: true,
    message,
    personal,
    messageId: Buffer.from(messageIdField.value, 'latin1').toString('utf8').trim(),
    fromDomain: checked.fromDomain,
    signedBy: keys.map((k) => `${k.selector}._domainkey.${k.domain}`),
    campaign: tern.campaign,
    stream: tern.stream,
  };
}

/**
 * The new header block followed by the message's own body bytes (the last `bodyLength` bytes of `raw`), in a
 * buffer of its own: the body is copied as bytes, never turned back from text.
 */
function withBody(head: string, raw: Uint8Array, bodyLength: number): Buffer {
  const out = Buffer.allocUnsafeSlow(head.length + bodyLength);
  out.write(head, 0, 'latin1');
  out.set(raw.subarray(raw.byteLength - bodyLength), head.length);
  return out;
}

/** A signed recipient's copy, in a buffer of its own so that it moves between threads without a copy. */
function signedCopy(fields: HeaderField[], body: string, keys: SigningKey[], now: number): Buffer {
  const text = dkimSignatures(fields, body, keys, now) + joinMessage(fields, body);
  const out = Buffer.allocUnsafeSlow(text.length);
  out.write(text, 'latin1');
  return out;
}

/** The per-recipient copies to make when the message is tracked or gets a List-Unsubscribe; null when one body serves all. */
function personalisation(input: PrepareInput, fields: HeaderField[], body: string, tern: TernInstructions & { stream: 'marketing' | 'transactional' }, tokens: TrackingTokens | null, now: number) {
  const settings = input.tracking;
  if (!settings || !tokens || !settings.recipients.length) return null;
  const track = tern.track ?? settings.track;
  const plan = planPersonalisation(fields, body, settings, { msgId: input.id, tenant: input.tenant, campaign: tern.campaign, stream: tern.stream, track, now }, tokens);
  return plan ? { recipients: settings.recipients, forRecipient: plan.forRecipient } : null;
}

/** Finds the keys for a From domain: its own, else the nearest parent domain that has keys. */
export function keyLookup(keys: SigningKey[]): (domain: string) => SigningKey[] {
  const byDomain = new Map<string, SigningKey[]>();
  for (const k of keys) byDomain.set(k.domain, [...(byDomain.get(k.domain) ?? []), k]);
  return (domain) => {
    for (let d = domain; d.includes('.'); d = d.slice(d.indexOf('.') + 1)) {
      const found = byDomain.get(d);
      if (found) return found;
    }
    return [];
  };
}
