/**
 * The inbound listener over real sockets: a node sends real VERP mail to a sink, then reports about that
 * mail come back to its inbound listener, as a remote MTA or feedback loop would send them.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import nodemailer from 'nodemailer';
import { startSink, type Sink } from '../bench/sink.js';
import { buildArf, buildAutoReply, buildDsn, ReportClient, sendReport } from '../bench/reports.js';
import { deeplyNested } from './fixtures/bounces/hostile.js';
import { startTestNode } from './support/node.js';
import type { TernNode } from '../src/node.js';
import type { TernEvent } from '../src/core/store.js';

let sink: Sink;
let node: TernNode;
const BOUNCE_DOMAIN = 'bounces.node.tern.test';
const FBL_DOMAIN = 'fbl.node.tern.test';

beforeAll(async () => {
  sink = await startSink({ keep: true });
  node = await startTestNode({
    routes: [{ domain: '*.tern.test', host: '127.0.0.1', port: sink.port }],
    listeners: { inbound: { max_message_size: '200KB', max_connections_per_ip: 3 } },
    bounce: { fbl_domains: [FBL_DOMAIN], soft_bounce_limit: 3, soft_bounce_window: '1d' },
  });
});

afterAll(async () => {
  await node?.stop();
  await sink?.close();
});

const transport = () => nodemailer.createTransport({ host: '127.0.0.1', port: node.ports.submission, auth: { user: 'tenant1', pass: 'secret-1' }, ignoreTLS: true });

/** Sends one message through the node and returns its queue id and each recipient's VERP envelope sender. */
async function sendThroughNode(to: string[]): Promise<{ qid: string; verp: Map<string, string> }> {
  const info = await transport().sendMail({ from: 'news@sender.tern.test', to, subject: 'Our news', text: 'Hello.' });
  const qid = /queued as (\S+)/.exec(info.response)![1]!;
  const copies = () => sink.messages.filter((m) => node.bounces.verp.decode(m.from)?.msgId === qid);
  await sink.waitFor(() => copies().length === to.length, 15_000);
  // the delivered events commit just after the sink's 250
  for (const rcpt of to) await waitForEvent(0, (e) => e.type === 'delivered' && e.queue_id === qid && e.rcpt === rcpt);
  return { qid, verp: new Map(copies().map((m) => [m.to[0]!, m.from])) };
}

const eventsAfter = (seq: number, pred: (e: TernEvent) => boolean) => node.store.events(seq, 100_000).filter(pred);
const lastSeq = () => node.store.events(0, 1_000_000).at(-1)?.seq ?? 0;

async function waitForEvent(after: number, pred: (e: TernEvent) => boolean, timeoutMs = 15_000): Promise<TernEvent[]> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const found = eventsAfter(after, pred);
    if (found.length) return found;
    if (Date.now() > until) throw new Error('event did not appear in time');
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('reports for mail the node sent', () => {
  it('turns a user-unknown DSN into a hard bounce of that message and recipient, and suppresses the address', async () => {
    const rcpt = 'gone@sink.tern.test';
    const { qid, verp } = await sendThroughNode([rcpt]);
    const before = lastSeq();
    const dsn = buildDsn({ verp: verp.get(rcpt)!, recipients: [{ address: rcpt, status: '5.1.1', diagnostic: '550 5.1.1 <gone@sink.tern.test>: Recipient address rejected: User unknown', remoteMta: 'mx.sink.tern.test' }] });
    const r = await sendReport(node.ports.inbound, '', [verp.get(rcpt)!], dsn);
    expect(r.rcpt[0]).toMatch(/^250/);
    expect(r.data).toMatch(/^250 /);
    // answered after the commit: the events are there at once
    const bounced = eventsAfter(before, (e) => e.type === 'bounced');
    expect(bounced).toHaveLength(1);
    expect(bounced[0]).toMatchObject({ queue_id: qid, tenant: 'default', campaign: '-', rcpt, category: 'userunknown', hard: true, status: '5.1.1', action: 'failed', remote_mta: 'mx.sink.tern.test', reported_by: '127.0.0.1' });
    expect(String(bounced[0]!.diagnostic)).toMatch(/User unknown/);
    expect(node.bounces.suppressions.get('default', rcpt)).toMatchObject({ reason: 'hard_bounce', detail: 'userunknown', queue_id: qid, source: { event: 'bounced', seq: bounced[0]!.seq } });
    expect(eventsAfter(before, (e) => e.type === 'suppression_added')[0]).toMatchObject({ rcpt, reason: 'hard_bounce', source_event: 'bounced' });
    // the recipient's record keeps the report in its history
    const state = node.spool.recipientState(qid, 0)!;
    expect(state.status).toBe('delivered');
    expect(state.history!.at(-1)).toMatchObject({ type: 'bounced', mx: 'mx.sink.tern.test' });
    expect(state.last).toMatch(/User unknown/);

    // the next message to that address drops it at acceptance
    const next = await transport().sendMail({ from: 'news@sender.tern.test', to: [rcpt], text: 'again' });
    const nextId = /queued as (\S+)/.exec(next.response)![1]!;
    const suppressed = await waitForEvent(before, (e) => e.type === 'suppressed' && e.queue_id === nextId);
    expect(suppressed[0]).toMatchObject({ rcpt, reason: 'hard_bounce', detail: 'userunknown' });
  });

  it('counts soft bounces and suppresses the address at soft_bounce_limit (3) within the window', async () => {
    const rcpt = 'full@sink.tern.test';
    for (let n = 1; n <= 3; n++) {
      const { qid, verp } = await sendThroughNode([rcpt]);
      const before = lastSeq();
      const dsn = buildDsn({ verp: verp.get(rcpt)!, recipients: [{ address: rcpt, status: '5.2.2', diagnostic: '552 5.2.2 Mailbox full' }] });
      expect((await sendReport(node.ports.inbound, '', [verp.get(rcpt)!], dsn)).data).toMatch(/^250/);
      expect(eventsAfter(before, (e) => e.type === 'bounced')[0]).toMatchObject({ queue_id: qid, rcpt, category: 'mailboxfull', hard: false });
      if (n < 3) expect(node.bounces.suppressions.get('default', rcpt)).toBeUndefined();
    }
    expect(node.bounces.suppressions.get('default', rcpt)).toMatchObject({ reason: 'soft_bounces', detail: 'mailboxfull', source: { event: 'bounced' } });
  });

  it('records a delayed DSN without counting it', async () => {
    const rcpt = 'slow@sink.tern.test';
    const { qid, verp } = await sendThroughNode([rcpt]);
    const before = lastSeq();
    const dsn = buildDsn({ verp: verp.get(rcpt)!, recipients: [{ address: rcpt, action: 'delayed', status: '4.4.1', diagnostic: '421 4.4.1 Connection timed out' }] });
    expect((await sendReport(node.ports.inbound, '', [verp.get(rcpt)!], dsn)).data).toMatch(/^250/);
    expect(eventsAfter(before, () => true).map((e) => e.type)).toEqual(['delayed']);
    expect(eventsAfter(before, (e) => e.type === 'delayed')[0]).toMatchObject({ queue_id: qid, rcpt, status: '4.4.1' });
    expect(node.bounces.suppressions.get('default', rcpt)).toBeUndefined();
  });

  it('matches each recipient of a DSN to the message by address; one the message never had is unattributed', async () => {
    const [a, b] = ['multi-a@sink.tern.test', 'multi-b@sink.tern.test'];
    const { qid, verp } = await sendThroughNode([a, b]);
    const before = lastSeq();
    // sent back to a's VERP address, but reporting on both recipients and on a stranger
    const dsn = buildDsn({
      verp: verp.get(a)!,
      recipients: [
        { address: 'MULTI-B@sink.tern.test', status: '5.1.1', diagnostic: '550 5.1.1 No such user' },
        { address: a, status: '5.2.2', diagnostic: '552 5.2.2 Mailbox full' },
        { address: 'stranger@elsewhere.tern.test', status: '5.1.1', diagnostic: '550 5.1.1 No such user' },
      ],
    });
    expect((await sendReport(node.ports.inbound, '', [verp.get(a)!], dsn)).data).toMatch(/^250/);
    const bounced = eventsAfter(before, (e) => e.type === 'bounced');
    expect(bounced.map((e) => [e.queue_id, e.rcpt, e.category])).toEqual([
      [qid, b, 'userunknown'],
      [qid, a, 'mailboxfull'],
    ]);
    const leftOver = eventsAfter(before, (e) => e.type === 'report_unattributed');
    expect(leftOver).toHaveLength(1);
    expect(leftOver[0]).toMatchObject({ queue_id: qid, kind: 'dsn', recipients: [{ address: 'stranger@elsewhere.tern.test' }] });
    expect(leftOver[0]!.tenant).toBeUndefined();
    expect(node.bounces.suppressions.get('default', b)).toMatchObject({ reason: 'hard_bounce' });
    expect(node.bounces.suppressions.get('default', a)).toBeUndefined();
  });

  it('turns an ARF report sent to an FBL address into a complaint and a suppression', async () => {
    const rcpt = 'annoyed@sink.tern.test';
    const { qid, verp } = await sendThroughNode([rcpt]);
    const before = lastSeq();
    const arf = buildArf({ verp: verp.get(rcpt)!, rcpt, to: `fbl@${FBL_DOMAIN}`, sourceIp: '192.0.2.77' });
    const r = await sendReport(node.ports.inbound, 'fbl@provider.report.test', [`fbl@${FBL_DOMAIN}`], arf);
    expect(r.data).toMatch(/^250/);
    const complained = eventsAfter(before, (e) => e.type === 'complained');
    expect(complained).toHaveLength(1);
    expect(complained[0]).toMatchObject({ queue_id: qid, tenant: 'default', rcpt, feedback_type: 'abuse', user_agent: 'ReportTest-FBL/1.0', source_ip: '192.0.2.77', original_rcpt: rcpt, reported_by: '127.0.0.1' });
    expect(complained[0]!.arrival_date).toBeTruthy();
    expect(node.bounces.suppressions.get('default', rcpt)).toMatchObject({ reason: 'complaint', detail: 'abuse', queue_id: qid, source: { event: 'complained' } });
  });

  it('records a not-spam ARF report without suppressing', async () => {
    const rcpt = 'happy@sink.tern.test';
    const { qid, verp } = await sendThroughNode([rcpt]);
    const before = lastSeq();
    const arf = buildArf({ verp: verp.get(rcpt)!, rcpt, to: `fbl@${FBL_DOMAIN}`, feedbackType: 'not-spam' });
    expect((await sendReport(node.ports.inbound, 'fbl@provider.report.test', [`fbl@${FBL_DOMAIN}`], arf)).data).toMatch(/^250/);
    expect(eventsAfter(before, (e) => e.type === 'complained')[0]).toMatchObject({ queue_id: qid, feedback_type: 'not-spam' });
    expect(node.bounces.suppressions.get('default', rcpt)).toBeUndefined();
  });

  it('records an auto-reply as such, never as a bounce', async () => {
    const rcpt = 'away@sink.tern.test';
    const { qid, verp } = await sendThroughNode([rcpt]);
    const before = lastSeq();
    const reply = buildAutoReply({ verp: verp.get(rcpt)!, from: rcpt });
    expect((await sendReport(node.ports.inbound, '', [verp.get(rcpt)!], reply)).data).toMatch(/^250/);
    expect(eventsAfter(before, () => true).map((e) => e.type)).toEqual(['autoreply']);
    expect(eventsAfter(before, (e) => e.type === 'autoreply')[0]).toMatchObject({ queue_id: qid, rcpt, from: rcpt });
    expect(node.bounces.suppressions.get('default', rcpt)).toBeUndefined();
  });

  it('answers a hostile report (200 levels of nesting) with 250 and records it as unknown', async () => {
    const before = lastSeq();
    const r = await sendReport(node.ports.inbound, '', [`postmaster@${BOUNCE_DOMAIN}`], deeplyNested(200));
    expect(r.data).toMatch(/^250/);
    const unknown = eventsAfter(before, (e) => e.type === 'report_unknown');
    expect(unknown).toHaveLength(1);
    expect(unknown[0]).toMatchObject({ reported_by: '127.0.0.1', rcpt_to: [`postmaster@${BOUNCE_DOMAIN}`] });
    expect(unknown[0]!.tenant).toBeUndefined();
  });
});

describe('what the listener refuses', () => {
  it('refuses a forged or altered VERP address at RCPT, and counts it', async () => {
    const rcpt = 'victim@sink.tern.test';
    const { verp } = await sendThroughNode([rcpt]);
    const real = verp.get(rcpt)!;
    const at = real.indexOf('@');
    // one character of the token changed: the MAC no longer matches
    const altered = real.slice(0, at - 1) + (real[at - 1] === 'a' ? 'b' : 'a') + real.slice(at);
    const before = lastSeq();
    const r = await sendReport(node.ports.inbound, '', [altered, `b-${'a'.repeat(40)}@${BOUNCE_DOMAIN}`], buildDsn({ verp: altered, recipients: [{ address: rcpt, status: '5.1.1' }] }));
    expect(r.rcpt[0]).toMatch(/^550 5\.1\.1 /);
    expect(r.rcpt[1]).toMatch(/^550 5\.1\.1 /);
    expect(r.data).toBeNull();
    expect(eventsAfter(before, () => true)).toEqual([]);
    expect(node.bounces.suppressions.get('default', rcpt)).toBeUndefined();
    const metrics = await (await fetch(`http://127.0.0.1:${node.ports.control}/metrics`)).text();
    expect(metrics).toMatch(/tern_verp_rejected_total\{where="rcpt",reason="forged"\} [1-9]/);
  });

  it('ignores a forged token inside a report sent to postmaster: the report is unattributed', async () => {
    const rcpt = 'victim2@sink.tern.test';
    const { verp } = await sendThroughNode([rcpt]);
    const real = verp.get(rcpt)!;
    const at = real.indexOf('@');
    const altered = real.slice(0, at - 1) + (real[at - 1] === 'a' ? 'b' : 'a') + real.slice(at);
    const before = lastSeq();
    const r = await sendReport(node.ports.inbound, '', [`postmaster@${BOUNCE_DOMAIN}`], buildDsn({ verp: altered, recipients: [{ address: rcpt, status: '5.1.1' }] }));
    expect(r.data).toMatch(/^250/);
    expect(eventsAfter(before, () => true).map((e) => e.type)).toEqual(['report_unattributed']);
    expect(node.bounces.suppressions.get('default', rcpt)).toBeUndefined();
  });

  it('is never a relay: any other domain is refused at RCPT with 550 5.7.1', async () => {
    const c = await ReportClient.connect(node.ports.inbound);
    try {
      expect(await c.command('MAIL FROM:<someone@outside.example>')).toMatch(/^250/);
      for (const to of ['victim@sink.tern.test', 'user@example.com', `user@sub.${BOUNCE_DOMAIN}`, `postmaster@${BOUNCE_DOMAIN}.evil.example`])
        expect(await c.command(`RCPT TO:<${to}>`)).toMatch(/^550 5\.7\.1 /);
      // a valid token does not make another domain ours
      const { verp } = await sendThroughNode(['relaytest@sink.tern.test']);
      const token = verp.get('relaytest@sink.tern.test')!.split('@')[0];
      expect(await c.command(`RCPT TO:<${token}@sink.tern.test>`)).toMatch(/^550 5\.7\.1 /);
      expect(await c.command('DATA')).toMatch(/^503/);
    } finally {
      await c.close();
    }
    const metrics = await (await fetch(`http://127.0.0.1:${node.ports.control}/metrics`)).text();
    expect(metrics).toMatch(/tern_inbound_refusals_total\{reason="relay_denied"\} [1-9]/);
  });

  it('takes postmaster and abuse at a bounce domain (and <postmaster>), anything at an FBL domain, nothing else there', async () => {
    const c = await ReportClient.connect(node.ports.inbound);
    try {
      expect(await c.command('MAIL FROM:<>')).toMatch(/^250/);
      expect(await c.command(`RCPT TO:<Postmaster@${BOUNCE_DOMAIN}>`)).toMatch(/^250/);
      expect(await c.command(`RCPT TO:<abuse@${BOUNCE_DOMAIN}>`)).toMatch(/^250/);
      expect(await c.command('RCPT TO:<postmaster>')).toMatch(/^250/);
      expect(await c.command(`RCPT TO:<anything-at-all@${FBL_DOMAIN}>`)).toMatch(/^250/);
      expect(await c.command(`RCPT TO:<info@${BOUNCE_DOMAIN}>`)).toMatch(/^550 5\.1\.1 /);
      expect(await c.command('DATA')).toMatch(/^354/);
      c.write('From: someone@outside.example\r\nSubject: hello postmaster\r\n\r\nHi.\r\n.\r\n');
      expect(await c.reply()).toMatch(/^250/);
    } finally {
      await c.close();
    }
  });

  it('offers STARTTLS, SIZE and enhanced status codes, and no AUTH', async () => {
    const c = await ReportClient.connect(node.ports.inbound);
    try {
      expect(c.ehlo).toMatch(/STARTTLS/);
      expect(c.ehlo).toMatch(/SIZE 204800/);
      expect(c.ehlo).toMatch(/ENHANCEDSTATUSCODES/);
      expect(c.ehlo).not.toMatch(/AUTH/);
      expect(await c.command('AUTH PLAIN AHRlbmFudDEAc2VjcmV0LTE=')).toMatch(/^5/);
    } finally {
      await c.close();
    }
  });

  it('refuses a report over max_message_size with 552 and stores nothing', async () => {
    const before = lastSeq();
    const big = buildAutoReply({ verp: `postmaster@${BOUNCE_DOMAIN}`, from: 'x@outside.example' }) + ('y'.repeat(76) + '\r\n').repeat(4000);
    const r = await sendReport(node.ports.inbound, '', [`postmaster@${BOUNCE_DOMAIN}`], big);
    expect(r.data).toMatch(/^552 /);
    // a SIZE declared too big is refused at MAIL FROM
    const c = await ReportClient.connect(node.ports.inbound);
    expect(await c.command('MAIL FROM:<> SIZE=999999999')).toMatch(/^552/);
    await c.close();
    expect(eventsAfter(before, () => true)).toEqual([]);
  });

  it('refuses a fourth concurrent connection from one address with 421', async () => {
    const clients = await Promise.all([1, 2, 3].map(() => ReportClient.connect(node.ports.inbound, { localAddress: '127.0.0.5' })));
    await expect(ReportClient.connect(node.ports.inbound, { localAddress: '127.0.0.5' })).rejects.toThrow(/421 4\.7\.0/);
    // another address is not affected
    const other = await ReportClient.connect(node.ports.inbound, { localAddress: '127.0.0.6' });
    await Promise.all([...clients, other].map((c) => c.close()));
  });
});
