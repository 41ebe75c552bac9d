import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { base32Decode, base32Encode, loadOrCreateVerpKeys, loadVerpKeys, VerpCodec } from '../../src/bounce/verp.js';
import { newMessageId } from '../../src/mta/spool.js';
import { tempDir } from '../support/node.js';

const KEY = Buffer.from('tern-bounce-fixtures-test-key-01');
const OTHER = Buffer.from('another-key-of-32-bytes-for-test');
const codec = new VerpCodec([KEY]);

const base36 = fc.constantFrom(...'0123456789abcdefghijklmnopqrstuvwxyz');
const base64url = fc.constantFrom(...'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_');
/** ids in the format of newMessageId(): 13 × [0-9a-z] then 4 base64url characters */
const msgIds = fc.tuple(fc.array(base36, { minLength: 13, maxLength: 13 }), fc.array(base64url, { minLength: 4, maxLength: 4 })).map(([a, b]) => a.join('') + b.join(''));
const indexes = fc.oneof(fc.integer({ min: 0, max: 1000 }), fc.integer({ min: 0, max: 2 ** 28 - 1 }));
const ALPHABET = 'abcdefghijklmnopqrstuvwxyz234567';

describe('VERP addresses', () => {
  it('names one recipient of one message, in a local part of at most 64 characters that survives case-folding', () => {
    fc.assert(
      fc.property(msgIds, indexes, (msgId, rcptIndex) => {
        const address = codec.encode(msgId, rcptIndex, 'bounce.sender.example');
        const [local, domain] = address.split('@');
        expect(domain).toBe('bounce.sender.example');
        expect(local!.length).toBeLessThanOrEqual(64);
        expect(local).toMatch(/^b-[a-z2-7]+$/);
        expect(codec.decode(address)).toEqual({ msgId, rcptIndex });
        // some MTAs lowercase or uppercase the local part of the address they bounce to
        expect(codec.decode(address.toUpperCase())).toEqual({ msgId, rcptIndex });
        expect(codec.decode(`<${local!.toUpperCase()}@Bounce.Sender.Example>`)).toEqual({ msgId, rcptIndex });
      }),
      { numRuns: 500 },
    );
  });

  it('round-trips the ids the spool really makes', () => {
    for (let i = 0; i < 50; i++) {
      const id = newMessageId();
      expect(codec.decode(codec.encode(id, i, 'b.example'))).toEqual({ msgId: id, rcptIndex: i });
    }
  });

  it('carries other message ids as their bytes, still within 64 characters', () => {
    fc.assert(
      fc.property(fc.string({ minLength: 1, maxLength: 22 }).filter((s) => Buffer.byteLength(s) <= 22), indexes, (msgId, rcptIndex) => {
        const address = codec.encode(msgId, rcptIndex, 'b.example');
        expect(address.split('@')[0]!.length).toBeLessThanOrEqual(64);
        expect(codec.decode(address)).toEqual({ msgId, rcptIndex });
      }),
    );
    expect(() => codec.encode('x'.repeat(23), 0, 'b.example')).toThrow(/longer than 22 bytes/);
    expect(() => codec.encode(newMessageId(), -1, 'b.example')).toThrow(/recipient index/);
    expect(() => codec.encode(newMessageId(), 1.5, 'b.example')).toThrow(/recipient index/);
  });

  it('refuses any single-character alteration of the local part', () => {
    fc.assert(
      fc.property(msgIds, indexes, fc.nat(), fc.constantFrom(...ALPHABET, ...'-.+_=0189@'), (msgId, rcptIndex, pos, replacement) => {
        const address = codec.encode(msgId, rcptIndex, 'bounce.sender.example');
        const local = address.split('@')[0]!;
        const i = pos % local.length;
        fc.pre(replacement !== local[i]!.toLowerCase());
        const altered = local.slice(0, i) + replacement + local.slice(i + 1) + '@bounce.sender.example';
        expect(codec.decode(altered)).toBeNull();
      }),
      { numRuns: 2000 },
    );
  });

  it('refuses addresses signed with another key, and says which were forged', () => {
    const other = new VerpCodec([OTHER]);
    fc.assert(
      fc.property(msgIds, indexes, (msgId, rcptIndex) => {
        const address = other.encode(msgId, rcptIndex, 'bounce.sender.example');
        expect(codec.decode(address)).toBeNull();
        expect(codec.verify(address)).toEqual({ ok: false, reason: 'forged' });
      }),
    );
    expect(codec.verify('news@sender.example')).toEqual({ ok: false, reason: 'not-verp' });
    expect(codec.verify('b-short@sender.example')).toEqual({ ok: false, reason: 'malformed' });
    expect(codec.verify('b-' + 'a'.repeat(80) + '@sender.example')).toEqual({ ok: false, reason: 'malformed' });
    expect(codec.verify('')).toEqual({ ok: false, reason: 'not-verp' });
  });

  it('keeps verifying with an older key after rotation, and signs with the first', () => {
    const before = new VerpCodec([OTHER]).encode('0mi3k5q2a0001Qx-z', 3, 'b.example');
    const rotated = new VerpCodec([KEY, OTHER]);
    expect(rotated.decode(before)).toEqual({ msgId: '0mi3k5q2a0001Qx-z', rcptIndex: 3 });
    expect(codec.decode(rotated.encode('0mi3k5q2a0001Qx-z', 3, 'b.example'))).not.toBeNull();
  });

  it('never throws on arbitrary input', () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 200 }), (s) => {
        expect(codec.decode(s)).toBeNull();
        expect(codec.decode('b-' + s)).toBeNull();
        expect(codec.decodeRef(s)).toBeNull();
      }),
    );
  });
});

describe('X-Tern-Ref values', () => {
  it('round-trip, are case-insensitive, and are not interchangeable with VERP tokens', () => {
    fc.assert(
      fc.property(msgIds, indexes, (msgId, rcptIndex) => {
        const ref = codec.ref(msgId, rcptIndex);
        expect(ref).toMatch(/^[a-z2-7]+$/);
        expect(codec.decodeRef(ref)).toEqual({ msgId, rcptIndex });
        expect(codec.decodeRef(` ${ref.toUpperCase()} `)).toEqual({ msgId, rcptIndex });
        // a token from a VERP address (that a recipient can see) does not verify as a ref, and back
        const verpToken = codec.encode(msgId, rcptIndex, 'x').slice(2).split('@')[0]!;
        expect(codec.decodeRef(verpToken)).toBeNull();
        expect(codec.decode(`b-${ref}@x`)).toBeNull();
      }),
    );
  });

  it('refuses an altered ref', () => {
    fc.assert(
      fc.property(msgIds, indexes, fc.nat(), fc.constantFrom(...ALPHABET), (msgId, rcptIndex, pos, c) => {
        const ref = codec.ref(msgId, rcptIndex);
        const i = pos % ref.length;
        fc.pre(c !== ref[i]);
        expect(codec.decodeRef(ref.slice(0, i) + c + ref.slice(i + 1))).toBeNull();
      }),
      { numRuns: 1000 },
    );
  });
});

describe('base32', () => {
  it('round-trips bytes and accepts only the canonical spelling', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 40 }), (bytes) => {
        const text = base32Encode(bytes);
        expect(base32Decode(text)).toEqual(Buffer.from(bytes));
        if (text.length) {
          // the last character's unused bits must be zero: another spelling of the same bytes is refused
          const last = ALPHABET.indexOf(text[text.length - 1]!);
          const unused = (text.length * 5) % 8;
          if (unused) expect(base32Decode(text.slice(0, -1) + ALPHABET[last | 1])).toBeNull();
        }
      }),
    );
    expect(base32Decode('a')).toBeNull(); // no byte string encodes to one character
    expect(base32Decode('ab!')).toBeNull();
  });
});

describe('VERP key files', () => {
  it('creates one 32-byte key, readable only by its owner, and keeps it', () => {
    const dir = tempDir();
    expect(loadVerpKeys(dir)).toBeNull();
    const [key] = loadOrCreateVerpKeys(dir);
    expect(key).toHaveLength(32);
    const file = path.join(dir, 'keys', 'verp.key');
    expect(fs.statSync(file).mode & 0o777).toBe(0o600);
    expect(loadOrCreateVerpKeys(dir)[0]).toEqual(key);
    expect(loadVerpKeys(dir)).toEqual([key]);
  });

  it('verifies with old keys kept as keys/verp.old*.key', () => {
    const dir = tempDir();
    fs.mkdirSync(path.join(dir, 'keys'));
    const old = crypto.randomBytes(32);
    fs.writeFileSync(path.join(dir, 'keys', 'verp.old-2026-10.key'), old.toString('hex'));
    const keys = loadOrCreateVerpKeys(dir);
    expect(keys).toHaveLength(2);
    expect(keys[1]).toEqual(old);
    const address = new VerpCodec([old]).encode('0mi3k5q2a0001Qx-z', 0, 'b.example');
    expect(new VerpCodec(keys).decode(address)).not.toBeNull();
  });

  it('says what is wrong with a damaged key file', () => {
    const dir = tempDir();
    fs.mkdirSync(path.join(dir, 'keys'));
    fs.writeFileSync(path.join(dir, 'keys', 'verp.key'), 'not a key\n');
    expect(() => loadVerpKeys(dir)).toThrow(/verp\.key must hold 64 hexadecimal characters/);
  });
});
