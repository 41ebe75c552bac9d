/**
 * The tracking step of preparation on whole messages: which parts are rewritten and how they are encoded,
 * List-Unsubscribe, per-recipient copies, and every byte outside the rewritten spans kept.
 */
import crypto from 'node:crypto';
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { simpleParser } from 'mailparser';
import { prepareMessage, type PrepareInput, type Prepared } from '../../src/mta/prepare.js';
import { TrackingTokens } from '../../src/tracking/tokens.js';
import type { TrackingSettings } from '../../src/tracking/personalise.js';
import { encodeQuotedPrintable } from '../../src/tracking/mime.js';

const BASE = 'https://t.example.net';
const tokens = new TrackingTokens([crypto.randomBytes(32)]);
const settings = (over: Partial<TrackingSettings> = {}): TrackingSettings => ({ baseUrl: BASE, track: true, unsubscribeTransactional: true, trapLink: true, mailDomain: 'bounces.example.net', recipients: ['a@example.org'], ...over });

function prepare(raw: string, over: Partial<PrepareInput> = {}): Prepared {
  const r = prepareMessage({ raw: Buffer.from(raw.replace(/\r?\n/g, '\r\n'), 'latin1'), hostname: 'node.example', id: '0mi3k5q2a0001Qx-z', utf8: true, tenant: 'acme', feedbackSenderId: 'tern', tracking: settings(), ...over }, () => [], tokens);
  if (!r.ok) throw new Error(r.reason);
  return r;
}

const text = (p: Prepared, i = 0) => Buffer.from(p.personal ? p.personal[i]! : p.message).toString('latin1');
const headerBlock = (s: string) => s.slice(0, s.indexOf('\r\n\r\n')).replace(/\r\n[ \t]+/g, ' ');
const clickUrls = (s: string) => [...s.matchAll(/https:\/\/t\.example\.net\/c\/([A-Za-z0-9_-]+)/g)].map((m) => tokens.verify(m[1]!));
const urlsOf = (s: string) => clickUrls(s).map((v) => (v.ok && v.token.kind === 'click' ? v.token.url : v.ok ? v.token.kind : 'invalid'));

const HEAD = 'From: Shop <news@example.com>\nTo: a@example.org\nSubject: hi\nMessage-ID: <m1@example.com>\nDate: Sat, 21 Nov 2026 10:00:00 +0000\nMIME-Version: 1.0\n';

describe('tracking at preparation', () => {
  it('rewrites a quoted-printable HTML part and its text alternative, keeping their encodings', async () => {
    const html = `<html><body><p>Bonjour</p><a href="https://shop.example.com/caf=C3=A9?a=1&amp;b=2#top">caf=C3=A9</a></body></html>`;
    const p = prepare(
      HEAD +
        'Content-Type: multipart/alternative; boundary="b1"\n\n--b1\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: quoted-printable\n\nSee https://shop.example.com/text?x=3D1 now\n--b1\nContent-Type: text/html; charset=utf-8\nContent-Transfer-Encoding: quoted-printable\n\n' +
        html +
        '\n--b1--\n',
    );
    const out = text(p);
    expect(out).toMatch(/^--b1\r\nContent-Type: text\/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n/m);
    const parsed = await simpleParser(Buffer.from(out, 'latin1'));
    expect(urlsOf(String(parsed.html))).toEqual(['trap', 'https://shop.example.com/caf%C3%A9?a=1&b=2#top']);
    expect(String(parsed.html)).toContain('<p>Bonjour</p>');
    expect(String(parsed.html)).toContain(`<img src="${BASE}/o/`);
    expect(urlsOf(parsed.text!)).toEqual(['https://shop.example.com/text?x=1']);
    expect(p.personal).toHaveLength(1);
  });

  it('rewrites base64 parts and keeps them base64', async () => {
    const html = Buffer.from('<html><body><a href="https://example.com/b64?é=1">x</a></body></html>').toString('base64');
    const p = prepare(HEAD + `Content-Type: text/html; charset=UTF-8\nContent-Transfer-Encoding: base64\n\n${html}\n`);
    const out = text(p);
    expect(headerBlock(out)).toMatch(/^Content-Transfer-Encoding: base64$/m);
    expect(out.split('\r\n\r\n')[1]!.split('\r\n').every((l) => l.length <= 76)).toBe(true);
    const parsed = await simpleParser(Buffer.from(out, 'latin1'));
    expect(urlsOf(String(parsed.html))).toEqual(['trap', 'https://example.com/b64?%C3%A9=1']);
  });

  it('makes a 7bit part whose lines would grow past 998 octets quoted-printable, in that part only', async () => {
    const long = Array.from({ length: 6 }, (_, i) => `<a href="https://example.com/${i}">${i}</a>`).join(' ') + ' ' + 'x'.repeat(700);
    const p = prepare(HEAD + `Content-Type: multipart/mixed; boundary=m\n\n--m\nContent-Type: text/html\n\n<body>${long}</body>\n--m\nContent-Type: text/plain\n\nplain https://example.com/t\n--m--\n`);
    const out = text(p);
    expect(out.split('\r\n').every((l) => l.length <= 998)).toBe(true);
    expect(out).toMatch(/--m\r\nContent-Type: text\/html\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n/);
    expect(out).toMatch(/--m\r\nContent-Type: text\/plain\r\n\r\nplain https:\/\/t\.example\.net\/c\//);
    const parsed = await simpleParser(Buffer.from(out, 'latin1'));
    // (mailparser appends the text part of a multipart/mixed to its html)
    expect(urlsOf(String(parsed.html))).toEqual(['trap', ...Array.from({ length: 6 }, (_, i) => `https://example.com/${i}`), 'https://example.com/t', 'https://example.com/t']);
  });

  it('changes the message header when a single-part message must become quoted-printable', () => {
    const p = prepare(HEAD + `Content-Type: text/html\nContent-Transfer-Encoding: 7bit\n\n<body>${'<a href="https://example.com/x">x</a>'.repeat(20)}</body>\n`);
    const head = headerBlock(text(p));
    expect(head).toMatch(/^Content-Transfer-Encoding: quoted-printable$/m);
    expect(head).not.toMatch(/7bit/);
  });

  it('leaves attachments and attached messages alone', () => {
    const attached = 'From: x@example.com\nContent-Type: text/html\n\n<a href="https://inner.example/">i</a>';
    const p = prepare(
      HEAD +
        `Content-Type: multipart/mixed; boundary=m\n\n--m\nContent-Type: text/html\n\n<a href="https://example.com/body">b</a>\n--m\nContent-Type: text/html; name=page.html\nContent-Disposition: attachment; filename=page.html\n\n<a href="https://attached.example/">a</a>\n--m\nContent-Type: message/rfc822\n\n${attached}\n--m--\n`,
    );
    const out = text(p);
    expect(out).toContain('<a href="https://attached.example/">a</a>');
    expect(out).toContain('<a href="https://inner.example/">i</a>');
    // no <body>: the pixel and the trap link go at the end
    expect(urlsOf(out)).toEqual(['https://example.com/body', 'trap']);
  });

  it('reads links in the part charset and leaves charsets it cannot read alone', () => {
    const latin = prepare(HEAD + 'Content-Type: text/html; charset=iso-8859-1\n\n<a href="https://example.com/caf\xe9">x</a>\n');
    expect(urlsOf(text(latin))).toEqual(['https://example.com/caf%C3%A9', 'trap']);
    const utf16 = Buffer.from('<a href="https://example.com/u16">x</a>', 'utf16le').toString('base64');
    const p16 = prepare(HEAD + `Content-Type: text/html; charset=utf-16le\nContent-Transfer-Encoding: base64\n\n${utf16}\n`);
    expect(text(p16)).toContain(utf16); // untouched (it still gets List-Unsubscribe)
  });

  it('makes one copy per recipient, each with its own tokens, and every byte outside the links kept', () => {
    const html = `<html><head><style>a{color:red}</style></head><body class="x">\n<p>Hi &amp; welcome</p><A HREF='https://example.com/?a=1&amp;b=2'>one</A>\n<a href="mailto:x@example.com">mail</a></body></html>`;
    const rcpts = ['a@example.org', 'b@example.org', 'c@example.org'];
    const p = prepare(HEAD + `Content-Type: text/html; charset=utf-8\n\n${html}\n`, { tracking: settings({ recipients: rcpts }) });
    expect(p.personal).toHaveLength(3);
    rcpts.forEach((rcpt, i) => {
      const body = text(p, i).split('\r\n\r\n').slice(1).join('\r\n\r\n');
      const decoded = clickUrls(body).map((v) => (v.ok ? [v.token.kind, v.token.rcpt, v.token.rcptIndex] : null));
      expect(decoded).toEqual([['trap', rcpt, i], ['click', rcpt, i]]);
      // undo the rewriting: what is left is the original, byte for byte
      const restored = body
        .replace(/<img src="https:\/\/t\.example\.net\/o\/[^"]+"[^>]*><a href="https:\/\/t\.example\.net\/c\/[^"]+"[^>]*><\/a>/, '')
        .replace(/="https:\/\/t\.example\.net\/c\/[A-Za-z0-9_-]+"/, `='https://example.com/?a=1&amp;b=2'`);
      expect(restored).toBe(html.replace(/\n/g, '\r\n') + '\r\n');
    });
  });

  it('adds List-Unsubscribe with one-click to marketing mail, signed per recipient', () => {
    const p = prepare(HEAD + 'Content-Type: text/plain\n\nno links here\n', { tracking: settings({ recipients: ['a@example.org', 'b@example.org'] }) });
    const heads = [0, 1].map((i) => headerBlock(text(p, i)));
    for (const [i, h] of heads.entries()) {
      const m = /^List-Unsubscribe: <https:\/\/t\.example\.net\/u\/([A-Za-z0-9_-]+)>, <mailto:(u-[a-z2-7]+)@bounces\.example\.net\?subject=unsubscribe>$/m.exec(h);
      expect(m).not.toBeNull();
      expect(tokens.verify(m![1]!)).toMatchObject({ ok: true, token: { kind: 'unsubscribe', rcptIndex: i, tenant: 'acme', msgId: '0mi3k5q2a0001Qx-z' } });
      expect(tokens.verifyMailto(m![2]!)).toEqual({ msgId: '0mi3k5q2a0001Qx-z', rcptIndex: i, tenant: 'acme' });
      expect(h).toMatch(/^List-Unsubscribe-Post: List-Unsubscribe=One-Click$/m);
    }
    expect(heads[0]).not.toBe(heads[1]);
  });

  it('follows the stream and the tenant for List-Unsubscribe, and keeps a sender-made one', () => {
    const plain = HEAD + 'Content-Type: text/plain\n\nno links\n';
    // transactional, tenant said no: nothing to personalise, one body for all
    expect(prepare('X-Tern-Stream: transactional\n' + plain, { tracking: settings({ unsubscribeTransactional: false }) }).personal).toBeUndefined();
    expect(prepare(plain, { stream: 'transactional', tracking: settings({ unsubscribeTransactional: false }) }).personal).toBeUndefined();
    // the header wins over the tenant's default stream
    expect(prepare('X-Tern-Stream: marketing\n' + plain, { stream: 'transactional', tracking: settings({ unsubscribeTransactional: false }) }).personal).toHaveLength(1);
    // transactional by default still has it
    expect(headerBlock(text(prepare('X-Tern-Stream: transactional\n' + plain)))).toMatch(/^List-Unsubscribe: /m);
    // the sender's own List-Unsubscribe stays, ours is not added
    const own = prepare('List-Unsubscribe: <https://sender.example/u>\n' + plain);
    expect(own.personal).toBeUndefined();
    expect(headerBlock(text(own)).match(/^List-Unsubscribe:.*$/gm)).toEqual(['List-Unsubscribe: <https://sender.example/u>']);
  });

  it('obeys X-Tern-Track and removes it; refuses a value it does not know', () => {
    const msg = HEAD + 'Content-Type: text/html\n\n<a href="https://example.com/x">x</a>\n';
    const off = text(prepare('X-Tern-Track: off\n' + msg));
    expect(off).toContain('<a href="https://example.com/x">');
    expect(off).not.toMatch(/^X-Tern-Track/im);
    expect(urlsOf(text(prepare('X-Tern-Track: on\n' + msg, { tracking: settings({ track: false }) })))).toEqual(['https://example.com/x', 'trap']);
    const bad = prepareMessage({ raw: Buffer.from(('X-Tern-Track: maybe\n' + msg).replace(/\n/g, '\r\n')), hostname: 'h', id: 'x', utf8: false, tenant: 't', feedbackSenderId: 'f', tracking: settings() }, () => [], tokens);
    expect(bad).toMatchObject({ ok: false, code: 550, reason: 'X-Tern-Track must be "on" or "off"' });
  });

  it('leaves out the trap link when tracking.trap_link is off', () => {
    const out = text(prepare(HEAD + 'Content-Type: text/html\n\n<body><a href="https://example.com/x">x</a></body>\n', { tracking: settings({ trapLink: false }) }));
    expect(urlsOf(out)).toEqual(['https://example.com/x']);
    expect(out).toContain(`<img src="${BASE}/o/`);
  });

  it('without tracking settings, prepares one body exactly as before', () => {
    const msg = HEAD + 'Content-Type: text/html\n\n<a href="https://example.com/x">x</a>\n';
    const p = prepare(msg, { tracking: null });
    expect(p.personal).toBeUndefined();
    expect(text(p)).not.toMatch(/List-Unsubscribe|t\.example\.net/);
  });
});

describe('quoted-printable encoding', () => {
  it('round-trips any bytes with lines of at most 76 characters', async () => {
    fc.assert(
      fc.property(fc.array(fc.oneof(fc.string({ maxLength: 200 }), fc.uint8Array({ maxLength: 200 }).map((b) => Buffer.from(b).toString('latin1'))), { maxLength: 5 }), (lines) => {
        const content = lines.join('\r\n');
        const qp = encodeQuotedPrintable(content);
        expect(qp.split('\r\n').every((l) => l.length <= 76)).toBe(true);
        const decoded = Buffer.from(qp.replace(/=\r\n/g, '').replace(/=([0-9A-F]{2})/g, (_m, h: string) => String.fromCharCode(parseInt(h, 16))), 'latin1').toString('latin1');
        expect(decoded).toBe(content);
      }),
    );
  });
});
