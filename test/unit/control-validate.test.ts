/**
 * The control API's field validators (src/control/validate.ts) and the schemas built on them: whatever a
 * client sends, a value with CR, LF, NUL or another control character never passes as one-line text or as a
 * mail address, and an invalid address never passes as one.
 */
import fc from 'fast-check';
import { Type } from '@sinclair/typebox';
import { TypeCompiler } from '@sinclair/typebox/compiler';
import { describe, expect, it } from 'vitest';
import { composeSystemMail } from '../../src/control/mailer.js';
import { isDomainName, isHeaderSafe, isMailbox, isOneLine, isPassword, isTenantId, Mailbox, OneLine } from '../../src/control/validate.js';

const BREAKERS = ['\r', '\n', '\0', '\r\n', '\u0085', '\u2028', '\u2029', '\u000b', '\u000c', '\u001b', '\u007f'];
/** any text with at least one line-breaking or control character somewhere */
const injected = fc.tuple(fc.string(), fc.constantFrom(...BREAKERS), fc.string()).map(([a, b, c]) => a + b + c);
const RUNS = { numRuns: 2000 };

describe('header-safe text', () => {
  it('rejects every value with a CR, LF, NUL or other control character, wherever it is', () => {
    fc.assert(fc.property(injected, (v) => !isHeaderSafe(v) && !isOneLine(v)), RUNS);
  });

  it('accepts printable text, tabs and non-ASCII letters', () => {
    fc.assert(fc.property(fc.stringMatching(/^[\x20-\x7e\u00e0-\u00ff\t]{1,80}$/).filter((s) => s.trim() !== ''), (v) => isOneLine(v)), RUNS);
    expect(isOneLine('Café – spring sale 🌷')).toBe(true);
  });

  it('rejects lone surrogates (no UTF-8 form) and blank lines', () => {
    expect(isHeaderSafe('a\ud800b')).toBe(false);
    expect(isHeaderSafe('\udc00')).toBe(false);
    expect(isOneLine('   ')).toBe(false);
  });

  it('the OneLine schema refuses the same values', () => {
    const check = TypeCompiler.Compile(Type.Object({ name: OneLine(200) }));
    fc.assert(fc.property(injected.filter((v) => v.length <= 200), (v) => !check.Check({ name: v })), RUNS);
  });
});

describe('mail addresses', () => {
  it('accepts generated RFC 5322 addresses', () => {
    fc.assert(fc.property(fc.emailAddress().filter((a) => a.length <= 254 && !a.startsWith('"')), (a) => isMailbox(a)), RUNS);
  });

  it('rejects any address with a control character injected anywhere', () => {
    fc.assert(
      fc.property(fc.emailAddress(), fc.nat(), fc.constantFrom(...BREAKERS), (a, at, b) => {
        const i = at % (a.length + 1);
        return !isMailbox(a.slice(0, i) + b + a.slice(i));
      }),
      RUNS,
    );
  });

  it('rejects addresses without exactly one usable @, with spaces, or with a bad domain', () => {
    const local = fc.stringMatching(/^[a-z0-9]{1,10}$/);
    const bad = fc.oneof(
      local, // no @ at all
      fc.tuple(local, local).map(([l, d]) => `${l}@${d}`), // one-label domain
      fc.tuple(local, local).map(([l, d]) => `${l}@@${d}.example`),
      fc.tuple(local, local).map(([l, d]) => `${l} x@${d}.example`),
      fc.tuple(local, local).map(([l, d]) => ` ${l}@${d}.example`),
      fc.tuple(local, local).map(([l, d]) => `${l}@-${d}.example`),
      fc.tuple(local, local).map(([l, d]) => `${l}@${d}..example`),
      fc.tuple(local, local).map(([l, d]) => `<${l}@${d}.example>`),
      fc.tuple(local, local).map(([l, d]) => `${l}@${d}.example, x@y.example`),
      local.map((l) => `${l}@[127.0.0.1]x`),
      local.map((l) => `${'a'.repeat(65)}${l}@example.com`), // local part over 64 octets
      local.map((l) => `${l}@${'a'.repeat(250)}.com`), // over 254 in all
    );
    fc.assert(fc.property(bad, (a) => !isMailbox(a)), RUNS);
  });

  it('the Mailbox schema refuses what isMailbox refuses', () => {
    const check = TypeCompiler.Compile(Type.Object({ email: Mailbox() }));
    fc.assert(fc.property(fc.string({ maxLength: 300 }), (v) => check.Check({ email: v }) === (isMailbox(v) && v.length <= 254)), RUNS);
    fc.assert(fc.property(injected, (v) => !check.Check({ email: v })), RUNS);
  });
});

describe('other fields', () => {
  it('domains, tenant ids, passwords', () => {
    expect(isDomainName('mail.example.com')).toBe(true);
    expect(isDomainName('example')).toBe(false);
    expect(isDomainName('[127.0.0.1]')).toBe(false);
    expect(isDomainName('exa mple.com')).toBe(false);
    expect(isTenantId('acme-2')).toBe(true);
    for (const bad of ['Acme', 'a:b', 'a@b', '-a', '', 'a'.repeat(64), 'a b']) expect(isTenantId(bad)).toBe(false);
    fc.assert(fc.property(fc.string(), (s) => !isTenantId(s) || /^[a-z0-9][a-z0-9_-]*$/.test(s)), RUNS);
    expect(isPassword('correct horse battery')).toBe(true);
    expect(isPassword('short')).toBe(false);
    expect(isPassword('x'.repeat(257))).toBe(false);
    expect(isPassword('0123456789\n')).toBe(false);
  });
});

describe('account mail', () => {
  it('never lets a subject or body line add a header', () => {
    fc.assert(
      fc.property(injected, (v) => {
        expect(() => composeSystemMail({ to: 'a@b.example', subject: v, lines: [] }, 'tern@node.example')).toThrow();
        expect(() => composeSystemMail({ to: 'a@b.example', subject: 's', lines: ['ok', v] }, 'tern@node.example')).toThrow();
      }),
      { numRuns: 300 },
    );
  });

  it('is a plain RFC 5322 message with CRLF lines', () => {
    const raw = composeSystemMail({ to: 'a@b.example', subject: 'Reset your Tern password', lines: ['one', '', 'two'] }, 'tern@node.example').toString();
    expect(raw).toMatch(/^From: Tern <tern@node\.example>\r\nTo: <a@b\.example>\r\nSubject: Reset your Tern password\r\n/);
    expect(raw).toContain('\r\n\r\none\r\n\r\ntwo\r\n');
    expect(raw.replace(/\r\n/g, '')).not.toMatch(/[\r\n]/);
  });
});
