/**
 * Bounces that are not RFC 3464 DSNs (or whose DSN part says too little): recipient, status and diagnostic
 * recovered from the human-readable text, with one reader per family of MTA wording. Each reader looks for
 * its own markers and returns nothing when they are absent; the first that finds recipients wins.
 *
 * Every regular expression here runs on one bounded text (the caller cuts it to 64 KB) and has no nested
 * quantifiers.
 */

export interface TextRecipient {
  address: string | null;
  action: 'failed' | 'delayed';
  status: string | null;
  reply_code: number | null;
  diagnostic: string | null;
  remote_mta: string | null;
}

export interface PlainBounce {
  /** which reader recognised it: "postfix", "exim", "qmail", … */
  mta: string;
  recipients: TextRecipient[];
}

const ADDRESS = /[^\s<>()[\]\\,;:"'@]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}\.){1,10}[A-Za-z0-9-]{2,63}/;
const ADDRESS_G = new RegExp(ADDRESS.source, 'g');
const STATUS = /(?<![\d.])([245]\.\d{1,3}\.\d{1,3})(?!\.?\d)/;
const CODE_BEFORE_STATUS = /(?<!\d)([245]\d\d)[ -]\s?[245]\.\d{1,3}\.\d{1,3}/;
const CODE = /(?:^|[\s'"(:;=<])([245]\d\d)(?=[\s:;,-]|$)/m;
const MAX_DIAGNOSTIC = 1000;
const MAX_BLOCK = 4000;
const REPLY_END = String.raw`'?\s*(?:\(in reply to [^)]{1,60}\)|Giving up on |$)`;
/** Wordings that introduce the remote server's reply, most specific first; group 1 is the reply. */
const REPLY_STARTS = [
  String.raw`SMTP error from remote (?:mail )?server (?:after|for) [^:]{1,60}:(?:<[^<>\s]{1,254}>:)?`,
  String.raw`Remote Server returned`,
  String.raw`The (?:response|error that the other server returned)(?: from the remote server)? was:`,
  String.raw`(?:Remote host )?said:`,
  String.raw`\(?reason:`,
  String.raw`<<<`,
].map((start) => new RegExp(`${start}\\s*'?(.{3,}?)${REPLY_END}`, 'i'));

/** Where the returned copy of the original message starts in the text (nothing after it is the bounce's own). */
const ORIGINAL_COPY =
  /^[ \t]*(?:-{2,} ?Below this line is a copy of the message|-{2,} ?This is a copy of the message|-{2,} ?Original message|-{2,} ?Original Message|-{2,} ?The original message|Original message headers:|-{2,} ?Returned message|-{2,} ?Forwarded message|\*\* ?Original message)/im;

export function cutAtOriginal(text: string): string {
  const m = ORIGINAL_COPY.exec(text);
  return m ? text.slice(0, m.index) : text;
}

const DELAY = /has not yet been delivered|not been delivered yet|delivery (?:has been |is )?delayed|will (?:continue|keep) (?:trying|to try|retrying)|will retry|delay reason|\(delay\)|temporarily deferred|still trying/i;

/** Status, reply code, diagnostic and remote MTA from the text about one recipient. */
function smtpFacts(block: string): Omit<TextRecipient, 'address' | 'action'> {
  // what a server says about one recipient fits in a few lines; more is quoted mail
  const text = (block.length > MAX_BLOCK ? block.slice(0, MAX_BLOCK) : block).replace(/\s+/g, ' ').trim();
  // the remote reply, when the wording says where it starts (most specific wording first)
  let diagnostic = text;
  for (const re of REPLY_STARTS) {
    const m = re.exec(text);
    if (m) {
      diagnostic = m[1]!.trim();
      break;
    }
  }
  // Exim repeats "host mx [ip]:" before the reply
  diagnostic = diagnostic.replace(/^host \S{1,255} \[[0-9a-f.:]{3,45}\]:?\s*/i, '').replace(/^<[^<>\s]{1,254}>:?\s*/, '');
  // "(reason: 550 …)" leaves its ")" behind
  if (diagnostic.endsWith(')') && !diagnostic.includes('(')) diagnostic = diagnostic.slice(0, -1);
  if (diagnostic.length > MAX_DIAGNOSTIC) diagnostic = diagnostic.slice(0, MAX_DIAGNOSTIC);
  const status = STATUS.exec(diagnostic)?.[1] ?? STATUS.exec(text)?.[1] ?? null;
  const codeText = CODE_BEFORE_STATUS.exec(diagnostic)?.[1] ?? CODE.exec(diagnostic)?.[1] ?? null;
  const host =
    /\bhost ([A-Za-z0-9][A-Za-z0-9.-]{0,253})\s?\[[0-9a-fA-F.:]{3,45}\]/.exec(text)?.[1] ??
    /while talking to ([A-Za-z0-9][A-Za-z0-9.-]{0,253}?)\.?:/.exec(text)?.[1] ??
    /Giving up on ([0-9a-fA-F.:]{3,45}?)\.?(?:\s|$)/.exec(text)?.[1] ??
    null;
  return { status, reply_code: codeText ? Number(codeText) : null, diagnostic: diagnostic || null, remote_mta: host };
}

function recipient(address: string | null, block: string, action: 'failed' | 'delayed'): TextRecipient {
  return { address, action, ...smtpFacts(block) };
}

/** Lines after the first match of `marker`, up to `stop` (or the end). */
function section(text: string, marker: RegExp, stop?: RegExp): string | null {
  const m = marker.exec(text);
  if (!m) return null;
  const rest = text.slice(m.index + m[0].length);
  const s = stop?.exec(rest);
  return s ? rest.slice(0, s.index) : rest;
}

/**
 * A list of addresses, each followed by more-indented lines about it (Exim, Lotus Domino, Amazon SES):
 *
 *     someone@example.com
 *       host mx.example.com [203.0.113.9]
 *       SMTP error from remote mail server after RCPT TO:<someone@example.com>:
 *       550 5.1.1 …
 */
function indentedList(body: string, action: 'failed' | 'delayed'): TextRecipient[] {
  const out: TextRecipient[] = [];
  const lines = body.split(/\r?\n/);
  let current: { address: string; indent: number; lines: string[] } | null = null;
  const flush = () => {
    if (current) out.push(recipient(current.address, current.lines.join('\n'), action));
    current = null;
  };
  for (const line of lines) {
    if (!line.trim()) {
      if (current && current.lines.length) flush();
      continue;
    }
    const indent = line.length - line.trimStart().length;
    const m = /^\s*<?([^\s<>@]+@[^\s<>]+?)>?(?:\s+\(([^)]*)\))?:?\s*$/.exec(line);
    if (m && ADDRESS.test(m[1]!) && (!current || indent <= current.indent)) {
      flush();
      current = { address: m[1]!, indent, lines: [] };
    } else if (current) {
      if (current.lines.length < 40) current.lines.push(line);
    } else if (out.length) {
      break; // text after the list
    }
  }
  flush();
  return out;
}

type Reader = (text: string, action: 'failed' | 'delayed') => TextRecipient[];

/** Microsoft Exchange / Office 365 NDR text. */
const exchange: Reader = (text, action) => {
  const list = section(text, /Delivery has failed to these recipients or groups:|did not reach (?:some or all of )?the (?:following|intended) recipient|The following recipient\(s\) (?:cannot be reached|could not be reached)|Your message couldn.t be delivered to/i, /Diagnostic information for administrators|Original message headers/i);
  if (list === null) return [];
  const addresses: string[] = [];
  for (const m of list.matchAll(ADDRESS_G)) if (!addresses.includes(m[0])) addresses.push(m[0]);
  const diag = section(text, /Diagnostic information for administrators:?/i, /Original message headers/i) ?? '';
  return addresses.slice(0, 100).map((address) => {
    // the administrators' section names each recipient and then the remote server's words about it
    const at = diag.indexOf(address);
    const about = at >= 0 ? diag.slice(at + address.length, at + address.length + 1500) : '';
    const next = about.search(ADDRESS);
    const words = about.slice(0, next > 40 ? next : undefined);
    // "Remote Server returned '550 …'" (2010 and later), "#550 5.2.2 … ##", "<mx #5.1.1 smtp;550 …>" (2007)
    const returned = /Remote Server returned '([^']{3,1000})'|#([245]\d\d[ -][245]\.\d{1,3}\.\d{1,3}[^#]{1,1000})#|#([245]\.\d{1,3}\.\d{1,3} smtp;[^>#]{3,1000})/i.exec(words || list);
    const block = returned ? (returned[1] ?? returned[2] ?? returned[3]!) : list;
    const r = recipient(address, block, action);
    if (returned) r.diagnostic = block.replace(/^[245]\.\d{1,3}\.\d{1,3} smtp;\s*/i, '').replace(/\s+/g, ' ').trim();
    return r;
  });
};

/** Gmail's own failure notices (when the DSN part is missing or said less). */
const gmail: Reader = (text, action) => {
  const to = /(?:(?:wasn.t|was not|hasn.t been|has not been) delivered|problem delivering your message) to ([^\s<>@]+@[^\s<>]+?)(?=[\s.,]|$)/i.exec(text);
  if (!to) return [];
  const said = /The response(?: from the remote server)? was:\s*([\s\S]{3,1500}?)(?:\n[ \t]*\n|$)/i.exec(text);
  return [recipient(to[1]!, said ? `said: ${said[1]}` : text.slice(0, 1500), action)];
};

/** Exim: "The following address(es) failed:" and its delay warning. */
const exim: Reader = (text, action) => {
  const body = section(text, /The following address(?:\(es\)|es)? failed:|address(?:\(es\)|es)? to which the message has not yet been delivered (?:is|are):|could not be delivered to one or more of its\s+recipients[^\n]*\n/i);
  return body === null ? [] : indentedList(body, action);
};

/** Lotus Domino: "was not delivered to: … because: …". */
const domino: Reader = (text, action) => {
  const m = /was not delivered to:\s*\n([\s\S]{1,5000}?)\n[ \t]*because:\s*\n\s*([^\n]{1,1000})/i.exec(text);
  if (!m) return [];
  return [...m[1]!.matchAll(ADDRESS_G)].slice(0, 100).map((a) => recipient(a[0], m[2]!, action));
};

/** Amazon SES: "An error occurred while trying to deliver the mail to the following recipients:". */
const ses: Reader = (text, action) => {
  const body = section(text, /An error occurred while trying to deliver the mail to the following recipients?:/i);
  return body === null ? [] : indentedList(body, action);
};

/** Sendmail: "----- The following addresses had permanent fatal errors -----" with "(reason: …)". */
const sendmail: Reader = (text, action) => {
  const body = section(text, /-{3,} ?The following addresses? ha(?:d|ve) (?:permanent fatal errors|transient non-fatal errors)? ?-{3,}/i, /-{3,} ?Transcript of session follows/i);
  if (body === null) return [];
  const transcript = section(text, /-{3,} ?Transcript of session follows ?-{3,}/i) ?? '';
  const found = indentedList(body, action);
  for (const r of found) {
    if (r.status && r.reply_code) continue;
    // the transcript holds the remote reply: "<<< 550 5.1.1 <x>... User unknown"
    const at = transcript.indexOf(r.address!);
    const reply = at >= 0 ? /<<<\s*([245]\d\d[^\n]{0,1000})/.exec(transcript.slice(at, at + 2000)) : null;
    if (reply) Object.assign(r, smtpFacts(`said: ${reply[1]}`), { remote_mta: smtpFacts(transcript).remote_mta });
  }
  return found;
};

/**
 * One block per recipient starting with "<address>" (Postfix "<a@b>: host … said: …", qmail and Yahoo
 * "<a@b>:" then the reason, Courier, Sendmail's list). The block runs to the next blank line.
 */
const angleBlocks: Reader = (text, action) => {
  const out: TextRecipient[] = [];
  const lines = text.split(/\r?\n/);
  for (let i = 0; i < lines.length && out.length < 100; i++) {
    const m = /^<([^<>\s]{1,254})>:?\s*(.*)$/.exec(lines[i]!);
    if (!m || !ADDRESS.test(m[1]!)) continue;
    const block = [m[2]!];
    while (i + 1 < lines.length && lines[i + 1]!.trim() !== '' && !/^<[^<>\s]+@[^<>\s]+>/.test(lines[i + 1]!)) block.push(lines[++i]!);
    out.push(recipient(m[1]!, block.join('\n'), action));
  }
  return out;
};

/** An SMTP session transcript (MDaemon, Courier, Sendmail): "RCPT To:<a@b>" and the reply after it. */
const transcript: Reader = (text, action) => {
  const out: TextRecipient[] = [];
  for (const m of text.matchAll(/RCPT TO:\s*<([^<>\s]{1,254})>[^\n]*\n[^\n]{0,80}?(?:<<<|<--|^)\s*([245]\d\d[ -][^\n]{0,1000})/gim)) {
    if (!ADDRESS.test(m[1]!) || out.some((r) => r.address === m[1])) continue;
    out.push(recipient(m[1]!, `said: ${m[2]}`, action));
    if (out.length >= 100) break;
  }
  return out.filter((r) => r.reply_code === null || r.reply_code >= 400);
};

/** name, marker, reader, and whether the reader is generic (used only on a message that looks like a bounce) */
const READERS: Array<[string, RegExp, Reader, boolean?]> = [
  ['exchange', /Delivery has failed to these recipients|did not reach (?:some or all of )?the (?:following|intended) recipient|following recipient\(s\) (?:cannot|could not) be reached|Your message couldn.t be delivered/i, exchange],
  ['gmail', /(?:wasn.t|was not|hasn.t been) delivered to \S+@|\*\* (?:Address not found|Message not delivered|Message blocked|Delivery incomplete) \*\*/i, gmail],
  ['exim', /This message was created automatically by mail delivery software|The following address(?:\(es\)|es)? failed/i, exim],
  ['domino', /was not delivered to:\s*\n/i, domino],
  ['amazon-ses', /An error occurred while trying to deliver the mail to the following recipients?/i, ses],
  ['sendmail', /-{3,} ?The following addresses? ha(?:d|ve) /i, sendmail],
  ['qmail', /This is the qmail-send program|I.m afraid I wasn.t able to deliver your message/i, angleBlocks],
  ['yahoo', /Sorry, we were unable to deliver your message to the following address/i, angleBlocks],
  ['postfix', /This is the mail system at host|The mail system\s*$/im, angleBlocks],
  ['courier', /running the Courier mail server|UNDELIVERABLE MAIL/i, angleBlocks],
  ['mdaemon', /PERMANENT fatal delivery errors|--- Session Transcript ---/i, transcript],
  ['angle-blocks', /^<[^<>\s]+@[^<>\s]+>:/m, angleBlocks, true],
  ['transcript', /RCPT TO:\s*</i, transcript, true],
];

/**
 * Reads the human-readable text of a bounce. Returns null when no reader recognises it or none finds a
 * recipient. `text` is the bounce's own text (cut it at the returned original with cutAtOriginal());
 * `looksLikeBounce` (its sender or subject says so) lets the generic readers try too.
 */
export function readPlainBounce(text: string, looksLikeBounce: boolean): PlainBounce | null {
  const action = DELAY.test(text) ? 'delayed' : 'failed';
  for (const [mta, marker, read, generic] of READERS) {
    if ((generic && !looksLikeBounce) || !marker.test(text)) continue;
    const recipients = read(text, action);
    if (recipients.length) return { mta, recipients };
  }
  return null;
}
