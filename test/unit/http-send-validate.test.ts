/**
 * The checks of an HTTP send request (src/control/compose.ts, src/control/routes/sending.ts): whatever a
 * client sends, no header it names or fills can add a header line, reserved headers stay the node's, and a
 * raw message's line ends become CRLF without hiding a bare CR.
 */
import fc from 'fast-check';
import { TypeCompiler } from '@sinclair/typebox/compiler';
import { describe, expect, it } from 'vitest';
import { composeMessages, headerProblem } from '../../src/control/compose.js';
import { RawBody, SendBody, toCrlf } from '../../src/control/routes/sending.js';

const RUNS = { numRuns: 300 };
const BREAKERS = ['\r', '\n', '\0', '\r\n', '\u0085', '\u2028', '\u000b', '\u001b', '\u007f'];
const injected = fc.tuple(fc.string({ maxLength: 40 }), fc.constantFrom(...BREAKERS), fc.string({ maxLength: 40 })).map(([a, b, c]) => a + b + c);
const send = TypeCompiler.Compile(SendBody);
const raw = TypeCompiler.Compile(RawBody);
const base = { from: { email: 'a@example.com' }, to: [{ email: 'b@example.com' }], subject: 's', text: 't' };

describe('send request validation', () => {
  it('a header value with a line break or control character is always refused', () => {
    fc.assert(fc.property(fc.stringMatching(/^[A-Za-z][A-Za-z0-9-]{0,20}$/).map((n) => `X-${n}`), injected, (name, value) => headerProblem(name, value) !== null), RUNS);
  });

  it('a header name outside RFC 5322 ftext (colon, space, control, non-ASCII) is always refused', () => {
    const bad = fc.tuple(fc.string({ maxLength: 10 }), fc.constantFrom(':', ' ', '\r', '\n', '\0', 'é', '\t'), fc.string({ maxLength: 10 })).map(([a, b, c]) => `X${a}${b}${c}`);
    fc.assert(fc.property(bad, (name) => headerProblem(name, 'v') !== null), RUNS);
  });

  it('reserved headers are refused whatever their case; ordinary ones with safe values pass', () => {
    const reserved = fc.constantFrom('From', 'To', 'Subject', 'Message-ID', 'DKIM-Signature', 'Bcc', 'Content-Type', 'X-Tern-Campaign', 'Feedback-ID', 'List-Unsubscribe');
    const anyCase = fc.tuple(reserved, fc.array(fc.boolean(), { minLength: 30, maxLength: 30 })).map(([n, flips]) => [...n].map((c, i) => (flips[i] ? c.toUpperCase() : c.toLowerCase())).join(''));
    fc.assert(fc.property(anyCase, (name) => headerProblem(name, 'v') !== null), RUNS);
    fc.assert(fc.property(fc.stringMatching(/^X-App-[A-Za-z0-9]{1,20}$/), fc.stringMatching(/^[\x20-\x7e]{0,200}$/), (name, value) => headerProblem(name, value) === null), RUNS);
  });

  it('the schema refuses an injected subject, display name or address anywhere in the request', () => {
    fc.assert(
      fc.property(injected, fc.constantFrom('subject', 'from.name', 'to.name', 'reply_to.email', 'from.email', 'tags'), (v, where) => {
        const body = structuredClone(base) as Record<string, any>;
        if (where === 'subject') body.subject = v;
        else if (where === 'from.name') body.from.name = v;
        else if (where === 'to.name') body.to[0].name = v;
        else if (where === 'reply_to.email') body.reply_to = { email: v };
        else if (where === 'from.email') body.from.email = `a${v}@example.com`;
        else body.tags = [v];
        return !send.Check(body);
      }),
      RUNS,
    );
    expect(send.Check(base)).toBe(true);
    expect(raw.Check({ mail_from: 'a@example.com', rcpt_to: ['b@example.com'], message: 'x' })).toBe(true);
  });

  it('whatever a substitution holds, the composed message has exactly the headers it should', async () => {
    await fc.assert(
      fc.asyncProperty(fc.string({ maxLength: 60 }).filter((s) => !/[\u0000-\u001f\u007f-\u009f\u2028\u2029]/.test(s)), async (v) => {
        const { messages } = await composeMessages({ ...base, subject: 'Hi {{ v }}', html: '<p>{{ v }}</p>', to: [{ email: 'b@example.com', substitutions: { v } }] }, [0], 'h');
        const head = messages[0]!.toString('latin1').split('\r\n\r\n')[0]!;
        const names = head.split('\r\n').filter((l) => !/^[ \t]/.test(l)).map((l) => l.slice(0, l.indexOf(':')).toLowerCase());
        expect(names.sort()).toEqual(['content-type', 'date', 'from', 'message-id', 'mime-version', 'subject', 'to']);
      }),
      { numRuns: 100 },
    );
  });
});

describe('raw message line ends', () => {
  it('every LF ends up after a CR, and a bare CR is kept for preparation to refuse', () => {
    fc.assert(
      fc.property(fc.array(fc.constantFrom('a', ' ', '\n', '\r\n', '\r', 'é'), { maxLength: 60 }), (parts) => {
        const out = toCrlf(Buffer.from(parts.join(''), 'latin1')).toString('latin1');
        expect(/(^|[^\r])\n/.test(out)).toBe(false);
        expect(out.split('\r\n').join('').includes('\r')).toBe(/\r(?!\n)/.test(parts.join('')));
      }),
      RUNS,
    );
  });
});
