/** The master key and what it protects (src/control/secrets.ts), and the cursor helper. */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { Secrets, SecretsError } from '../../src/control/secrets.js';
import { decodeCursor, encodeCursor, isString, pageOf } from '../../src/control/pagination.js';
import { tempDir } from '../support/node.js';

describe('master key', () => {
  it('is made 0600 on first start and read back on the next', () => {
    const dir = tempDir();
    const a = Secrets.load(dir, {});
    const file = path.join(dir, 'keys', 'master.key');
    expect(fs.statSync(file).mode & 0o777).toBe(0o600);
    expect(fs.statSync(path.join(dir, 'keys')).mode & 0o077).toBe(0);
    const b = Secrets.load(dir, {});
    expect(b.current.id).toBe(a.current.id);
    expect(b.open(a.seal('x', 'c'), 'c').toString()).toBe('x');
  });

  it('comes from TERN_MASTER_KEY (hex or base64) when set, and no file is made', () => {
    const dir = tempDir();
    const key = crypto.randomBytes(32);
    const hex = Secrets.load(dir, { TERN_MASTER_KEY: key.toString('hex') });
    const b64 = Secrets.load(dir, { TERN_MASTER_KEY: key.toString('base64') });
    expect(hex.current.id).toBe(b64.current.id);
    expect(fs.existsSync(path.join(dir, 'keys', 'master.key'))).toBe(false);
    expect(() => Secrets.load(dir, { TERN_MASTER_KEY: 'too-short' })).toThrow(/32 bytes/);
  });

  it('old keys still open what they sealed after a rotation; a lost key is named', () => {
    const dir = tempDir();
    const before = Secrets.load(dir, {});
    const sealed = before.seal('dkim private key', 'dkim:acme:example.com:s1');
    const mac = before.mac('smtp-credential', 'pw');
    fs.renameSync(path.join(dir, 'keys', 'master.key'), path.join(dir, 'keys', 'master.old.key'));
    const after = Secrets.load(dir, {});
    expect(after.current.id).not.toBe(before.current.id);
    expect(after.open(sealed, 'dkim:acme:example.com:s1').toString()).toBe('dkim private key');
    expect(after.verifyMac('smtp-credential', 'pw', mac)).toBe(true);
    expect(after.isStale(mac.kid)).toBe(true);
    const lost = new Secrets(crypto.randomBytes(32));
    expect(() => lost.open(sealed, 'dkim:acme:example.com:s1')).toThrow(/does not have/);
    expect(lost.verifyMac('smtp-credential', 'pw', mac)).toBe(false);
  });
});

describe('sealing (AES-256-GCM)', () => {
  const secrets = new Secrets(crypto.randomBytes(32));

  it('round-trips any bytes, with a fresh nonce each time', () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 2000 }), fc.string(), (data, ctx) => Buffer.compare(secrets.open(secrets.seal(Buffer.from(data), ctx), ctx), Buffer.from(data)) === 0), { numRuns: 300 });
    expect(secrets.seal('same', 'c')).not.toBe(secrets.seal('same', 'c'));
  });

  it('refuses a sealed value that was altered in any byte, or moved to another record', () => {
    const sealed = secrets.seal('secret', 'dkim:acme:a.example:s1');
    expect(() => secrets.open(sealed, 'dkim:evil:a.example:s1')).toThrow(SecretsError);
    const body = sealed.slice(sealed.lastIndexOf(':') + 1);
    fc.assert(
      fc.property(fc.nat(), fc.integer({ min: 1, max: 255 }), (at, x) => {
        const raw = Buffer.from(body, 'base64url');
        raw[at % raw.length]! ^= x;
        expect(() => secrets.open(sealed.slice(0, sealed.lastIndexOf(':') + 1) + raw.toString('base64url'), 'dkim:acme:a.example:s1')).toThrow(SecretsError);
      }),
      { numRuns: 200 },
    );
  });

  it('MACs are salted and checked in full', () => {
    const a = secrets.mac('p', 'password-1');
    const b = secrets.mac('p', 'password-1');
    expect(a.mac).not.toBe(b.mac);
    expect(secrets.verifyMac('p', 'password-1', a)).toBe(true);
    expect(secrets.verifyMac('p', 'password-2', a)).toBe(false);
    expect(secrets.verifyMac('other-purpose', 'password-1', a)).toBe(false);
  });
});

describe('cursors', () => {
  it('round-trip positions and refuse anything else with a 400', () => {
    expect(decodeCursor(encodeCursor('acme'), isString)).toBe('acme');
    expect(decodeCursor(undefined, isString)).toBeNull();
    for (const bad of ['not-json', encodeCursor({ a: 1 }), encodeCursor(5)]) expect(() => decodeCursor(bad, isString)).toThrow(/cursor/);
  });

  it('a page of limit items has a cursor only when more were fetched', () => {
    expect(pageOf([1, 2, 3], 3, (x) => x)).toEqual({ items: [1, 2, 3], next_cursor: null });
    const p = pageOf([1, 2, 3, 4], 3, (x) => x);
    expect(p.items).toEqual([1, 2, 3]);
    expect(decodeCursor(p.next_cursor!, (x): x is number => typeof x === 'number')).toBe(3);
  });
});
