import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { TrackingTokens, loadTrackingKeys, MAX_URL_LENGTH, type ClickFields } from '../../src/tracking/tokens.js';
import { newMessageId } from '../../src/mta/spool.js';
import { tempDir } from '../support/node.js';

const key = () => crypto.randomBytes(32);
const tokens = new TrackingTokens([key()]);

const fields = fc.record({
  msgId: fc.oneof(fc.constant(newMessageId()), fc.string({ minLength: 1, maxLength: 40 })),
  rcptIndex: fc.integer({ min: 0, max: 2 ** 31 - 1 }),
  rcpt: fc.oneof(fc.emailAddress(), fc.string({ maxLength: 80 })),
  tenant: fc.string({ minLength: 1, maxLength: 40 }),
  campaign: fc.oneof(fc.constant('-'), fc.stringMatching(/^[A-Za-z0-9._-]{1,64}$/)),
  sentAt: fc.integer({ min: 0, max: 2 ** 32 - 1 }).map((s) => s * 1000),
});
const click = fc.tuple(fields, fc.integer({ min: 0, max: 100_000 }), fc.oneof(fc.webUrl({ withQueryParameters: true, withFragments: true }), fc.string({ minLength: 1, maxLength: MAX_URL_LENGTH }))).map(([f, link, url]): ClickFields => ({ ...f, link, url }));

const BASE64URL = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';

describe('tracking tokens', () => {
  it('round-trip every kind with everything they carry', () => {
    fc.assert(
      fc.property(fields, click, (f, c) => {
        expect(tokens.verify(tokens.open(f))).toEqual({ ok: true, token: { kind: 'open', ...f } });
        expect(tokens.verify(tokens.trap(f))).toEqual({ ok: true, token: { kind: 'trap', ...f } });
        expect(tokens.verify(tokens.unsubscribe(f))).toEqual({ ok: true, token: { kind: 'unsubscribe', ...f } });
        expect(tokens.verify(tokens.click(c))).toEqual({ ok: true, token: { kind: 'click', ...c } });
      }),
    );
  });

  it('are URL-safe and say nothing readable about the recipient', () => {
    fc.assert(
      fc.property(click, (c) => {
        const t = tokens.click(c);
        expect(t).toMatch(/^[A-Za-z0-9_-]+$/);
        const bytes = Buffer.from(t, 'base64url').toString('latin1');
        if (c.rcpt.length >= 6) expect(bytes).not.toContain(c.rcpt);
        if (c.url.length >= 6 && /^[\x20-\x7e]+$/.test(c.url)) expect(bytes).not.toContain(c.url);
      }),
    );
  });

  it('refuse any altered character, truncation or extension', () => {
    fc.assert(
      fc.property(click, fc.nat(), fc.nat(), (c, at, by) => {
        const t = tokens.click(c);
        const i = at % t.length;
        const replacement = BASE64URL[(BASE64URL.indexOf(t[i]!) + 1 + (by % 63)) % 64]!;
        expect(tokens.verify(t.slice(0, i) + replacement + t.slice(i + 1)).ok).toBe(false);
        expect(tokens.verify(t.slice(0, Math.max(1, i))).ok).toBe(false);
        expect(tokens.verify(t + replacement).ok).toBe(false);
      }),
    );
  });

  it('refuse tokens signed with another key, and verify old keys after a rotation', () => {
    const oldKey = key();
    const old = new TrackingTokens([oldKey]);
    const rotated = new TrackingTokens([key(), oldKey]);
    const stranger = new TrackingTokens([key()]);
    fc.assert(
      fc.property(click, (c) => {
        const t = old.click(c);
        expect(stranger.verify(t)).toEqual({ ok: false, reason: 'forged' });
        expect(rotated.verify(t)).toEqual({ ok: true, token: { kind: 'click', ...c } });
        // new tokens are signed with the new key: the old node cannot read them
        expect(old.verify(rotated.click(c)).ok).toBe(false);
      }),
      { numRuns: 50 },
    );
  });

  it('call malformed what is not a token at all', () => {
    for (const t of ['', 'abc', 'a'.repeat(5000), 'has spaces in it and more', 'plus+and/slash=padding==', 'é'.repeat(30)]) expect(tokens.verify(t)).toEqual({ ok: false, reason: 'malformed' });
  });

  it('mailto addresses round-trip case-insensitively, fit in 64 octets, and refuse alteration', () => {
    fc.assert(
      fc.property(fields, fc.domain(), (f, domain) => {
        const address = tokens.mailto(f, domain);
        if (address === null) {
          // only an id that is not one of ours can be too long for a local part
          expect(Buffer.byteLength(f.msgId)).toBeGreaterThan(17);
          return;
        }
        const local = address.slice(0, address.lastIndexOf('@'));
        expect(local.length).toBeLessThanOrEqual(64);
        expect(local).toMatch(/^u-[a-z2-7]+$/);
        const back = tokens.verifyMailto(address.toUpperCase());
        expect(back).toMatchObject({ msgId: f.msgId, rcptIndex: f.rcptIndex });
        expect([f.tenant, null]).toContain(back!.tenant);
        const i = 2 + ((f.rcptIndex + 3) % (local.length - 2));
        const altered = local.slice(0, i) + (local[i] === 'a' ? 'b' : 'a') + local.slice(i + 1);
        expect(tokens.verifyMailto(`${altered}@${domain}`)).toBeNull();
      }),
    );
  });

  it('our queue ids always fit in the mailto address, with a tenant name of up to 12 bytes', () => {
    const msgId = newMessageId();
    expect(tokens.verifyMailto(tokens.mailto({ msgId, rcptIndex: 16_383, tenant: 'acme-shop-eu' }, 'bounces.example.com')!)).toEqual({ msgId, rcptIndex: 16_383, tenant: 'acme-shop-eu' });
    expect(tokens.verifyMailto(tokens.mailto({ msgId, rcptIndex: 2 ** 31 - 1, tenant: 'x' }, 'bounces.example.com')!)).toEqual({ msgId, rcptIndex: 2 ** 31 - 1, tenant: 'x' });
    expect(tokens.verifyMailto(tokens.mailto({ msgId, rcptIndex: 0, tenant: 'a-much-longer-tenant-name' }, 'bounces.example.com')!)).toEqual({ msgId, rcptIndex: 0, tenant: null });
  });
});

describe('tracking keys', () => {
  it('are made once in data_dir/keys (0600), with old keys still verifying', () => {
    const dir = tempDir();
    const [first] = loadTrackingKeys(dir);
    expect(fs.statSync(path.join(dir, 'keys', 'tracking.key')).mode & 0o777).toBe(0o600);
    expect(loadTrackingKeys(dir)).toEqual([first]);
    const signedBefore = new TrackingTokens([first!]).open({ msgId: 'm', rcptIndex: 0, rcpt: 'a@b', tenant: 't', campaign: '-', sentAt: 0 });
    fs.renameSync(path.join(dir, 'keys', 'tracking.key'), path.join(dir, 'keys', 'tracking.old.2026-11.key'));
    const rotated = loadTrackingKeys(dir);
    expect(rotated).toHaveLength(2);
    expect(rotated[1]).toEqual(first);
    expect(new TrackingTokens(rotated).verify(signedBefore).ok).toBe(true);
  });

  it('come from the configured files when there are any, and a bad file is named', () => {
    const dir = tempDir();
    const a = path.join(dir, 'a.key');
    fs.writeFileSync(a, crypto.randomBytes(32).toString('hex'));
    expect(loadTrackingKeys(dir, [a])).toHaveLength(1);
    expect(fs.existsSync(path.join(dir, 'keys', 'tracking.key'))).toBe(false);
    fs.writeFileSync(a, 'not hex');
    expect(() => loadTrackingKeys(dir, [a])).toThrow(/a\.key must hold 64 hexadecimal characters/);
  });
});
