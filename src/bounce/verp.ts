/**
 * VERP envelope senders and X-Tern-Ref values: a signed token that names one recipient of one spooled
 * message, so a bounce or complaint is attributed without trusting anything else in it.
 *
 *   b-<token>@<bounce domain>        token = base32(payload ‖ HMAC-SHA256(key, context ‖ payload)[0..10])
 *   payload = format byte ‖ message id ‖ recipient index (LEB128)
 *
 * The token is lowercase base32 (RFC 4648 alphabet, no padding) because some MTAs lowercase the local part
 * of the address they bounce to; base32 survives that, base64 does not. A message id in the format of
 * `newMessageId()` (13 × [0-9a-z] + 4 base64url characters) packs into 12 bytes, so a whole address local part
 * is about 40 characters; any other id is carried as its bytes (up to 22). The MAC is 80 bits. The bounce
 * domain is not signed: which domains are ours is the inbound listener's business.
 */
import crypto from 'node:crypto';
import { keyRing, readHexKeyFile } from '../core/keyring.js';

export interface VerpTarget {
  /** the spool's queue id (`newMessageId()`) */
  msgId: string;
  /** index of the recipient in the message's recipient list */
  rcptIndex: number;
}

/** Why an address or ref did not decode: not one of ours at all, ours but damaged, or a bad signature. */
export type VerpRejection = 'not-verp' | 'malformed' | 'forged';
export type VerpResult = ({ ok: true } & VerpTarget) | { ok: false; reason: VerpRejection };

const ALPHABET = 'abcdefghijklmnopqrstuvwxyz234567';
const DECODE = new Int8Array(128).fill(-1);
for (let i = 0; i < ALPHABET.length; i++) DECODE[ALPHABET.charCodeAt(i)] = i;

const MAC_BYTES = 10;
const FORMAT_COMPACT = 0x10; // version 1, message id in the newMessageId() format
const FORMAT_RAW = 0x11; // version 1, message id as its UTF-8 bytes
const MAX_RAW_ID = 22; // with the index and MAC: at most 38 bytes = 61 characters, so the local part stays within 64
const MAX_INDEX = 2 ** 28 - 1; // 4 LEB128 bytes
const COMPACT_ID = /^[0-9a-z]{13}[A-Za-z0-9_-]{4}$/;
const TOKEN = /^[a-z2-7]{20,62}$/;
const PREFIX = 'b-';

const CONTEXT_VERP = Buffer.from('tern-verp\0');
const CONTEXT_REF = Buffer.from('tern-ref\0');

export function base32Encode(bytes: Uint8Array): string {
  let out = '';
  let acc = 0;
  let bits = 0;
  for (const b of bytes) {
    acc = (acc << 8) | b;
    bits += 8;
    while (bits >= 5) {
      bits -= 5;
      out += ALPHABET[(acc >>> bits) & 31];
    }
    acc &= (1 << bits) - 1;
  }
  if (bits > 0) out += ALPHABET[(acc << (5 - bits)) & 31];
  return out;
}

/** Lowercase base32 without padding; null unless `text` is the canonical encoding of some bytes. */
export function base32Decode(text: string): Buffer | null {
  const rem = (text.length * 5) % 8;
  if (rem >= 5) return null; // a length no byte string encodes to
  const out = Buffer.allocUnsafe(Math.floor((text.length * 5) / 8));
  let acc = 0;
  let bits = 0;
  let n = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    const v = c < 128 ? DECODE[c]! : -1;
    if (v < 0) return null;
    acc = ((acc << 5) | v) & 0xffff;
    bits += 5;
    if (bits >= 8) {
      bits -= 8;
      out[n++] = (acc >>> bits) & 0xff;
    }
  }
  // the unused low bits of the last character must be zero, or two spellings would decode alike
  if ((acc & ((1 << bits) - 1)) !== 0) return null;
  return out;
}

function packId(msgId: string): Buffer {
  if (COMPACT_ID.test(msgId)) {
    const out = Buffer.alloc(13);
    out[0] = FORMAT_COMPACT;
    out.writeUIntBE(parseInt(msgId.slice(0, 9), 36), 1, 6); // < 36^9 < 2^47
    out.writeUIntBE(parseInt(msgId.slice(9, 13), 36), 7, 3); // < 36^4 < 2^21
    Buffer.from(msgId.slice(13), 'base64url').copy(out, 10); // 4 characters = 3 bytes, exactly
    return out;
  }
  const raw = Buffer.from(msgId, 'utf8');
  if (raw.length === 0 || raw.length > MAX_RAW_ID) throw new RangeError(`VERP: message id "${msgId}" is empty or longer than ${MAX_RAW_ID} bytes`);
  return Buffer.concat([Buffer.from([FORMAT_RAW, raw.length]), raw]);
}

/** Reads the id at the start of `buf`; returns it and where the index starts, or null when damaged. */
function unpackId(buf: Buffer): { msgId: string; next: number } | null {
  if (buf[0] === FORMAT_COMPACT) {
    if (buf.length < 13) return null;
    const time = buf.readUIntBE(1, 6);
    const counter = buf.readUIntBE(7, 3);
    if (time >= 36 ** 9 || counter >= 36 ** 4) return null;
    const msgId = time.toString(36).padStart(9, '0') + counter.toString(36).padStart(4, '0') + buf.subarray(10, 13).toString('base64url');
    return { msgId, next: 13 };
  }
  if (buf[0] === FORMAT_RAW) {
    const len = buf[1] ?? 0;
    if (len === 0 || len > MAX_RAW_ID || buf.length < 2 + len) return null;
    return { msgId: buf.subarray(2, 2 + len).toString('utf8'), next: 2 + len };
  }
  return null;
}

function encodeIndex(n: number): Buffer {
  if (!Number.isInteger(n) || n < 0 || n > MAX_INDEX) throw new RangeError(`VERP: recipient index ${n} is not an integer from 0 to ${MAX_INDEX}`);
  const out: number[] = [];
  do {
    let b = n & 0x7f;
    n >>>= 7;
    if (n) b |= 0x80;
    out.push(b);
  } while (n);
  return Buffer.from(out);
}

/** The index occupying all of `buf`, in its shortest encoding; null otherwise. */
function decodeIndex(buf: Buffer): number | null {
  if (buf.length === 0 || buf.length > 4) return null;
  let n = 0;
  for (let i = 0; i < buf.length; i++) {
    const b = buf[i]!;
    const last = i === buf.length - 1;
    if (last === Boolean(b & 0x80)) return null;
    if (last && b === 0 && i > 0) return null; // a trailing zero group: not the shortest encoding
    n |= (b & 0x7f) << (7 * i);
  }
  return n;
}

export class VerpCodec {
  private readonly keys: Buffer[];

  /** keys[0] signs; every key verifies, so an older key keeps attributing bounces of mail it signed. */
  constructor(keys: Buffer[]) {
    if (keys.length === 0) throw new Error('VERP: at least one key is needed');
    for (const k of keys) if (k.length < 16) throw new Error('VERP: a key must be at least 16 bytes');
    this.keys = keys;
  }

  /** `b-<token>@<bounceDomain>`: the envelope sender for one recipient of one message. */
  encode(msgId: string, rcptIndex: number, bounceDomain: string): string {
    return `${PREFIX}${this.token(CONTEXT_VERP, msgId, rcptIndex)}@${bounceDomain}`;
  }

  /** The recipient a VERP address names; null when it is not ours, malformed, forged or altered. */
  decode(address: string): VerpTarget | null {
    const r = this.verify(address);
    return r.ok ? { msgId: r.msgId, rcptIndex: r.rcptIndex } : null;
  }

  /** Like decode(), saying why an address was refused (a forged token is worth a log line). */
  verify(address: string): VerpResult {
    let local = address.trim();
    if (local.startsWith('<') && local.endsWith('>')) local = local.slice(1, -1);
    const at = local.lastIndexOf('@');
    if (at >= 0) local = local.slice(0, at);
    local = local.toLowerCase();
    if (!local.startsWith(PREFIX)) return { ok: false, reason: 'not-verp' };
    return this.check(CONTEXT_VERP, local.slice(PREFIX.length));
  }

  /** The value of an X-Tern-Ref header naming one recipient of one message (signed apart from VERP). */
  ref(msgId: string, rcptIndex: number): string {
    return this.token(CONTEXT_REF, msgId, rcptIndex);
  }

  decodeRef(value: string): VerpTarget | null {
    const r = this.verifyRef(value);
    return r.ok ? { msgId: r.msgId, rcptIndex: r.rcptIndex } : null;
  }

  verifyRef(value: string): VerpResult {
    return this.check(CONTEXT_REF, value.trim().toLowerCase());
  }

  private token(context: Buffer, msgId: string, rcptIndex: number): string {
    const payload = Buffer.concat([packId(msgId), encodeIndex(rcptIndex)]);
    return base32Encode(Buffer.concat([payload, this.mac(this.keys[0]!, context, payload)]));
  }

  private mac(key: Buffer, context: Buffer, payload: Buffer): Buffer {
    return crypto.createHmac('sha256', key).update(context).update(payload).digest().subarray(0, MAC_BYTES);
  }

  private check(context: Buffer, token: string): VerpResult {
    if (!TOKEN.test(token)) return { ok: false, reason: 'malformed' };
    const bytes = base32Decode(token);
    if (!bytes || bytes.length < MAC_BYTES + 3) return { ok: false, reason: 'malformed' };
    const payload = bytes.subarray(0, bytes.length - MAC_BYTES);
    const mac = bytes.subarray(bytes.length - MAC_BYTES);
    // verify before interpreting: an unsigned payload is never parsed further
    if (!this.keys.some((k) => crypto.timingSafeEqual(this.mac(k, context, payload), mac))) return { ok: false, reason: 'forged' };
    const id = unpackId(payload);
    const index = id ? decodeIndex(payload.subarray(id.next)) : null;
    // signed but unreadable: only a key shared with something that is not Tern could make one
    if (!id || index === null) return { ok: false, reason: 'malformed' };
    return { ok: true, msgId: id.msgId, rcptIndex: index };
  }
}

const readVerpKey = (file: string) => readHexKeyFile(file, 'VERP key');

/**
 * The VERP keys of a node: `<dataDir>/keys/verp.key` signs and verifies, every `keys/verp.old*.key` only
 * verifies. Null when there is no verp.key (nothing was ever signed here).
 */
export function loadVerpKeys(dataDir: string): Buffer[] | null {
  return keyRing(dataDir, 'verp', { create: false, read: readVerpKey });
}

/**
 * Like loadVerpKeys(), creating `keys/verp.key` (32 random bytes as hex, mode 0600) on first use. Every node
 * that sends or receives bounces for the same mail must hold the same key file.
 */
export function loadOrCreateVerpKeys(dataDir: string): Buffer[] {
  return keyRing(dataDir, 'verp', { create: true, read: readVerpKey })!;
}
