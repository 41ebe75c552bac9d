/**
 * DKIM signing (RFC 6376, relaxed/relaxed; RFC 8463 for Ed25519) and key generation.
 *
 * mailauth verifies; it cannot sign with over-signed headers (h= naming a header once more than it occurs,
 * which stops a replayer from adding a second From or Subject), so signing is done here.
 */
import crypto, { type KeyObject } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { HeaderField } from './headers.js';

export type DkimAlgorithm = 'rsa-sha256' | 'ed25519-sha256';

export interface SigningKey {
  domain: string;
  selector: string;
  algorithm: DkimAlgorithm;
  key: KeyObject;
}

/** RFC 6376 §5.4.1 plus the headers a sending platform adds; each present instance is signed. */
const SIGNED = [
  'from', 'sender', 'reply-to', 'subject', 'date', 'message-id', 'to', 'cc', 'mime-version', 'content-type',
  'content-transfer-encoding', 'content-id', 'content-description', 'resent-date', 'resent-from', 'resent-sender',
  'resent-to', 'resent-cc', 'resent-message-id', 'in-reply-to', 'references', 'list-id', 'list-help',
  'list-unsubscribe', 'list-unsubscribe-post', 'list-subscribe', 'list-post', 'list-owner', 'list-archive',
  'feedback-id',
];
/** Named once more than they occur, so that adding one breaks the signature (DKIM replay defence). */
const OVERSIGNED = new Set(['from', 'to', 'subject', 'date', 'message-id', 'reply-to', 'cc', 'sender', 'list-unsubscribe', 'list-unsubscribe-post']);

export function loadSigningKey(domain: string, selector: string, pem: string): SigningKey {
  const key = crypto.createPrivateKey(pem);
  const type = key.asymmetricKeyType;
  if (type !== 'rsa' && type !== 'ed25519') throw new Error(`DKIM key for ${selector}._domainkey.${domain} is ${type}; use RSA or Ed25519`);
  if (type === 'rsa' && (key.asymmetricKeyDetails?.modulusLength ?? 0) < 1024)
    throw new Error(`DKIM key for ${selector}._domainkey.${domain} is shorter than 1024 bits; mailbox providers ignore it`);
  return { domain: domain.toLowerCase(), selector, algorithm: type === 'rsa' ? 'rsa-sha256' : 'ed25519-sha256', key };
}

/**
 * The places relaxed body canonicalization (RFC 6376 §3.4.4) changes: white space before a line end or at the
 * very end (dropped), a run of it or a tab (one space). A single space between words, by far the most common
 * white space, is not one of them.
 */
const RELAXED_BODY_CHANGES = /[ \t]+\r\n|[ \t]+$|[ \t]{2,}|\t/g;

/** Relaxed body canonicalization over a latin1 view of the bytes; empty lines at the end are ignored. */
export function relaxedBody(body: string): string {
  // most bodies have nothing to change but the end; the others are rewritten at their few odd places only
  // (rewriting every run of white space, single spaces included, took 3x as long on ordinary text)
  const c = /\t| [ \r]| $/.test(body)
    ? body.replace(RELAXED_BODY_CHANGES, (m: string, offset: number) => (m.endsWith('\r\n') ? '\r\n' : offset + m.length === body.length ? '' : ' '))
    : body;
  let end = c.length;
  while (end >= 2 && c.charCodeAt(end - 2) === 13 && c.charCodeAt(end - 1) === 10) end -= 2;
  return end ? c.slice(0, end) + '\r\n' : '';
}

/** Relaxed header canonicalization of one field (name and raw value, folded lines allowed). */
export function relaxedHeader(name: string, value: string): string {
  // (a single space is left as it is: only runs and tabs become one space)
  return `${name.trim().toLowerCase()}:${value.replace(/\r\n(?=[ \t])/g, '').replace(/[ \t]{2,}|\t/g, ' ').trim()}\r\n`;
}

/** Picks header instances the way a verifier does: for each name in h=, the next unused one from the bottom. */
function headerHashInput(fields: HeaderField[], names: string[]): string {
  const used = new Set<number>();
  let out = '';
  for (const name of names) {
    for (let i = fields.length - 1; i >= 0; i--) {
      if (!used.has(i) && fields[i]!.lname === name) {
        used.add(i);
        out += relaxedHeader(fields[i]!.name, fields[i]!.value);
        break;
      }
    }
  }
  return out;
}

function signedHeaderNames(fields: HeaderField[]): string[] {
  const counts = new Map<string, number>();
  for (const f of fields) counts.set(f.lname, (counts.get(f.lname) ?? 0) + 1);
  const names: string[] = [];
  for (const name of SIGNED) {
    const n = (counts.get(name) ?? 0) + (OVERSIGNED.has(name) ? 1 : 0);
    for (let i = 0; i < n; i++) names.push(name);
  }
  return names;
}

function fold(value: string, width = 74): string {
  const parts: string[] = [];
  for (let i = 0; i < value.length; i += width) parts.push(value.slice(i, i + width));
  return parts.join('\r\n\t');
}

/**
 * Returns the DKIM-Signature header lines (CRLF-terminated) to prepend to the message: one per key.
 * `headerFields` are the message's parsed header fields, `body` the bytes after the blank line (latin1).
 */
export function dkimSignatures(headerFields: HeaderField[], body: string, keys: SigningKey[], now = Date.now()): string {
  if (!keys.length) return '';
  const bh = crypto.createHash('sha256').update(relaxedBody(body), 'latin1').digest('base64');
  const names = signedHeaderNames(headerFields);
  const hashed = headerHashInput(headerFields, names);
  const t = Math.floor(now / 1000);
  let out = '';
  for (const k of keys) {
    const value =
      ` v=1; a=${k.algorithm}; c=relaxed/relaxed; d=${k.domain}; s=${k.selector};\r\n\tt=${t};` +
      ` h=${fold(names.join(':'), 70)};\r\n\tbh=${bh};\r\n\tb=`;
    const data = hashed + relaxedHeader('DKIM-Signature', value).slice(0, -2);
    const signature =
      k.algorithm === 'rsa-sha256'
        ? crypto.sign('sha256', Buffer.from(data, 'latin1'), k.key)
        : crypto.sign(null, crypto.createHash('sha256').update(data, 'latin1').digest(), k.key);
    out += `DKIM-Signature:${value}${fold(signature.toString('base64'))}\r\n`;
  }
  return out;
}

/** The DNS TXT record that publishes a key's public half. */
export function dnsRecordFor(privateKeyPem: string): { type: 'rsa' | 'ed25519'; txt: string } {
  const pub = crypto.createPublicKey(privateKeyPem);
  const der = pub.export({ type: 'spki', format: 'der' });
  if (pub.asymmetricKeyType === 'ed25519') return { type: 'ed25519', txt: `v=DKIM1; k=ed25519; p=${der.subarray(der.length - 32).toString('base64')}` };
  return { type: 'rsa', txt: `v=DKIM1; k=rsa; p=${der.toString('base64')}` };
}

/** Generates a key, writes it (mode 0600) and returns the path and the TXT record to publish. */
export function generateDkimKey(opts: { domain: string; selector: string; type: 'rsa' | 'ed25519'; bits?: number; dir: string }): { keyFile: string; name: string; txt: string } {
  const { privateKey } =
    opts.type === 'ed25519'
      ? crypto.generateKeyPairSync('ed25519')
      : crypto.generateKeyPairSync('rsa', { modulusLength: opts.bits ?? 2048 });
  const pem = privateKey.export({ type: 'pkcs8', format: 'pem' }) as string;
  fs.mkdirSync(opts.dir, { recursive: true });
  const keyFile = path.join(opts.dir, `${opts.domain}.${opts.selector}.${opts.type}.pem`);
  fs.writeFileSync(keyFile, pem, { mode: 0o600, flag: 'wx' });
  return { keyFile, name: `${opts.selector}._domainkey.${opts.domain}`, txt: dnsRecordFor(pem).txt };
}
