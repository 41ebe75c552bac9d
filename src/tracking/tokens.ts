/**
 * Tracking tokens: what an open pixel, a tracked link or an unsubscribe URL carries, signed so that any
 * tracking node can act on it without a lookup, and so that no one can make one we did not.
 *
 *   token   = base64url(keyId ‖ mac ‖ AES-128-CTR(encKey, counter block = mac ‖ 0⁴, payload))
 *   mac     = HMAC-SHA256(macKey, payload)[0..12]
 *   payload = kind ‖ sentAt (uint32, seconds) ‖ id(queue id) ‖ leb(rcpt index) ‖ [leb(link index)]
 *             ‖ str(tenant) ‖ str(campaign) ‖ str(rcpt address) ‖ [destination URL: the rest, click only]
 *
 * A click token covers its destination URL: the redirect goes only where the signature says, so there is no
 * open redirect. The payload is encrypted (synthetic-IV: the MAC of the plaintext is the IV, as in SIV), so a
 * link shows nothing about its recipient to whoever sees it (a forwarded message, a proxy's log, a Referer).
 * The kind is signed too: an open token is refused on /c/ and the other way round.
 *
 * Keys: `<data_dir>/keys/tracking.key` (32 random bytes as hex, 0600, made on first start) signs; every
 * `keys/tracking.old*.key` still verifies (rotation: rename the key, restart, delete the old file once links
 * in mail already sent no longer matter). `tracking.keys` in the config names the files instead. Every node
 * that sends tracked mail or serves the tracking listener for it must hold the same files.
 *
 * Mailto unsubscribe addresses (`u-<token>@<bounce domain>`) carry a shorter, lowercase base32 token (a local
 * part is at most 64 octets and some MTAs change its case): queue id, recipient index and, when it fits, the
 * tenant, with an 80-bit MAC, in the style of VERP (src/bounce/verp.ts).
 *
 * id(queue id) is 13 bytes for an id made by newMessageId() (time, counter and process tag packed), else a
 * marker byte and str(id); str = leb(length) ‖ UTF-8; leb = unsigned LEB128.
 */
import crypto from 'node:crypto';
import { keyRing, readHexKeyFile } from '../core/keyring.js';
import { base32Decode, base32Encode } from '../bounce/verp.js';

export type TokenKind = 'open' | 'click' | 'unsubscribe' | 'trap';

const KIND_BYTE: Record<TokenKind, number> = { open: 1, click: 2, unsubscribe: 3, trap: 4 };
const BYTE_KIND: Record<number, TokenKind> = { 1: 'open', 2: 'click', 3: 'unsubscribe', 4: 'trap' };

export interface TokenFields {
  /** the spool's queue id */
  msgId: string;
  /** index of the recipient in the message's recipient list (the spool's) */
  rcptIndex: number;
  rcpt: string;
  tenant: string;
  /** '-' when the message has none */
  campaign: string;
  /** acceptance time, ms (carried to the second) */
  sentAt: number;
}

export interface ClickFields extends TokenFields {
  link: number;
  url: string;
}

export type DecodedToken =
  | ({ kind: 'open' | 'unsubscribe' | 'trap' } & TokenFields)
  | ({ kind: 'click' } & ClickFields);

export type TokenRejection = 'malformed' | 'forged';
export type TokenResult = ({ ok: true } & { token: DecodedToken }) | { ok: false; reason: TokenRejection };

const MAC_BYTES = 12;
const COMPACT_ID = /^[0-9a-z]{13}[A-Za-z0-9_-]{4}$/;
const ID_COMPACT = 1;
const ID_RAW = 2;
/** longest token accepted: a click token with a 2,000-character URL and long names stays well under it */
export const MAX_TOKEN_LENGTH = 4096;
/** longest destination URL a link may have to be tracked */
export const MAX_URL_LENGTH = 2000;
const BASE64URL = /^[A-Za-z0-9_-]+$/;

const MAIL_MAC_BYTES = 10;
const MAIL_PREFIX = 'u-';
const MAX_LOCAL_PART = 64;

interface DerivedKey {
  id: number;
  mac: Buffer;
  /** AES-128 as a block function, made once: CTR mode is built on it (see ctr()) */
  block: crypto.Cipher;
  mail: Buffer;
}

function derive(key: Buffer): DerivedKey {
  const sub = (label: string) => crypto.createHmac('sha256', key).update(label).digest();
  return {
    id: crypto.createHash('sha256').update(key).digest()[0]!,
    mac: sub('tern-track-mac'),
    block: crypto.createCipheriv('aes-128-ecb', sub('tern-track-enc').subarray(0, 16), null).setAutoPadding(false),
    mail: sub('tern-track-mailto'),
  };
}

/**
 * AES-128-CTR of `data` with the counter block mac ‖ 0⁴ (the same bytes as OpenSSL's aes-128-ctr), on the
 * key's reusable block cipher: a cipher object per token was a tenth of the tracking listener's time.
 */
function ctr(k: DerivedKey, mac: Buffer, data: Buffer, out: Buffer, at: number): void {
  const blocks = Math.ceil(data.length / 16);
  const counters = Buffer.allocUnsafe(blocks * 16);
  for (let b = 0; b < blocks; b++) {
    mac.copy(counters, b * 16, 0, MAC_BYTES);
    counters.writeUInt32BE(b, b * 16 + 12);
  }
  const stream = k.block.update(counters);
  for (let i = 0; i < data.length; i++) out[at + i] = data[i]! ^ stream[i]!;
}

// ---- byte helpers -------------------------------------------------------------------------------------

/** Appends to one growing buffer (tokens are made per recipient and link: few allocations matter). */
class Writer {
  private buf = Buffer.allocUnsafe(256);
  private pos = 0;
  private room(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    const bigger = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.pos + n));
    this.buf.copy(bigger, 0, 0, this.pos);
    this.buf = bigger;
  }
  byte(b: number): this {
    this.room(1);
    this.buf[this.pos++] = b;
    return this;
  }
  uint32(n: number): this {
    this.room(4);
    this.pos = this.buf.writeUInt32BE(n >>> 0, this.pos);
    return this;
  }
  leb(n: number): this {
    if (!Number.isInteger(n) || n < 0 || n > 2 ** 31 - 1) throw new RangeError(`tracking token: ${n} is not an index`);
    do {
      let b = n & 0x7f;
      n >>>= 7;
      if (n) b |= 0x80;
      this.byte(b);
    } while (n);
    return this;
  }
  str(s: string): this {
    const len = Buffer.byteLength(s, 'utf8');
    this.leb(len);
    return this.utf8(s, len);
  }
  utf8(s: string, len = Buffer.byteLength(s, 'utf8')): this {
    this.room(len);
    this.pos += this.buf.write(s, this.pos, 'utf8');
    return this;
  }
  /** A queue id: packed when it has newMessageId()'s shape (9 + 4 base-36 characters, 4 base64url). */
  id(msgId: string): this {
    if (!COMPACT_ID.test(msgId)) return this.byte(ID_RAW).str(msgId);
    this.room(13);
    this.buf[this.pos] = ID_COMPACT;
    this.buf.writeUIntBE(parseInt(msgId.slice(0, 9), 36), this.pos + 1, 6);
    this.buf.writeUIntBE(parseInt(msgId.slice(9, 13), 36), this.pos + 7, 3);
    this.buf.write(msgId.slice(13), this.pos + 10, 'base64url');
    this.pos += 13;
    return this;
  }
  raw(b: Buffer): this {
    this.room(b.length);
    this.pos += b.copy(this.buf, this.pos);
    return this;
  }
  done(): Buffer {
    return this.buf.subarray(0, this.pos);
  }
}

/** Reads what Writer wrote; every read past the end or non-canonical value makes it fail. */
class Reader {
  pos = 0;
  failed = false;
  constructor(private readonly buf: Buffer) {}
  byte(): number {
    if (this.pos >= this.buf.length) return this.fail(0);
    return this.buf[this.pos++]!;
  }
  uint32(): number {
    if (this.pos + 4 > this.buf.length) return this.fail(0);
    const n = this.buf.readUInt32BE(this.pos);
    this.pos += 4;
    return n;
  }
  leb(): number {
    let n = 0;
    for (let i = 0; i < 5; i++) {
      if (this.pos >= this.buf.length) return this.fail(0);
      const b = this.buf[this.pos++]!;
      n += (b & 0x7f) * 2 ** (7 * i);
      if (!(b & 0x80)) return b === 0 && i > 0 ? this.fail(0) : n;
    }
    return this.fail(0);
  }
  str(): string {
    const len = this.leb();
    if (this.failed || this.pos + len > this.buf.length) return this.fail('');
    const s = this.buf.toString('utf8', this.pos, this.pos + len);
    this.pos += len;
    return s;
  }
  id(): string {
    const format = this.byte();
    if (format === ID_RAW) return this.str();
    if (format !== ID_COMPACT || this.pos + 12 > this.buf.length) return this.fail('');
    const time = this.buf.readUIntBE(this.pos, 6);
    const counter = this.buf.readUIntBE(this.pos + 6, 3);
    const tag = this.buf.subarray(this.pos + 9, this.pos + 12).toString('base64url');
    this.pos += 12;
    if (time >= 36 ** 9 || counter >= 36 ** 4) return this.fail('');
    return time.toString(36).padStart(9, '0') + counter.toString(36).padStart(4, '0') + tag;
  }
  rest(): string {
    const s = this.buf.toString('utf8', this.pos);
    this.pos = this.buf.length;
    return s;
  }
  get atEnd(): boolean {
    return this.pos === this.buf.length;
  }
  private fail<T>(v: T): T {
    this.failed = true;
    return v;
  }
}

// ---- the codec ----------------------------------------------------------------------------------------

export class TrackingTokens {
  private readonly keys: DerivedKey[];

  /** keys[0] signs; every key verifies, so links in mail sent before a rotation keep working. */
  constructor(keys: Buffer[]) {
    if (keys.length === 0) throw new Error('tracking: at least one key is needed');
    for (const k of keys) if (k.length < 16) throw new Error('tracking: a key must be at least 16 bytes');
    this.keys = keys.map(derive);
  }

  open(f: TokenFields): string {
    return this.seal(this.payload('open', f).done());
  }

  trap(f: TokenFields): string {
    return this.seal(this.payload('trap', f).done());
  }

  unsubscribe(f: TokenFields): string {
    return this.seal(this.payload('unsubscribe', f).done());
  }

  click(f: ClickFields): string {
    return this.seal(this.payload('click', f).utf8(f.url).done());
  }

  private payload(kind: TokenKind, f: TokenFields | ClickFields): Writer {
    const w = new Writer().byte(KIND_BYTE[kind]).uint32(Math.floor(f.sentAt / 1000)).id(f.msgId).leb(f.rcptIndex);
    if (kind === 'click') w.leb((f as ClickFields).link);
    return w.str(f.tenant).str(f.campaign === '-' ? '' : f.campaign).str(f.rcpt);
  }

  private seal(payload: Buffer): string {
    const k = this.keys[0]!;
    const mac = this.mac(k, payload);
    const out = Buffer.allocUnsafe(1 + MAC_BYTES + payload.length);
    out[0] = k.id;
    mac.copy(out, 1);
    ctr(k, mac, payload, out, 1 + MAC_BYTES);
    return out.toString('base64url');
  }

  private mac(k: DerivedKey, payload: Buffer): Buffer {
    return crypto.createHmac('sha256', k.mac).update(payload).digest().subarray(0, MAC_BYTES);
  }

  /** The token's contents; refused when it is not one of ours, was altered, or was signed by an unknown key. */
  verify(token: string): TokenResult {
    if (token.length < 20 || token.length > MAX_TOKEN_LENGTH || !BASE64URL.test(token)) return { ok: false, reason: 'malformed' };
    const bytes = Buffer.from(token, 'base64url');
    // only the canonical spelling: one token, one string (no trailing bits that decode alike)
    if (bytes.length < 1 + MAC_BYTES + 8 || bytes.toString('base64url') !== token) return { ok: false, reason: 'malformed' };
    const mac = bytes.subarray(1, 1 + MAC_BYTES);
    const sealed = bytes.subarray(1 + MAC_BYTES);
    for (const k of this.keys) {
      if (k.id !== bytes[0]) continue;
      const payload = Buffer.allocUnsafe(sealed.length);
      ctr(k, mac, sealed, payload, 0);
      // verify before interpreting: an unsigned payload is never parsed
      if (!crypto.timingSafeEqual(this.mac(k, payload), mac)) continue;
      const token = readPayload(payload);
      return token ? { ok: true, token } : { ok: false, reason: 'malformed' };
    }
    return { ok: false, reason: 'forged' };
  }

  /**
   * `u-<token>@<domain>`: the mailto address of List-Unsubscribe for one recipient. The tenant is carried
   * when the local part stays within 64 octets (a tenant name of up to 12 bytes, for our queue ids and the
   * first 16,384 recipients of a message); else the
   * inbound side finds it from the queue id. Null when not even the queue id fits (not one of ours).
   */
  mailto(f: Pick<TokenFields, 'msgId' | 'rcptIndex' | 'tenant'>, domain: string): string | null {
    const base = new Writer().id(f.msgId).leb(f.rcptIndex).done();
    let local = MAIL_PREFIX + this.mailToken(new Writer().raw(base).str(f.tenant).done());
    if (local.length > MAX_LOCAL_PART) local = MAIL_PREFIX + this.mailToken(base);
    return local.length > MAX_LOCAL_PART ? null : `${local}@${domain}`;
  }

  /** The recipient a mailto unsubscribe address names; null when it is not ours or was altered. */
  verifyMailto(address: string): { msgId: string; rcptIndex: number; tenant: string | null } | null {
    let local = address.trim().toLowerCase();
    if (local.startsWith('<') && local.endsWith('>')) local = local.slice(1, -1);
    const at = local.lastIndexOf('@');
    if (at >= 0) local = local.slice(0, at);
    if (!local.startsWith(MAIL_PREFIX) || local.length > MAX_LOCAL_PART) return null;
    const bytes = base32Decode(local.slice(MAIL_PREFIX.length));
    if (!bytes || bytes.length < MAIL_MAC_BYTES + 3) return null;
    const payload = bytes.subarray(0, bytes.length - MAIL_MAC_BYTES);
    const mac = bytes.subarray(bytes.length - MAIL_MAC_BYTES);
    if (!this.keys.some((k) => crypto.timingSafeEqual(mailMac(k, payload), mac))) return null;
    const r = new Reader(payload);
    const msgId = r.id();
    const rcptIndex = r.leb();
    const tenant = r.atEnd ? null : r.str();
    return r.failed || !r.atEnd || !msgId ? null : { msgId, rcptIndex, tenant };
  }

  private mailToken(payload: Buffer): string {
    return base32Encode(Buffer.concat([payload, mailMac(this.keys[0]!, payload)]));
  }
}

const mailMac = (k: DerivedKey, payload: Buffer) => crypto.createHmac('sha256', k.mail).update(payload).digest().subarray(0, MAIL_MAC_BYTES);

function readPayload(payload: Buffer): DecodedToken | null {
  const r = new Reader(payload);
  const kind = BYTE_KIND[r.byte()];
  const sentAt = r.uint32() * 1000;
  const msgId = r.id();
  const rcptIndex = r.leb();
  const link = kind === 'click' ? r.leb() : 0;
  const tenant = r.str();
  const campaign = r.str() || '-';
  const rcpt = r.str();
  if (!kind || r.failed || !msgId || !tenant) return null;
  const fields: TokenFields = { msgId, rcptIndex, rcpt, tenant, campaign, sentAt };
  if (kind === 'click') {
    const url = r.rest();
    return url ? { kind, ...fields, link, url } : null;
  }
  return r.atEnd ? { kind, ...fields } : null;
}

// ---- key files ----------------------------------------------------------------------------------------

const readTrackingKey = (file: string) => readHexKeyFile(file, 'tracking key');

/**
 * The tracking keys of a node, signing key first: the files named in `tracking.keys` when there are any,
 * else `<dataDir>/keys/tracking.key` (created on first use, 0600) and every `keys/tracking.old*.key`.
 */
export function loadTrackingKeys(dataDir: string, files: string[] = []): Buffer[] {
  if (files.length) return files.map(readTrackingKey);
  return keyRing(dataDir, 'tracking', { create: true, read: readTrackingKey })!;
}
