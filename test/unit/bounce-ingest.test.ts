/**
 * Report ingestion without sockets: which recipient a report is about, what it writes, and which addresses
 * the inbound listener takes.
 */
import { afterEach, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { pino } from 'pino';
import { Store } from '../../src/core/store.js';
import { loadBounceRules, SHIPPED_BOUNCE_RULES_FILE } from '../../src/bounce/classify.js';
import { ingestReport, type SpoolReader } from '../../src/bounce/ingest.js';
import { recipientVerdict } from '../../src/bounce/inbound.js';
import { TrackingTokens } from '../../src/tracking/tokens.js';
import { parseReport } from '../../src/bounce/parse.js';
import { SuppressionList } from '../../src/bounce/suppression.js';
import { VerpCodec } from '../../src/bounce/verp.js';
import type { MessageRecord, RecipientRecord } from '../../src/mta/spool.js';
import { buildArf, buildAutoReply, buildDsn } from '../../bench/reports.js';
import { tempDir } from '../support/node.js';

const codec = new VerpCodec([Buffer.from('unit-test-verp-key-0123456789abcdef')]);
const rules = loadBounceRules(SHIPPED_BOUNCE_RULES_FILE);
const DOMAIN = 'bounces.unit.test';
const MSG = '0mi3k5q2a0001Qx-z';

/** An in-memory spool holding one message with these recipients. */
function fakeSpool(recipients: string[], msgId = MSG): SpoolReader & { notes: Array<{ i: number; type: string }> } {
  const message: MessageRecord = { tenant: 't1', campaign: 'c1', sender: 'news@sender.test', size: 100, createdAt: 0, messageId: '<m@x>', recipients: recipients.length, pending: 0 };
  const rec = (to: string): RecipientRecord => ({ to, status: 'delivered', attempts: 1, nextAt: null, last: '250 ok', queue: 'q', updatedAt: 0 });
  const notes: Array<{ i: number; type: string }> = [];
  return {
    notes,
    message: (id) => (id === msgId ? message : undefined),
    recipientState: (id, i) => (id === msgId && recipients[i] ? rec(recipients[i]!) : undefined),
    recipientStates: (id) => (id === msgId ? recipients.map((to, i) => ({ ...rec(to), i })) : []),
    noteReportIn: (id, i, step) => {
      notes.push({ i, type: step.type });
      return id === msgId;
    },
  };
}

const stores: Store[] = [];
afterEach(async () => {
  for (const s of stores.splice(0)) await s.close();
});

function setup(recipients: string[]) {
  const store = new Store(tempDir());
  stores.push(store);
  const suppressions = new SuppressionList(store, { softLimit: 2, softWindowMs: 86_400_000 });
  const spool = fakeSpool(recipients);
  const rejected: string[] = [];
  const deps = {
    parser: { parse: async (raw: Uint8Array) => parseReport(raw) },
    rules,
    verp: codec,
    suppressions,
    spool,
    store,
    log: pino({ level: 'silent' }),
    onRejectedToken: (reason: string) => rejected.push(reason),
  };
  const ingest = (message: string, rcptTo: string[], mailFrom = '') => ingestReport(Buffer.from(message), { rcptTo, mailFrom, client: '192.0.2.1' }, deps);
  return { store, suppressions, spool, ingest, rejected };
}

describe('ingestReport', () => {
  it('attributes a DSN to the VERP recipient and writes the bounce, the suppression and the history together', async () => {
    const { store, suppressions, spool, ingest } = setup(['a@x.test', 'b@x.test']);
    const verp = codec.encode(MSG, 1, DOMAIN);
    const out = await ingest(buildDsn({ verp, recipients: [{ address: 'b@x.test', status: '5.1.1', diagnostic: '550 5.1.1 User unknown' }] }), [verp]);
    expect(out).toMatchObject({ kind: 'dsn', result: 'attributed', attribution: { message_id: MSG, recipient: 1 }, suppressed: ['b@x.test'] });
    const events = store.events();
    expect(events.map((e) => e.type)).toEqual(['bounced', 'suppression_added']);
    expect(events[0]).toMatchObject({ queue_id: MSG, tenant: 't1', campaign: 'c1', rcpt: 'b@x.test', category: 'userunknown', hard: true, reported_by: '192.0.2.1', format: 'rfc3464' });
    expect(events[1]).toMatchObject({ source_event: 'bounced', source_seq: events[0]!.seq });
    expect(suppressions.get('t1', 'b@x.test')).toMatchObject({ reason: 'hard_bounce', queue_id: MSG });
    expect(spool.notes).toEqual([{ i: 1, type: 'bounced' }]);
  });

  it('takes the only recipient of a DSN to be the VERP recipient when forwarding changed its address', async () => {
    const { store, ingest } = setup(['a@x.test']);
    const verp = codec.encode(MSG, 0, DOMAIN);
    await ingest(buildDsn({ verp, recipients: [{ address: 'a.forwarded@internal.test', status: '5.1.1' }] }), [verp]);
    expect(store.events().find((e) => e.type === 'bounced')).toMatchObject({ rcpt: 'a@x.test' });
  });

  it('matches by Original-Recipient before Final-Recipient', async () => {
    const { store, ingest } = setup(['a@x.test', 'b@x.test']);
    const verp = codec.encode(MSG, 0, DOMAIN);
    await ingest(buildDsn({ verp, recipients: [{ address: 'mailbox7@internal.test', originalRecipient: 'B@X.test', status: '5.1.1' }, { address: 'a@x.test', status: '5.2.2' }] }), [verp]);
    expect(store.events().filter((e) => e.type === 'bounced').map((e) => [e.rcpt, e.category])).toEqual([
      ['b@x.test', 'userunknown'],
      ['a@x.test', 'mailboxfull'],
    ]);
  });

  it('gives one result per recipient and report: a second DSN line for the same recipient is left out', async () => {
    const { store, ingest } = setup(['a@x.test']);
    const verp = codec.encode(MSG, 0, DOMAIN);
    await ingest(buildDsn({ verp, recipients: [{ address: 'a@x.test', status: '5.1.1' }, { address: 'A@x.test', status: '5.2.2' }] }), [verp]);
    expect(store.events().filter((e) => e.type === 'bounced')).toHaveLength(1);
  });

  it('finds the VERP address in the report when it came to postmaster (Return-Path of the returned message)', async () => {
    const { store, ingest } = setup(['a@x.test']);
    const verp = codec.encode(MSG, 0, DOMAIN);
    const out = await ingest(buildDsn({ verp, recipients: [{ address: 'a@x.test', status: '5.1.1' }] }).replace(`To: ${verp}`, `To: postmaster@${DOMAIN}`), [`postmaster@${DOMAIN}`]);
    expect(out.result).toBe('attributed');
    expect(store.events()[0]).toMatchObject({ type: 'bounced', rcpt: 'a@x.test' });
  });

  it('records a report about a message no longer in the spool as unattributed, without a tenant', async () => {
    const { store, suppressions, ingest } = setup(['a@x.test']);
    const verp = codec.encode('0mi3k5q2a0009Zz-z', 0, DOMAIN); // signed by us, but not (any more) in the spool
    const out = await ingest(buildDsn({ verp, recipients: [{ address: 'a@x.test', status: '5.1.1' }] }), [verp]);
    expect(out.result).toBe('unattributed');
    const [e] = store.events();
    expect(e).toMatchObject({ type: 'report_unattributed', kind: 'dsn', queue_id: '0mi3k5q2a0009Zz-z', recipients: [{ address: 'a@x.test', category: 'userunknown' }] });
    expect(String(e!.reason)).toMatch(/no longer in the spool/);
    expect(e!.tenant).toBeUndefined();
    expect(suppressions.get('t1', 'a@x.test')).toBeUndefined();
  });

  it('ignores a forged token in a report, says so, and attributes nothing', async () => {
    const { store, ingest, rejected } = setup(['a@x.test']);
    const real = codec.encode(MSG, 0, DOMAIN);
    const forged = new VerpCodec([Buffer.from('someone-elses-key-0123456789abcdef')]).encode(MSG, 0, DOMAIN);
    expect(forged).not.toBe(real);
    const out = await ingest(buildArf({ verp: forged, rcpt: 'a@x.test', to: `abuse@${DOMAIN}` }), [`abuse@${DOMAIN}`]);
    expect(out.result).toBe('unattributed');
    expect(rejected).toContain('forged');
    expect(store.events().map((e) => e.type)).toEqual(['report_unattributed']);
  });

  it('writes report_unknown for a message that is no report', async () => {
    const { store, ingest } = setup(['a@x.test']);
    const out = await ingest('From: someone@outside.test\r\nSubject: hello\r\n\r\nCan I unsubscribe?\r\n', [`postmaster@${DOMAIN}`], 'someone@outside.test');
    expect(out).toMatchObject({ kind: 'unknown', result: 'unknown' });
    expect(store.events()[0]).toMatchObject({ type: 'report_unknown', mail_from: 'someone@outside.test', rcpt_to: [`postmaster@${DOMAIN}`] });
  });

  it('suppresses on a complaint but not on an auto-reply', async () => {
    const { store, suppressions, ingest } = setup(['a@x.test', 'b@x.test']);
    await ingest(buildArf({ verp: codec.encode(MSG, 0, DOMAIN), rcpt: 'redacted@x.test', to: `fbl@${DOMAIN}` }), [`fbl@${DOMAIN}`]);
    await ingest(buildAutoReply({ verp: codec.encode(MSG, 1, DOMAIN), from: 'b@x.test' }), [codec.encode(MSG, 1, DOMAIN)]);
    expect(store.events().map((e) => [e.type, e.rcpt])).toEqual([
      ['complained', 'a@x.test'],
      ['suppression_added', 'a@x.test'],
      ['autoreply', 'b@x.test'],
    ]);
    expect(store.events()[0]).toMatchObject({ original_rcpt: 'redacted@x.test', feedback_type: 'abuse' });
    expect(suppressions.get('t1', 'a@x.test')).toMatchObject({ reason: 'complaint', detail: 'abuse' });
    expect(suppressions.get('t1', 'b@x.test')).toBeUndefined();
  });

  it('does not count a delayed DSN or a positive one', async () => {
    const { store, ingest } = setup(['a@x.test']);
    const verp = codec.encode(MSG, 0, DOMAIN);
    await ingest(buildDsn({ verp, recipients: [{ address: 'a@x.test', action: 'delayed', status: '4.2.2' }] }), [verp]);
    await ingest(buildDsn({ verp, recipients: [{ address: 'a@x.test', action: 'relayed', status: '2.0.0' }] }), [verp]);
    await ingest(buildDsn({ verp, recipients: [{ address: 'a@x.test', action: 'delayed', status: '4.2.2' }] }), [verp]);
    expect(store.events().map((e) => e.type)).toEqual(['delayed', 'dsn_delivered', 'delayed']);
  });
});

describe('recipientVerdict', () => {
  const domains = { bounce: new Set([DOMAIN]), fbl: new Set(['fbl.unit.test']) };
  const verdict = (a: string) => recipientVerdict(a, domains, codec);

  it('takes verifying VERP addresses, role accounts and FBL addresses', () => {
    expect(verdict(codec.encode(MSG, 3, DOMAIN))).toEqual({ ok: true, as: 'verp' });
    expect(verdict(codec.encode(MSG, 3, DOMAIN).toUpperCase())).toEqual({ ok: true, as: 'verp' });
    expect(verdict(`POSTMASTER@${DOMAIN}`)).toEqual({ ok: true, as: 'postmaster' });
    expect(verdict(`abuse@${DOMAIN}.`)).toEqual({ ok: true, as: 'postmaster' });
    expect(verdict('postmaster')).toEqual({ ok: true, as: 'postmaster' });
    expect(verdict('anyone@fbl.unit.test')).toEqual({ ok: true, as: 'fbl' });
  });

  it('refuses other local parts of a bounce domain, and bad tokens even at a domain that is also an FBL domain', () => {
    expect(verdict(`info@${DOMAIN}`)).toMatchObject({ ok: false, code: 550, status: '5.1.1', reason: 'unknown_recipient' });
    const both = { bounce: new Set([DOMAIN]), fbl: new Set([DOMAIN]) };
    const forged = new VerpCodec([Buffer.from('someone-elses-key-0123456789abcdef')]).encode(MSG, 0, DOMAIN);
    expect(recipientVerdict(forged, both, codec)).toMatchObject({ ok: false, status: '5.1.1', reason: 'bad_verp', verp: 'forged' });
    expect(recipientVerdict(`info@${DOMAIN}`, both, codec)).toEqual({ ok: true, as: 'fbl' });
  });

  it("takes List-Unsubscribe's u-<token> address only when the tracking keys verify it", () => {
    const tokens = new TrackingTokens([Buffer.alloc(32, 5)]);
    const good = tokens.mailto({ msgId: MSG, rcptIndex: 2, tenant: 'acme' }, DOMAIN)!;
    expect(recipientVerdict(good, domains, codec, tokens)).toEqual({ ok: true, as: 'unsubscribe' });
    expect(recipientVerdict(good.toUpperCase(), domains, codec, tokens)).toEqual({ ok: true, as: 'unsubscribe' });
    const forged = new TrackingTokens([Buffer.alloc(32, 6)]).mailto({ msgId: MSG, rcptIndex: 2, tenant: 'acme' }, DOMAIN)!;
    expect(recipientVerdict(forged, domains, codec, tokens)).toMatchObject({ ok: false, code: 550, status: '5.1.1', reason: 'bad_unsubscribe' });
    // without tracking: no such recipient
    expect(recipientVerdict(good, domains, codec)).toMatchObject({ ok: false, code: 550, status: '5.1.1', reason: 'unknown_recipient' });
    expect(recipientVerdict(good.replace(DOMAIN, 'elsewhere.test'), domains, codec, tokens)).toMatchObject({ ok: false, reason: 'relay_denied' });
  });

  it('refuses any address outside its domains as a relay attempt (property)', () => {
    fc.assert(
      fc.property(fc.emailAddress(), (address) => {
        const domain = address.slice(address.lastIndexOf('@') + 1).toLowerCase();
        fc.pre(domain !== DOMAIN && domain !== 'fbl.unit.test');
        const v = verdict(address);
        return !v.ok && v.status === '5.7.1' && v.reason === 'relay_denied';
      }),
    );
  });

  it('refuses every altered token (property)', () => {
    const good = codec.encode(MSG, 7, DOMAIN);
    const at = good.indexOf('@');
    fc.assert(
      fc.property(fc.integer({ min: 2, max: at - 1 }), fc.constantFrom(...'abcdefghijklmnopqrstuvwxyz234567'), (pos, ch) => {
        fc.pre(good[pos] !== ch);
        const altered = good.slice(0, pos) + ch + good.slice(pos + 1);
        const v = verdict(altered);
        return !v.ok && v.reason === 'bad_verp';
      }),
    );
  });
});
