import fs from 'node:fs';
import path from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { loadBounceRules, SHIPPED_BOUNCE_RULES_FILE } from '../../src/bounce/classify.js';
import { decodeCharset, decodeHeader, htmlToText, walkMessage } from '../../src/bounce/mime.js';
import { parseReport } from '../../src/bounce/parse.js';
import { BounceParser } from '../../src/bounce/parse-pool.js';
import { attributeReport, classifyReport, reportLine } from '../../src/bounce/report.js';
import { VerpCodec } from '../../src/bounce/verp.js';
import { HOSTILE, deeplyNested, dsnWithHugeAttachment } from '../fixtures/bounces/hostile.js';
import { ROOT } from '../support/node.js';

const DIR = path.join(ROOT, 'test/fixtures/bounces');
const rules = loadBounceRules(SHIPPED_BOUNCE_RULES_FILE);
/** the key the VERP addresses and X-Tern-Ref values in the fixtures were made with (see README.md there) */
const codec = new VerpCodec([Buffer.from('tern-bounce-fixtures-test-key-01')]);

type Rcpt = [address: string | null, status: string | null, category: string, hard: boolean];
type Row = [file: string, kind: string, recipients: Rcpt[], feedback: { type: string; original_rcpt: string | null } | null, attribution: [string, number] | null];

/** What each committed fixture must give: kind, recipients (address, status, category, hard), feedback, attribution. */
const FIXTURES: Row[] = [
  // RFC 3464 DSNs
  ['postfix-dsn-userunknown.eml', 'dsn', [['nobody@example.net', '5.1.1', 'userunknown', true]], null, ['0mi3k5q2a0001Qx-z', 1]],
  ['postfix-dsn-delayed.eml', 'dsn', [['alice@slow.example', '4.4.1', 'networkerror', false]], null, null],
  ['postfix-dsn-mixed.eml', 'dsn', [['carol@strict.example', '5.7.1', 'blocked', false], ['dave@full.example', '5.2.2', 'mailboxfull', false]], null, null],
  ['postfix-global-dsn-smtputf8.eml', 'dsn', [['jürgen@beispiel.example', '5.1.1', 'userunknown', true]], null, null],
  ['exim-dsn-relayed-mixed.eml', 'dsn', [['info@example.nl', '2.0.0', 'delivered', false], ['sales@gone-company.example.nl', '5.0.0', 'hostunknown', true]], null, null],
  ['sendmail-dsn-userunknown.eml', 'dsn', [['prof.smith@example.edu', '5.1.1', 'userunknown', true]], null, null],
  ['exchange-o365-dsn.eml', 'dsn', [['jane.doe@contoso.example', '5.1.10', 'userunknown', true]], null, null],
  ['outlook-com-dsn.eml', 'dsn', [['nobody_here_2026@outlook.com', '5.5.0', 'userunknown', true]], null, null],
  ['gmail-dsn-userunknown.eml', 'dsn', [['sam.lost@workspace-customer.example', '5.1.1', 'userunknown', true]], null, ['0mi3k5q2a0002Qx-z', 7]],
  ['gmail-dsn-blocked.eml', 'dsn', [['lee@workspace-other.example', '5.7.1', 'spamdetected', false]], null, null],
  ['ses-dsn-userunknown.eml', 'dsn', [['bob.gone@example.org', '5.1.1', 'userunknown', true]], null, null],
  ['courier-dsn-userunknown.eml', 'dsn', [['tom.away@example.org', '5.0.0', 'userunknown', true]], null, null],
  // bounces in an MTA's own words
  ['postfix-plain-hostunknown.eml', 'dsn', [['ghost@no-such-domain.example', null, 'hostunknown', true]], null, null],
  ['exim-plain-userunknown.eml', 'dsn', [['j.bloggs@example.co.uk', '5.1.1', 'userunknown', true]], null, ['0mi3k5q2a0002Qx-z', 0]],
  ['exim-plain-retry-timeout.eml', 'dsn', [['info@old-shop.example.de', null, 'expired', false]], null, null],
  ['exim-plain-delayed-greylist.eml', 'dsn', [['eva@grey.example', '4.7.1', 'onhold', false]], null, null],
  ['exim-plain-toobig.eml', 'dsn', [['office@small.example.at', null, 'mesgtoobig', false]], null, null],
  ['sendmail-plain-userunknown.eml', 'dsn', [['old.account@legacy.example.com', '5.1.1', 'userunknown', true]], null, null],
  ['exchange-2010-plain-quota.eml', 'dsn', [['p.weber@corp.example.com', '5.2.2', 'mailboxfull', false]], null, null],
  ['yahoo-plain-userunknown.eml', 'dsn', [['nobody.at.all.2026@yahoo.com', null, 'userunknown', true]], null, ['0mi3k5q2b00a7Ab_9', 2]],
  ['yahoo-plain-disabled.eml', 'dsn', [['dormant.user@ymail.com', null, 'suspend', false]], null, null],
  ['ses-plain-expired.eml', 'dsn', [['ops@unreachable.example.org', '4.4.7', 'expired', false]], null, null],
  ['qmail-plain-userunknown.eml', 'dsn', [['kim.left@example.net.au', '5.1.1', 'userunknown', true]], null, null],
  ['qmail-plain-remote-quota.eml', 'dsn', [['ana.cheia@example.com.br', '5.2.2', 'mailboxfull', false]], null, null],
  ['domino-plain-userunknown.eml', 'dsn', [['jsmith@acme.example', null, 'userunknown', true]], null, null],
  ['mdaemon-plain-userunknown.eml', 'dsn', [['marek.stary@example.pl', '5.1.1', 'userunknown', true]], null, null],
  // ARF
  ['arf-yahoo.eml', 'arf', [['annoyed.reader@yahoo.com', null, 'feedback', false]], { type: 'abuse', original_rcpt: 'annoyed.reader@yahoo.com' }, ['0mi3k6000001zK7w-', 0]],
  ['arf-microsoft-jmrp.eml', 'arf', [['reader.two@hotmail.com', null, 'feedback', false]], { type: 'abuse', original_rcpt: 'reader.two@hotmail.com' }, ['0mi3k6000001zK7w-', 7]],
  ['arf-mailru.eml', 'arf', [['ivan.petrov@mail.ru', null, 'feedback', false]], { type: 'abuse', original_rcpt: 'ivan.petrov@mail.ru' }, null],
  ['arf-yandex.eml', 'arf', [['olga.s@yandex.ru', null, 'feedback', false]], { type: 'abuse', original_rcpt: 'olga.s@yandex.ru' }, null],
  ['arf-aol.eml', 'arf', [[null, null, 'feedback', false]], { type: 'abuse', original_rcpt: null }, ['0mi3k5q2b00a7Ab_9', 130]],
  // auto-replies and what is none of these
  ['autoreply-rfc3834-en.eml', 'autoreply', [['jane.miller@example.com', null, 'vacation', false]], null, ['0mi3k5q2a0001Qx-z', 2]],
  ['autoreply-exchange-de.eml', 'autoreply', [['t.becker@firma.example.de', null, 'vacation', false]], null, null],
  ['autoreply-fr-latin1.eml', 'autoreply', [['amelie.durand@exemple.example.fr', null, 'vacation', false]], null, null],
  ['autoreply-precedence-abwesenheit.eml', 'autoreply', [['k.hoffmann@beispiel.example', null, 'vacation', false]], null, null],
  ['autoreply-es.eml', 'autoreply', [['lucia.fernandez@ejemplo.example.es', null, 'vacation', false]], null, null],
  ['human-reply.eml', 'unknown', [], null, null],
  ['notification-auto-generated.eml', 'unknown', [], null, null],
  // forged and malformed
  ['forged-verp-dsn.eml', 'dsn', [['victim@example.net', '5.1.1', 'userunknown', true]], null, null],
  ['hostile-truncated-dsn.eml', 'dsn', [['nobody@example.net', '5.1.1', 'userunknown', true]], null, ['0mi3k5q2a0001Qx-z', 1]],
  ['hostile-truncated-in-status.eml', 'dsn', [['nobody@example.net', '5.1.1', 'userunknown', true]], null, ['0mi3k5q2a0001Qx-z', 1]],
  ['hostile-missing-boundary.eml', 'dsn', [['nobody@example.net', '5.1.1', 'userunknown', true]], null, ['0mi3k5q2a0001Qx-z', 1]],
  ['hostile-wrong-charset.eml', 'dsn', [['rene@exemple.example', '5.1.1', 'userunknown', true]], null, null],
];

const read = (file: string) => fs.readFileSync(path.join(DIR, file));
const summary = (raw: Uint8Array) => {
  const report = classifyReport(parseReport(raw), rules);
  return {
    kind: report.kind,
    recipients: report.recipients.map((r): Rcpt => [r.address, r.status, r.category, r.hard]),
    feedback: report.feedback ? { type: report.feedback.type, original_rcpt: report.feedback.original_rcpt } : null,
    attribution: ((a) => (a ? [a.message_id, a.recipient] : null))(attributeReport(report, codec)),
  };
};

describe('parsing the fixtures', () => {
  it('covers every committed fixture', () => {
    const files = fs.readdirSync(DIR).filter((f) => f.endsWith('.eml'));
    expect(files.sort()).toEqual(FIXTURES.map((f) => f[0]).sort());
  });

  it.each(FIXTURES)('%s → %s', (file, kind, recipients, feedback, attribution) => {
    expect(summary(read(file))).toEqual({ kind, recipients, feedback, attribution });
  });

  it('reads CRLF and LF line ends alike', () => {
    for (const [file] of FIXTURES) {
      const lf = read(file);
      const crlf = Buffer.from(lf.toString('latin1').replace(/\r?\n/g, '\r\n'), 'latin1');
      expect(summary(crlf), file).toEqual(summary(lf));
    }
  });

  it('recovers per-recipient details: action, reply code, diagnostic, remote MTA', () => {
    const [r] = parseReport(read('postfix-dsn-userunknown.eml')).recipients;
    expect(r).toEqual({
      address: 'nobody@example.net',
      action: 'failed',
      status: '5.1.1',
      reply_code: 550,
      diagnostic: '550 5.1.1 <nobody@example.net>: Recipient address rejected: User unknown in virtual mailbox table',
      remote_mta: 'mx.example.net',
      original_recipient: 'nobody@example.net',
    });
    const gmail = parseReport(read('gmail-dsn-userunknown.eml')).recipients[0]!;
    // the folded multi-line reply reads as one sentence
    expect(gmail.diagnostic).toMatch(/^550-5\.1\.1 The email account that you tried to reach does not exist\. Please try double-checking/);
    expect(gmail.remote_mta).toBe('aspmx.l.google.com');
    const qmail = parseReport(read('qmail-plain-remote-quota.eml')).recipients[0]!;
    expect(qmail).toMatchObject({ action: 'failed', reply_code: 552, remote_mta: '203.0.113.77', diagnostic: '552 5.2.2 <ana.cheia@example.com.br>: Mailbox quota exceeded' });
    expect(parseReport(read('exim-plain-delayed-greylist.eml')).recipients[0]).toMatchObject({ action: 'delayed', reply_code: 451, remote_mta: 'mx.grey.example' });
  });

  it('reads the feedback report of an ARF complaint and the headers of the original message', () => {
    const report = parseReport(read('arf-yahoo.eml'));
    expect(report.feedback).toEqual({ type: 'abuse', user_agent: 'Yahoo!-Mail-Feedback/2.0', original_rcpt: 'annoyed.reader@yahoo.com', arrival_date: 'Sun, 22 Nov 2026 05:58:02 +0000', source_ip: '192.0.2.10' });
    expect(report.original).toMatchObject({ returnPath: 'b-caazve25mwaaaachfo6d4abho7kpzmzbfrsg4oq@bounce.sender.example', messageId: '<0mi3k6000001zK7w-@sender.example>' });
    expect(report.original.headers).toMatchObject({ subject: 'Your November update', 'list-unsubscribe-post': 'List-Unsubscribe=One-Click' });
    const mailru = parseReport(read('arf-mailru.eml'));
    expect(mailru.original.headers?.subject).toBe('Новости ноября'); // RFC 2047 decoded
    expect(parseReport(read('arf-microsoft-jmrp.eml')).original.ref).toBe('caazve25mwaaaachfo6d4b5as3fcaztbuvp4xmy');
  });

  it('finds the returned message quoted in the text of a plain-text bounce', () => {
    const report = parseReport(read('yahoo-plain-userunknown.eml'));
    expect(report.original).toMatchObject({ returnPath: 'b-caazve25gmzqaalpag772asproqaewgf6sfnr7a@bounce.sender.example', messageId: '<0mi3k5q2b00a7Ab_9@sender.example>' });
  });

  it('gives the same JSON line shape for every kind', () => {
    for (const [file] of FIXTURES) {
      const report = classifyReport(parseReport(read(file)), rules);
      const line = reportLine(file, report, attributeReport(report, codec));
      expect(Object.keys(line)).toEqual(['file', 'kind', 'recipients', 'feedback', 'attribution']);
      for (const r of line.recipients) expect(Object.keys(r)).toEqual(['address', 'action', 'status', 'reply_code', 'diagnostic', 'remote_mta', 'category', 'hard']);
      if (line.feedback) expect(Object.keys(line.feedback)).toEqual(['type', 'user_agent', 'original_rcpt']);
    }
  });
});

describe('attribution', () => {
  it('ignores a forged VERP token, and reports it', () => {
    const report = parseReport(read('forged-verp-dsn.eml'));
    const rejected: Array<[string, string]> = [];
    expect(attributeReport(report, codec, { onRejected: (c, why) => rejected.push([c, why]) })).toBeNull();
    expect(rejected).toEqual([['b-caazve25gmzaaaabimp3galblnbkswcsw7qfjcy@bounce.sender.example', 'forged']]);
  });

  it('tries the SMTP envelope first, then the report\'s addresses, then X-Tern-Ref', () => {
    const report = parseReport(read('postfix-dsn-userunknown.eml'));
    const envelope = [codec.encode('0mi3k5q2a0009Zz-z', 4, 'bounce.sender.example')];
    expect(attributeReport(report, codec, { envelope })).toEqual({ message_id: '0mi3k5q2a0009Zz-z', recipient: 4 });
    expect(attributeReport({ envelopeCandidates: [], original: report.original }, codec)).toEqual({ message_id: '0mi3k5q2a0001Qx-z', recipient: 1 });
    // with another key nothing verifies
    expect(attributeReport(report, new VerpCodec([Buffer.alloc(32, 1)]))).toBeNull();
  });
});

describe('hostile input', () => {
  it.each(HOSTILE)('$name: a clean result', ({ name, build }) => {
    const report = classifyReport(parseReport(build()), rules);
    if (name === '10 MB attachment' || name === 'bad encodings and charsets') {
      expect(report.kind).toBe('dsn');
      expect(report.recipients.map((r) => [r.category, r.hard])).toEqual([['userunknown', true]]);
    } else {
      expect(report.kind).toBe('unknown');
      expect(report.recipients).toEqual([]);
    }
  });

  it('says which limit cut a message short', () => {
    expect(parseReport(deeplyNested(200)).detail).toMatch(/limits reached: depth/);
    expect(parseReport(dsnWithHugeAttachment()).detail).toMatch(/read the first 1048576 bytes/);
    // within the depth limit the DSN at the bottom is found
    expect(parseReport(deeplyNested(5)).kind).toBe('dsn');
  });

  it('never throws, whatever the bytes', () => {
    const seeds = FIXTURES.slice(0, 12).map(([f]) => read(f));
    fc.assert(
      fc.property(fc.constantFrom(...seeds), fc.array(fc.tuple(fc.nat(), fc.nat(255)), { maxLength: 30 }), fc.nat(), (seed, edits, cut) => {
        const raw = Buffer.from(seed.subarray(0, (cut % seed.length) + 1));
        for (const [at, byte] of edits) raw[at % raw.length] = byte;
        const report = classifyReport(parseReport(raw), rules);
        expect(['dsn', 'arf', 'autoreply', 'unknown']).toContain(report.kind);
      }),
      { numRuns: 300 },
    );
    fc.assert(fc.property(fc.uint8Array({ maxLength: 4000 }), (raw) => void parseReport(raw)));
    fc.assert(fc.property(fc.string({ maxLength: 3000 }), (s) => void parseReport(Buffer.from(`From: MAILER-DAEMON@x.example\nSubject: Undelivered Mail\n\n${s}`))));
  });
});

describe('MIME decoding', () => {
  it('decodes encoded words, raw UTF-8 headers and unknown charsets', () => {
    expect(decodeHeader('=?utf-8?Q?Automatische_Antwort:?= =?utf-8?B?IElocmU=?= Bestellung')).toBe('Automatische Antwort: Ihre Bestellung');
    expect(decodeHeader('=?iso-8859-1?Q?R=E9ponse_automatique?=')).toBe('Réponse automatique');
    expect(decodeHeader(Buffer.from('Grüße', 'utf8').toString('latin1'))).toBe('Grüße');
    expect(decodeHeader('=?x-nonsense?Q?caf=C3=A9?=')).toBe('café'); // unknown charset: UTF-8 when it is valid UTF-8
    expect(decodeCharset(Buffer.from([0x63, 0x61, 0x66, 0xe9]), 'x-nonsense')).toBe('café'); // else windows-1252
    expect(decodeCharset(Buffer.from([0xe9]), 'utf-8')).toBe('\ufffd');
  });

  it('splits multiparts only on whole delimiter lines, and survives a missing closing delimiter', () => {
    const msg = 'Content-Type: multipart/mixed; boundary="b"\n\n--b\nContent-Type: text/plain\n\none --b not a delimiter\n--bb\n--b\nContent-Type: text/html\n\n<p>two';
    const walk = walkMessage(msg);
    expect(walk.parts.map((p) => [p.type, p.body])).toEqual([
      ['text/plain', 'one --b not a delimiter\n--bb'],
      ['text/html', '<p>two'],
    ]);
  });

  it('turns HTML into its text', () => {
    expect(htmlToText('<html><head><style>p{}</style></head><body><p>Your message to <b>a@b.example</b> couldn&#39;t be delivered.</p>&nbsp;ok</body></html>').trim()).toBe(
      "Your message to a@b.example couldn't be delivered.\n ok",
    );
  });
});

describe('BounceParser (parsing threads with a deadline)', () => {
  const parser = new BounceParser({ threads: 2 });
  afterAll(() => parser.close());

  it('parses on a worker thread, in order, many at a time', async () => {
    const files = FIXTURES.map(([f]) => f);
    const reports = await Promise.all(files.map((f) => parser.parse(read(f))));
    expect(reports.map((r) => r.kind)).toEqual(FIXTURES.map((f) => f[1]));
    // every hostile input within the deadline
    const hostile = await Promise.all(HOSTILE.map((h) => parser.parse(h.build())));
    for (const r of hostile) expect(r.detail).not.toMatch(/longer than/);
  });

  it('gives up on a parse that passes its deadline, replaces the thread and goes on', async () => {
    const slow = await parser.parse(dsnWithHugeAttachment(), { deadlineMs: 1 });
    expect(slow).toMatchObject({ kind: 'unknown', detail: 'parsing took longer than 1 ms; stopped' });
    const [a, b] = await Promise.all([parser.parse(read('postfix-dsn-userunknown.eml')), parser.parse(read('arf-aol.eml'))]);
    expect([a.kind, b.kind]).toEqual(['dsn', 'arf']);
  });

  it('hands the messages queued behind a parse that passed its deadline to the new thread', async () => {
    const one = new BounceParser({ threads: 1 });
    try {
      // the thread holds several messages at a time: the ones behind the slow one are parsed all the same
      const reports = await Promise.all([
        one.parse(dsnWithHugeAttachment(), { deadlineMs: 1 }),
        one.parse(read('postfix-dsn-userunknown.eml')),
        one.parse(read('arf-aol.eml')),
        one.parse(read('autoreply-rfc3834-en.eml')),
        one.parse(read('exim-plain-userunknown.eml')),
      ]);
      expect(reports.map((r) => r.kind)).toEqual(['unknown', 'dsn', 'arf', 'autoreply', 'dsn']);
      expect(reports[0]!.detail).toBe('parsing took longer than 1 ms; stopped');
    } finally {
      await one.close();
    }
  });

  it('answers unknown, without waiting, when a thread cannot even start', async () => {
    const starved = new BounceParser({ maxHeapMb: 1 });
    try {
      expect(await starved.parse(read('postfix-dsn-userunknown.eml'))).toMatchObject({ kind: 'unknown', detail: expect.stringMatching(/parser thread could not start/) });
    } finally {
      await starved.close();
    }
  });

  it('leaves the caller\'s buffer as it was', async () => {
    const raw = read('arf-yahoo.eml');
    const copy = Buffer.from(raw);
    await parser.parse(raw);
    expect(raw.equals(copy)).toBe(true);
  });
});
