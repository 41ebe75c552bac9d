import fs from 'node:fs';
import path from 'node:path';
import YAML from 'yaml';
import { describe, expect, it } from 'vitest';
import { buildConfig, ConfigError } from '../../src/core/config.js';
import { bounceRulesFromDocument, CATEGORIES, classifyResponse, loadBounceRules, normalizeReplyText, SHIPPED_BOUNCE_RULES_FILE, type ReplyFacts } from '../../src/bounce/classify.js';
import { tempDir } from '../support/node.js';

const rules = loadBounceRules(SHIPPED_BOUNCE_RULES_FILE);
const reply = (text: string): ReplyFacts => ({ text });

/** [the reply (or facts), category, hard, deciding rule] — every shipped rule decides at least one case */
const CASES: Array<[string | ReplyFacts, string, boolean, string]> = [
  // 1. provider texts
  ['550 5.5.0 Requested action not taken: mailbox unavailable (S2017062302). [BN8NAM12FT046.eop-nam12.prod.protection.outlook.com]', 'userunknown', true, 'outlook-mailbox-unavailable'],
  ['450 4.5.0 Requested action not taken: mailbox unavailable', 'syntaxerror', false, 'status-protocol'],
  ['550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup', 'userunknown', true, 'microsoft-recipient-not-found'],
  ['550 5.4.1 Recipient address rejected: Access denied. AS(201806281) [DB5EUR03FT052.eop-EUR03.prod.protection.outlook.com]', 'userunknown', true, 'microsoft-edge-access-denied'],
  ['550 5.7.606 Access denied, banned sending IP [192.0.2.10]. To request removal from this list please visit https://sender.office.com/', 'blocked', false, 'microsoft-banned-sender'],
  ['550 5.7.1 Unfortunately, messages from [192.0.2.10] weren\'t sent. Please contact your Internet service provider since part of their network is on our block list (S3150).', 'blocked', false, 'microsoft-banned-sender'],
  ['451 4.7.650 The mail server [192.0.2.10] has been temporarily rate limited due to IP reputation.', 'badreputation', false, 'microsoft-ip-reputation'],
  ['451 4.7.500 Server busy. Please try again later from [192.0.2.10]. (AS761)', 'speeding', false, 'microsoft-server-busy'],
  ['550-5.1.1 The email account that you tried to reach does not exist. Please try\n550-5.1.1 double-checking the recipient\'s email address for typos or\n550-5.1.1 unnecessary spaces. Learn more at\n550 5.1.1  https://support.google.com/mail/?p=NoSuchUser a1-20020a05 - gsmtp', 'userunknown', true, 'gmail-no-such-user'],
  ['550-5.2.1 The email account that you tried to reach is disabled. Learn more at\n550 5.2.1  https://support.google.com/mail/?p=DisabledUser a2si - gsmtp', 'suspend', false, 'gmail-account-disabled'],
  ['452-4.2.2 The email account that you tried to reach is over quota. Please direct\n452 4.2.2 the recipient to https://support.google.com/mail/?p=OverQuotaTemp - gsmtp', 'mailboxfull', false, 'gmail-over-quota'],
  ['450-4.2.1 The user you are trying to contact is receiving mail at a rate that\n450 4.2.1 prevents additional messages from being delivered. - gsmtp', 'speeding', false, 'gmail-receiving-rate'],
  ['421-4.7.28 Our system has detected an unusual rate of unsolicited mail originating\n421 4.7.28 from your IP address. To protect our users from spam, mail sent from your IP address has been temporarily rate limited. - gsmtp', 'badreputation', false, 'gmail-unusual-rate'],
  ['550-5.7.1 [192.0.2.10] Gmail has detected that this message is likely unsolicited mail. To reduce the\n550 5.7.1 amount of spam sent to Gmail, this message has been blocked. - gsmtp', 'spamdetected', false, 'gmail-likely-unsolicited'],
  ['550-5.7.26 This mail has been blocked because the sender is unauthenticated. Gmail requires all senders to authenticate with either SPF or DKIM.', 'authfailure', false, 'gmail-unauthenticated'],
  ["554 delivery error: dd This user doesn't have a yahoo.com account (someone@yahoo.com) [0] - mta4012.mail.gq1.yahoo.com", 'userunknown', true, 'yahoo-no-account'],
  ['554 delivery error: dd Sorry your message to someone@ymail.com cannot be delivered. This mailbox is disabled (554.30). - mta4211.mail.bf1.yahoo.com', 'suspend', false, 'yahoo-mailbox-disabled'],
  ['421 4.7.0 [TSS04] Messages from 192.0.2.10 temporarily deferred due to unexpected volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes', 'badreputation', false, 'yahoo-deferral'],
  ['553 5.7.2 [BL23] Connections not accepted from IP addresses on Spamhaus XBL; see https://postmaster.yahooinc.com/error-codes', 'blocked', false, 'yahoo-blocklist'],
  ['554 Blocked - see https://ipcheck.proofpoint.com/?ip=192.0.2.10', 'blocked', false, 'secure-gateway-block'],
  // 2. soft causes named in the text win over the code
  ['554 5.7.1 Service unavailable; Client host [192.0.2.10] blocked using zen.spamhaus.org; https://www.spamhaus.org/query/ip/192.0.2.10', 'blocked', false, 'block-list'],
  ['550 5.1.1 Your IP 192.0.2.10 is listed in bl.example.org', 'blocked', false, 'block-list'],
  ['550 5.7.1 Message rejected due to poor sender reputation', 'badreputation', false, 'reputation'],
  ['450 4.7.1 Client host rejected: cannot find your reverse hostname, [192.0.2.10]', 'requireptr', false, 'reverse-dns'],
  ['550-5.7.25 [192.0.2.10] The IP address sending this message does not have a PTR record setup, or the corresponding forward DNS entry does not point to the sending IP.', 'requireptr', false, 'reverse-dns'],
  ['550 5.7.1 Email rejected per DMARC policy for sender.example', 'authfailure', false, 'email-authentication'],
  ['550 5.7.23 SPF validation failed for sender.example', 'authfailure', false, 'email-authentication'],
  ['554 5.7.1 <someone@example.org>: Relay access denied', 'norelaying', false, 'relaying-denied'],
  ["553 sorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)", 'norelaying', false, 'relaying-denied'],
  ['554 5.7.0 Message rejected: virus found (Eicar-Test-Signature)', 'virusdetected', false, 'virus'],
  ['550 5.7.1 Message rejected as spam by Content Filtering.', 'spamdetected', false, 'spam'],
  ['452 4.3.2 Connection rate limit exceeded.', 'toomanyconn', false, 'too-many-connections'],
  ['421 4.7.0 Too many concurrent SMTP connections from this IP address; please try again later.', 'toomanyconn', false, 'too-many-connections'],
  ['450 4.7.1 Rate limit exceeded for sender 192.0.2.10', 'speeding', false, 'rate-limit'],
  ['451 4.7.1 You are sending too many messages, slow down', 'speeding', false, 'rate-limit'],
  ['450 4.2.0 <someone@example.org>: Recipient address rejected: Greylisted, see http://postgrey.schweikert.ch/help/example.org.html', 'onhold', false, 'greylisting'],
  ['530 5.7.0 Must issue a STARTTLS command first', 'failedstarttls', false, 'tls-required'],
  ['552 5.2.2 <someone@example.org>: Mailbox full', 'mailboxfull', false, 'mailbox-full'],
  ['552 1 Requested mail action aborted, mailbox over quota', 'mailboxfull', false, 'mailbox-full'],
  ['552 5.3.4 Message size exceeds fixed limit', 'mesgtoobig', false, 'message-too-big'],
  ['retry timeout exceeded', 'expired', false, 'expired'],
  ['554 5.4.6 Too many hops', 'systemerror', false, 'mail-loop'],
  ['550 5.7.1 This message is not RFC 5322 compliant. There are multiple Subject headers.', 'notcompliantrfc', false, 'rfc-compliance'],
  ['553 5.1.8 <bounces@sender.example>: Sender address rejected: Domain not found', 'rejected', false, 'sender-rejected'],
  ['550 5.7.1 The user has blocked your email address', 'filtered', false, 'recipient-filter'],
  // 3. enhanced status codes
  ['556 5.1.10 Recipient address has null MX', 'notaccept', true, 'null-mx'],
  ['550 5.1.6 Recipient has moved; no forwarding address', 'hasmoved', true, 'status-has-moved'],
  ['551 User not local; please try <someone@new.example>', 'hasmoved', true, 'reply-user-not-local'],
  ['550 5.1.1 <someone@example.org>: Recipient address rejected: User unknown in local recipient table', 'userunknown', true, 'status-bad-mailbox'],
  ['450 4.1.1 <someone@example.org>: Recipient address rejected: unverified address', 'userunknown', false, 'status-bad-mailbox'],
  [{ status: '5.1.1', code: 550, text: 'Mailbox unavailable' }, 'userunknown', true, 'status-bad-mailbox'],
  ['550 5.1.2 Bad destination system address', 'hostunknown', true, 'status-bad-domain'],
  [{ status: '5.1.8', code: 553, text: 'Bad sender system address' }, 'rejected', false, 'status-sender-address'],
  ['550 5.2.1 Mailbox disabled, not accepting messages', 'suspend', false, 'status-mailbox-disabled'],
  ['552 5.2.2 Requested mail action aborted', 'mailboxfull', false, 'status-mailbox-full'],
  ['452 4.5.3 Too many recipients', 'exceedlimit', false, 'status-exceeds-limit'],
  ['452 4.3.1 Insufficient system storage', 'systemfull', false, 'status-system-full'],
  ['554 5.3.4 Rejected', 'mesgtoobig', false, 'status-too-big'],
  ['451 4.3.0 Mail server temporarily rejected message', 'systemerror', false, 'status-mail-system'],
  [{ status: '4.4.7' }, 'expired', false, 'status-expired'],
  ['421 4.4.5 Server busy', 'toomanyconn', false, 'status-congestion'],
  ['421 4.4.2 Connection dropped', 'networkerror', false, 'status-network'],
  ['501 5.5.4 Invalid command arguments', 'syntaxerror', false, 'status-protocol'],
  ['554 5.6.0 Message content rejected', 'contenterror', false, 'status-content'],
  [{ status: '5.7.10', text: 'Encryption Needed' }, 'failedstarttls', false, 'status-encryption'],
  ['535 5.7.8 Authentication credentials invalid', 'securityerror', false, 'status-security'],
  [{ status: '5.7.24', text: 'Validation error' }, 'authfailure', false, 'status-email-authentication'],
  [{ status: '5.7.25' }, 'requireptr', false, 'status-ptr'],
  [{ status: '5.7.18', code: 550, text: 'Not permitted' }, 'norelaying', false, 'status-relay'],
  [{ status: '4.7.28', code: 421, text: 'Try again later' }, 'badreputation', false, 'status-rate'],
  ['451 4.7.1 Please try again later', 'badreputation', false, 'status-temporary-policy'],
  ['550 5.7.1 Delivery not authorized, message refused', 'policyviolation', false, 'status-policy'],
  // 4. generic texts
  ['Host or domain name not found. Name service error for name=no-such.example type=A: Host not found', 'hostunknown', true, 'host-unknown'],
  ['Unrouteable address', 'hostunknown', true, 'host-unknown'],
  ['550 Mailbox disabled for this recipient', 'suspend', false, 'account-disabled'],
  ['550 <someone@example.org>... User unknown', 'userunknown', true, 'user-unknown'],
  ['Sorry, no mailbox here by that name. (#5.1.1)', 'userunknown', true, 'status-bad-mailbox'],
  ['Sorry, no mailbox here by that name.', 'userunknown', true, 'user-unknown'],
  ['User jsmith (jsmith@acme.example) not listed in Domino Directory', 'userunknown', true, 'user-unknown'],
  ['554 Message refused by administrative prohibition', 'policyviolation', false, 'policy'],
  ['connect to mx.example.com[198.51.100.7]:25: Connection refused', 'networkerror', false, 'network'],
  ['452 Insufficient system storage', 'systemfull', false, 'system-full'],
  ['Command died with status 1: "/usr/bin/procmail". Command output: procmail: Quota exceeded', 'mailboxfull', false, 'mailbox-full'],
  ['Command died with status 75: "/usr/lib/dovecot/deliver"', 'mailererror', false, 'mailer-error'],
  ['550 Attachment type not allowed: invoice.exe', 'contenterror', false, 'content'],
  ['500 Syntax error, command unrecognized', 'syntaxerror', false, 'syntax'],
  ['451 Requested action aborted: local error in processing', 'systemerror', false, 'system-error'],
  // 5. bare reply codes and fallbacks
  ['552 Requested action aborted', 'mailboxfull', false, 'reply-storage'],
  ['452 Requested action not taken', 'systemfull', false, 'reply-insufficient-storage'],
  ['451 Requested action aborted', 'systemerror', false, 'reply-local-error'],
  ['250 2.0.0 Ok: queued as 4Cw9Qm1TzXz9sWc', 'delivered', false, 'delivered'],
  ['550 Go away', 'undefined', false, 'permanent-other'],
  ['450 Please retry', 'undefined', false, 'temporary-other'],
  ['Something happened', 'undefined', false, '(none)'],
];

describe('classifyResponse with the shipped rules', () => {
  it.each(CASES)('%j → %s (hard %s) by %s', (input, category, hard, rule) => {
    const c = classifyResponse(rules, typeof input === 'string' ? reply(input) : input);
    expect({ category: c.category, hard: c.hard, rule: c.rule }).toEqual({ category, hard, rule });
    expect(c.action).toBe(hard ? 'suppress' : category === 'delivered' ? 'none' : 'count');
  });

  it('has a case for every shipped rule', () => {
    const doc = YAML.parse(fs.readFileSync(SHIPPED_BOUNCE_RULES_FILE, 'utf8')) as { rules: Array<{ name: string }> };
    const decided = new Set(CASES.map((c) => c[3]));
    expect(doc.rules.map((r) => r.name).filter((n) => !decided.has(n))).toEqual([]);
  });

  it('uses only categories of the taxonomy', () => {
    for (const r of rules.rules) expect(CATEGORIES).toContain(r.category);
  });

  it('reads the code and the enhanced status from the text when they are not given, and not from an IP address', () => {
    expect(classifyResponse(rules, { text: 'smtp; 550 5.1.1 <x@example.org>: unknown' }).category).toBe('userunknown');
    // 4.4.4.4 is an address, not a status; the reply code alone decides
    expect(classifyResponse(rules, { text: '552 host 4.4.4.4 refused' }).rule).toBe('reply-storage');
    expect(classifyResponse(rules, { code: 550, text: 'mailbox unavailable' }).category).toBe('userunknown');
    expect(classifyResponse(rules, { status: 'garbage', code: 250, text: null }).category).toBe('delivered');
  });

  it('never calls a temporary reply hard unless a rule says so', () => {
    const temp = classifyResponse(rules, reply('450 4.1.1 <x@example.org>: Recipient address rejected: User unknown in local recipient table'));
    expect(temp).toMatchObject({ category: 'userunknown', hard: false, action: 'count' });
    const own = bounceRulesFromDocument({ rules: [{ name: 'sure', status: '4.1.1', category: 'userunknown', hard: true }] });
    expect(classifyResponse(own, { status: '4.1.1' })).toMatchObject({ hard: true, action: 'suppress' });
  });

  it('joins multi-line replies without their repeated codes', () => {
    expect(normalizeReplyText('550-5.1.1 The email account that you tried to reach does not exist. Please try\r\n550-5.1.1 double-checking the recipient\'s email address\r\n550 5.1.1 for typos. - gsmtp')).toBe(
      "550-5.1.1 The email account that you tried to reach does not exist. Please try double-checking the recipient's email address for typos. - gsmtp",
    );
    // a DSN Diagnostic-Code that the reporting MTA folded into one line
    expect(normalizeReplyText('smtp; 550-5.7.1 one\n 550-5.7.1 two\n 550 5.7.1 three')).toBe('550-5.7.1 one two three');
    expect(normalizeReplyText('X-Postfix; connect to mx.example.com[198.51.100.7]:25:\n    Connection timed out')).toBe('connect to mx.example.com[198.51.100.7]:25: Connection timed out');
  });

  it('is fast enough for every delivery reply', () => {
    // not a timing assertion: a sanity bound so a pathological regex in the rules cannot slip in unnoticed
    const long = '550 ' + 'a '.repeat(5000) + 'x';
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < 200; i++) classifyResponse(rules, reply(long));
    expect(Number(process.hrtime.bigint() - t0) / 1e6).toBeLessThan(5000);
  });
});

const problems = (doc: unknown): string[] => {
  try {
    bounceRulesFromDocument(doc);
    return [];
  } catch (err) {
    return (err as ConfigError).problems;
  }
};

describe('bounce rules files', () => {
  it.each([
    [{ rules: [{ name: 'a', text: 'x', category: 'userunknown' }, { name: 'b', text: 'y', category: 'undefined' }, { name: 'c', text: 'z', category: 'undefined' }, { name: 'd', status: '5.1.1', category: 'usrunknown' }] }, /^bounce-rules: rules\[3\]\.category: "usrunknown" is not a category; use one of userunknown, mailboxfull, /],
    [{ rules: [{ name: 'a', status: '5.1', category: 'userunknown' }] }, /^bounce-rules: rules\[0\]\.status: "5\.1" is not an enhanced status code; write it like "5\.1\.1"/],
    [{ rules: [{ name: 'a', code: '5x', category: 'userunknown' }] }, /^bounce-rules: rules\[0\]\.code: "5x" is not a reply code; write it like 550/],
    [{ rules: [{ name: 'a', text: '(unclosed', category: 'blocked' }] }, /^bounce-rules: rules\[0\]\.text: Invalid regular expression/],
    [{ rules: [{ name: 'a', txt: 'x', category: 'blocked' }] }, /^bounce-rules: rules\[0\]\.txt: unknown key; the keys allowed here are name, status, code, class, text, category, hard, action/],
    [{ rules: [{ name: 'a', category: 'blocked' }, { name: 'a', category: 'blocked' }] }, /^bounce-rules: rules\[1\]\.name: "a" is the name of an earlier rule/],
    [{ rules: [{ name: 'a', category: 'blocked', action: 'drop' }] }, /^bounce-rules: rules\[0\]\.action: "drop" is not an action; use suppress, count or none/],
    [{ rules: [{ category: 'blocked' }] }, /^bounce-rules: rules\[0\]\.name: missing is invalid/],
    [{ rulez: [] }, /^bounce-rules: /],
  ])('refuses %j naming the key', (doc, message) => {
    const p = problems(doc);
    expect(p.length).toBeGreaterThan(0);
    expect(p.join('\n')).toMatch(message);
  });

  it('accepts status wildcards, code patterns, lists and classes', () => {
    const r = bounceRulesFromDocument({
      rules: [
        { name: 'wild', status: ['4.7.*', 'x.2.2'], category: 'speeding' },
        { name: 'codes', code: ['55x', 421], category: 'blocked' },
        { name: 'class', class: [4], text: 'later', category: 'onhold' },
      ],
    });
    expect(classifyResponse(r, { status: '4.7.123' }).rule).toBe('wild');
    expect(classifyResponse(r, { status: '5.2.2' }).rule).toBe('wild');
    expect(classifyResponse(r, { code: 554 }).rule).toBe('codes');
    expect(classifyResponse(r, { code: 421 }).rule).toBe('codes');
    expect(classifyResponse(r, { text: '450 come back later' }).rule).toBe('class');
    expect(classifyResponse(r, { text: '550 come back later' }).rule).toBe('codes');
    expect(classifyResponse(r, { text: 'come back later' }).rule).toBe('(none)');
  });

  it('tries an operator\'s extra rules first, then the shipped ones', () => {
    const extra = loadBounceRules(SHIPPED_BOUNCE_RULES_FILE, [{ name: 'acme-says-gone', text: 'acme: no such person', category: 'userunknown' }]);
    expect(classifyResponse(extra, reply('550 ACME: no such person here'))).toMatchObject({ category: 'userunknown', hard: true, rule: 'acme-says-gone' });
    expect(classifyResponse(extra, reply('552 5.2.2 Mailbox full')).rule).toBe('mailbox-full');

    const dir = tempDir();
    const file = path.join(dir, 'mine.yaml');
    fs.writeFileSync(file, 'include_shipped: true\nrules:\n  - name: gateway-quirk\n    code: 550\n    text: "^550 Go away"\n    category: blocked\n');
    const own = loadBounceRules(file);
    expect(own.files).toEqual([file, SHIPPED_BOUNCE_RULES_FILE]);
    expect(classifyResponse(own, reply('550 Go away')).rule).toBe('gateway-quirk');
    expect(classifyResponse(own, reply('550 5.1.1 User unknown')).rule).toBe('status-bad-mailbox');
    // without include_shipped the file stands alone
    fs.writeFileSync(file, 'rules:\n  - name: only\n    class: 5\n    category: rejected\n');
    expect(classifyResponse(loadBounceRules(file), reply('552 5.2.2 Mailbox full')).rule).toBe('only');
    expect(classifyResponse(loadBounceRules(SHIPPED_BOUNCE_RULES_FILE, file), reply('552 5.2.2 Mailbox full')).rule).toBe('only');
  });

  it('says which file cannot be read, and names problems in an extra file', () => {
    expect(() => loadBounceRules('/nonexistent/rules.yaml')).toThrow(/bounce-rules: cannot read \/nonexistent\/rules\.yaml/);
    const dir = tempDir();
    const file = path.join(dir, 'bad.yaml');
    fs.writeFileSync(file, 'rules:\n  - name: x\n    category: nope\n');
    expect(() => loadBounceRules(SHIPPED_BOUNCE_RULES_FILE, file)).toThrow(/bounce-rules \(.*bad\.yaml\): rules\[0\]\.category: "nope" is not a category/);
  });

  it('is named by bounce.rules_file in the node config, relative to the config file, the shipped file by default', () => {
    expect(buildConfig({}).bounce.rulesFile).toBe(SHIPPED_BOUNCE_RULES_FILE);
    const dir = tempDir();
    fs.writeFileSync(path.join(dir, 'rules.yaml'), 'rules: []\n');
    expect(buildConfig({ bounce: { rules_file: 'rules.yaml' } }, path.join(dir, 'tern.yaml')).bounce.rulesFile).toBe(path.join(dir, 'rules.yaml'));
    expect(() => buildConfig({ bounce: { rules_file: '/nonexistent.yaml' } })).toThrow(/bounce\.rules_file: \/nonexistent\.yaml does not exist/);
    expect(() => buildConfig({ bounce: { rules: [] } })).toThrow(/bounce\.rules: unknown key/);
  });
});
