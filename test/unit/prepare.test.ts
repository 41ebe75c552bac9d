import crypto from 'node:crypto';
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { dkimVerify } from 'mailauth/lib/dkim/verify.js';
import { checkLineEndings, keyLookup, prepareMessage, rfc5322Date } from '../../src/mta/prepare.js';
import { dnsRecordFor, loadSigningKey, relaxedBody, relaxedHeader } from '../../src/mta/dkim.js';
import { isValidAddress } from '../../src/mta/address.js';

const rsaPem = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ type: 'pkcs8', format: 'pem' }) as string;
const edPem = crypto.generateKeyPairSync('ed25519').privateKey.export({ type: 'pkcs8', format: 'pem' }) as string;
const keys = keyLookup([loadSigningKey('example.com', 'r', rsaPem), loadSigningKey('example.com', 'e', edPem)]);
const txt: Record<string, string> = { 'r._domainkey.example.com': dnsRecordFor(rsaPem).txt, 'e._domainkey.example.com': dnsRecordFor(edPem).txt };
const resolver = async (name: string) => {
  if (!txt[name]) throw Object.assign(new Error('not found'), { code: 'ENOTFOUND' });
  return [[txt[name]]];
};
const prep = (raw: string, utf8 = false) => prepareMessage({ raw: Buffer.from(raw, 'latin1'), hostname: 'node.test', id: 'abc', utf8, tenant: 't1', feedbackSenderId: 'tern', now: Date.UTC(2026, 10, 21, 10, 0, 0) }, keys);

describe('checkLineEndings', () => {
  it.each([
    ['bare LF', 'a\nb\r\n'],
    ['bare CR', 'a\rb\r\n'],
    ['LF.LF', 'x\r\n\n.\n'],
    ['CR.CR', 'x\r\n\r.\r'],
    ['NUL', 'a\0b\r\n'],
    ['trailing bare CR', 'abc\r'],
  ])('refuses %s', (_name, text) => {
    expect(checkLineEndings(Buffer.from(text, 'latin1'))?.code).toBe(554);
  });

  it('accepts CRLF text and refuses a 999-octet line but not a 998-octet one', () => {
    expect(checkLineEndings(Buffer.from(`${'a'.repeat(998)}\r\nb\r\n`))).toBeNull();
    expect(checkLineEndings(Buffer.from(`${'a'.repeat(999)}\r\nb\r\n`))?.reason).toMatch(/longer than 998/);
  });

  it('refuses any text containing a CR or LF that is not part of CRLF (property)', () => {
    fc.assert(
      fc.property(fc.array(fc.constantFrom('a', ' ', '.', '\r\n', '\r', '\n')), (parts) => {
        const text = parts.join('');
        const bare = /\r(?!\n)|(?<!\r)\n/.test(text);
        expect(checkLineEndings(Buffer.from(text)) !== null).toBe(bare);
      }),
    );
  });
});

describe('prepareMessage', () => {
  it('adds Date and Message-ID, removes Bcc, and signs with both keys', async () => {
    const out = prep('From: a@example.com\r\nTo: b@example.net\r\nBcc: secret@example.org\r\nSubject: hi\r\n\r\nbody\r\n');
    if (!out.ok) throw new Error(out.reason);
    const text = Buffer.from(out.message).toString();
    expect(text).toContain('\r\nMessage-ID: <abc@node.test>\r\n');
    expect(text).toContain('\r\nDate: Sat, 21 Nov 2026 10:00:00 +0000\r\n');
    expect(text).not.toMatch(/^Bcc:/im);
    expect(out.signedBy).toEqual(['r._domainkey.example.com', 'e._domainkey.example.com']);
    const res = await dkimVerify(Buffer.from(out.message), { resolver, curTime: new Date(Date.UTC(2026, 10, 21, 10, 0, 1)) });
    expect(res.results.map((r: { status: { result: string } }) => r.status.result)).toEqual(['pass', 'pass']);
  });

  it('over-signs: a From or Subject added after signing breaks every signature', async () => {
    const out = prep('From: a@example.com\r\nTo: b@example.net\r\nSubject: real\r\nDate: Sat, 21 Nov 2026 10:00:00 +0000\r\nMessage-ID: <m@x>\r\n\r\nbody\r\n');
    if (!out.ok) throw new Error(out.reason);
    for (const extra of ['From: attacker@evil.example\r\n', 'Subject: replayed\r\n']) {
      const tampered = Buffer.concat([Buffer.from(extra), Buffer.from(out.message)]);
      const res = await dkimVerify(tampered, { resolver, curTime: new Date(Date.UTC(2026, 10, 21, 10, 0, 1)) });
      expect(res.results.every((r: { status: { result: string } }) => r.status.result !== 'pass')).toBe(true);
    }
  });

  it('signs with a parent domain key for a subdomain From, and not at all for an unrelated domain', () => {
    const sub = prep('From: a@news.example.com\r\n\r\nx\r\n');
    expect(sub.ok && sub.signedBy.length).toBe(2);
    const other = prep('From: a@example.org\r\n\r\nx\r\n');
    expect(other.ok && other.signedBy).toEqual([]);
  });

  it.each([
    ['no From', 'To: b@example.net\r\n\r\nx\r\n', /no From/],
    ['two From', 'From: a@example.com\r\nFrom: c@example.com\r\n\r\nx\r\n', /more than one From/],
    ['bad From', 'From: nobody\r\n\r\nx\r\n', /From header/],
    ['bad Cc', 'From: a@example.com\r\nCc: x@@y\r\n\r\nx\r\n', /Cc header/],
    ['malformed header', 'From: a@example.com\r\nthis is not a header\r\n\r\nx\r\n', /Malformed header/],
  ])('refuses %s', (_n, raw, reason) => {
    const out = prep(raw);
    expect(out.ok).toBe(false);
    if (!out.ok) expect(out.reason).toMatch(reason);
  });

  it('keeps 8-bit body bytes and UTF-8 headers exactly', () => {
    const raw = 'From: =?UTF-8?Q?J=C3=B6rg?= <j@example.com>\r\nSubject: Grüße\r\n\r\nCafé — ü\r\n';
    const out = prepareMessage({ raw: Buffer.from(raw, 'utf8'), hostname: 'n', id: 'i', utf8: true, tenant: 't1', feedbackSenderId: 'tern' }, keys);
    if (!out.ok) throw new Error(out.reason);
    const text = Buffer.from(out.message).toString('utf8');
    expect(text).toContain('\r\nSubject: Grüße\r\n');
    expect(text.endsWith('\r\n\r\nCafé — ü\r\n')).toBe(true);
  });
});

describe('canonicalization', () => {
  it('relaxed body: collapses whitespace, strips trailing blank lines', () => {
    expect(relaxedBody('a  b \t\r\n\r\n\r\n')).toBe('a b\r\n');
    expect(relaxedBody('\r\n\r\n')).toBe('');
  });
  it('relaxed body fast path equals the RFC 6376 §3.4.4 procedure (property)', () => {
    const reference = (body: string) => {
      const c = body.replace(/[ \t]+\r\n/g, '\r\n').replace(/[ \t]+/g, ' ').replace(/[ \t]+$/, '');
      const t = c.replace(/(?:\r\n)+$/, '');
      return t.length ? t + '\r\n' : '';
    };
    fc.assert(fc.property(fc.array(fc.constantFrom('a', ' ', '\t', '\r\n', 'b ', '  ')).map((a) => a.join('')), (b) => relaxedBody(b) === reference(b)), { numRuns: 5000 });
  });
  it('relaxed header: lower-cases the name and unfolds', () => {
    expect(relaxedHeader('Subject ', ' a\r\n\t b  ')).toBe('subject:a b\r\n');
  });
  it('RFC 5322 dates', () => {
    expect(rfc5322Date(Date.UTC(2026, 0, 5, 3, 4, 5))).toBe('Mon, 5 Jan 2026 03:04:05 +0000');
  });
});

describe('addresses', () => {
  it.each(['a@example.com', 'first.last+tag@sub.example.co.uk', '"quoted name"@example.com', 'x@[127.0.0.1]'])('accepts %s', (a) => expect(isValidAddress(a)).toBe(true));
  it.each(['plain', '@example.com', 'a@', 'a@@b.com', 'a b@example.com', 'a@localhost', 'a@-bad.com', 'a..b@example.com', `${'x'.repeat(65)}@example.com`, 'a@example.com\r\nBcc: x@y.z'])(
    'refuses %s',
    (a) => expect(isValidAddress(a)).toBe(false),
  );
  it('accepts UTF-8 addresses only with SMTPUTF8', () => {
    expect(isValidAddress('jörg@exämple.de', true)).toBe(true);
    expect(isValidAddress('jörg@exämple.de', false)).toBe(false);
  });
});

describe('Tern headers and Feedback-ID', () => {
  const text = (out: ReturnType<typeof prep>) => (out.ok ? Buffer.from(out.message).toString('latin1') : out.reason);
  it('takes the campaign and stream from X-Tern headers, removes them, and adds a signed Feedback-ID', () => {
    const out = prep('From: a@example.com\r\nX-Tern-Campaign: spring-sale\r\nX-Tern-Stream: Transactional\r\nFeedback-ID: forged:x:y:z\r\nSubject: hi\r\n\r\nbody\r\n');
    expect(out).toMatchObject({ ok: true, campaign: 'spring-sale', stream: 'transactional' });
    const message = text(out);
    expect(message).not.toMatch(/X-Tern-|forged/i);
    expect(message).toContain('\r\nFeedback-ID: spring-sale:t1:transactional:tern\r\n');
    expect(/^DKIM-Signature:[^]*?h=([^;]+);/m.exec(message)![1]!.replace(/\s/g, '').toLowerCase().split(':')).toContain('feedback-id');
  });

  it('defaults to no campaign and the marketing stream', () => {
    const out = prep('From: a@example.com\r\n\r\nbody\r\n');
    expect(out).toMatchObject({ ok: true, campaign: '-', stream: 'marketing' });
    expect(text(out)).toContain('\r\nFeedback-ID: -:t1:marketing:tern\r\n');
  });

  it.each([
    ['X-Tern-Campaign: has space\r\n', /X-Tern-Campaign must be/],
    ['X-Tern-Campaign: a\r\nX-Tern-Campaign: b\r\n', /more than one X-Tern-Campaign/],
    ['X-Tern-Stream: bulk\r\n', /X-Tern-Stream must be/],
  ])('refuses %j', (header, reason) => {
    const out = prep(`From: a@example.com\r\n${header}\r\nbody\r\n`);
    expect(out.ok).toBe(false);
    if (!out.ok) expect(out.reason).toMatch(reason);
  });
});
