import crypto from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { sign, verify } from '../../src/events/signature.js';

describe('Tern-Signature', () => {
  const secret = 'whsec-0123456789abcdef';
  const body = '{"events":[{"id":"n:1","seq":1,"type":"delivered","at":1764950400123,"tenant":"acme"}]}';

  it('is t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">', () => {
    const t = 1764950400;
    const mac = crypto.createHmac('sha256', secret).update(`${t}.${body}`).digest('hex');
    expect(sign(secret, body, t)).toBe(`t=${t},v1=${mac}`);
  });

  it('verifies what it signs, and nothing altered', () => {
    fc.assert(
      fc.property(fc.string({ minLength: 16 }), fc.string(), fc.string({ minLength: 1 }), (key, text, extra) => {
        const now = 1764950400;
        const header = sign(key, text, now);
        expect(verify(key, text, header, now)).toBe(true);
        expect(verify(key, text + extra, header, now)).toBe(false);
        expect(verify(key + extra, text, header, now)).toBe(false);
      }),
    );
  });

  it('refuses old and future timestamps, and a timestamp changed after signing', () => {
    const t = 1764950400;
    const header = sign(secret, body, t);
    expect(verify(secret, body, header, t + 300)).toBe(true);
    expect(verify(secret, body, header, t + 301)).toBe(false);
    expect(verify(secret, body, header, t - 301)).toBe(false);
    expect(verify(secret, body, header.replace(`t=${t}`, `t=${t + 10}`), t + 10)).toBe(false);
    expect(verify(secret, body, 'v1=00', t)).toBe(false);
    expect(verify(secret, body, '', t)).toBe(false);
  });

  it('accepts any of several v1 values (a receiver rotating secrets may see two)', () => {
    const t = 1764950400;
    const good = sign(secret, body, t).split('v1=')[1];
    expect(verify(secret, body, `t=${t},v1=${'0'.repeat(64)},v1=${good}`, t)).toBe(true);
  });
});
