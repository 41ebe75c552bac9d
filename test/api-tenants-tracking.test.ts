/**
 * Where tracking, the inbound listener, the control API and webhooks meet, over real sockets: List-Unsubscribe's
 * mailto address honoured by the inbound listener, tenants made through the control API getting their tracking
 * settings, and a configured webhook endpoint for such a tenant (which did not exist when the node started).
 */
import { Writable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import nodemailer from 'nodemailer';
import { pino } from 'pino';
import { startSink, type Sink } from '../bench/sink.js';
import { sendReport } from '../bench/reports.js';
import { buildConfig } from '../src/core/config.js';
import { TernNode } from '../src/node.js';
import { TrackingTokens } from '../src/tracking/tokens.js';
import type { TernEvent } from '../src/core/store.js';
import { controlApi } from './support/control.js';
import { freePort, startTestNode, tempDir, testConfigDoc, eventsWhere, waitForEvents as waitForEventsIn } from './support/node.js';
import { startReceiver, type Receiver } from './support/webhook-receiver.js';

const TOKEN = 'glue-test-operator-token-0123';
const SECRET = 'whsec-api-tenant-0123456789';
const L = 'https://landing.example';

let sink: Sink;
let node: TernNode;
let receiver: Receiver;
let base: string;
let call: ReturnType<typeof controlApi>;
const logLines: Array<Record<string, unknown>> = [];

const op = (method: string, path: string, body?: unknown) => call(method, path, { token: TOKEN, body });
const events = (pred: (e: TernEvent) => boolean) => eventsWhere(node.store, pred);
const waitForEvents = (pred: (e: TernEvent) => boolean, count?: number) => waitForEventsIn(node.store, pred, count);

async function delivered(messageId: string, count = 1) {
  await sink.waitFor(() => (sink.idCounts.get(messageId) ?? 0) >= count, 15_000);
  return sink.messages.filter((m) => m.id === messageId);
}

const headersOf = (raw: Buffer) => raw.toString('latin1').split('\r\n\r\n')[0]!.replace(/\r\n[ \t]+/g, ' ');
const mailtoOf = (raw: Buffer) => /<mailto:([^?>]+)/.exec(headersOf(raw))?.[1];

/** Sends one HTML message with a link; resolves with the queue id. */
async function send(auth: { user: string; pass: string }, to: string | string[], messageId: string, headers: Record<string, string> = {}): Promise<string> {
  const info = await nodemailer
    .createTransport({ host: '127.0.0.1', port: node.ports.submission, auth, ignoreTLS: true })
    .sendMail({ from: 'News <news@sender.tern.test>', to, subject: 'News', html: `<html><body><p><a href="${L}/offer">offer</a></p></body></html>`, messageId, headers });
  return /queued as (\S+)/.exec(info.response)![1]!;
}

/** A tenant made through the control API, its owner key and an SMTP credential made with that key. */
async function apiTenant(id: string, fields: Record<string, unknown>): Promise<{ user: string; pass: string }> {
  const t = await op('POST', '/api/v1/tenants', { id, pool: 'default', allow_unverified_domains: true, ...fields });
  expect(t.status).toBe(201);
  const k = await op('POST', `/api/v1/tenants/${id}/api-keys`, { name: 'owner', role: 'owner' });
  expect(k.status).toBe(201);
  const c = await call('POST', '/api/v1/smtp-credentials', { token: k.body.token, body: { name: 'app' } });
  expect(c.status).toBe(201);
  return { user: c.body.username, pass: c.body.password };
}

beforeAll(async () => {
  sink = await startSink({ keep: true, idHeader: 'Message-ID' });
  receiver = await startReceiver();
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  const config = buildConfig(
    testConfigDoc(tempDir(), {
      routes: [{ domain: '*.tern.test', host: '127.0.0.1', port: sink.port }],
      listeners: { tracking: { host: '127.0.0.1', port } },
      tracking: { enabled: true, base_url: base },
      control: { admin_token: TOKEN },
      // "trk" is made through the API below: it does not exist when the node starts
      webhooks: [{ id: 'trk-hook', tenant: 'trk', url: receiver.url, secret: SECRET, events: ['*'] }],
      webhook_delivery: { allow_networks: ['127.0.0.0/8'] },
    }),
  );
  const logStream = new Writable({ write: (chunk, _enc, cb) => (logLines.push(JSON.parse(String(chunk))), cb()) });
  node = await TernNode.start(config, { logger: pino({ level: 'warn' }, logStream) });
  call = controlApi(node.ports.control);
});

afterAll(async () => {
  await node?.stop();
  await sink?.close();
  await receiver?.close();
});

describe('List-Unsubscribe mailto at the inbound listener', () => {
  let raw: Buffer;
  let qid: string;
  let mailto: string;

  it('unsubscribes the recipient a message to the mailto address names, durably before the 250', async () => {
    qid = await send({ user: 'tenant1', pass: 'secret-1' }, 'reader@sink.tern.test', '<mailto-1@sender.tern.test>');
    raw = (await delivered('<mailto-1@sender.tern.test>'))[0]!.data!;
    mailto = mailtoOf(raw)!;
    expect(mailto).toMatch(/^u-[a-z2-7]+@bounces\.node\.tern\.test$/);
    expect(node.bounces.suppressions.get('default', 'reader@sink.tern.test')).toBeUndefined();

    // a mailbox provider sends the request from the recipient's address; any message to it is the request
    const r = await sendReport(node.ports.inbound, 'reader@sink.tern.test', [mailto], 'From: reader@sink.tern.test\nTo: ' + mailto + '\nSubject: unsubscribe\n\nunsubscribe\n');
    expect(r.rcpt).toEqual([expect.stringMatching(/^250/)]);
    expect(r.data).toMatch(/^250 2\.0\.0 Ok: unsubscribed/);
    // durable before the answer: both are there already
    expect(node.bounces.suppressions.get('default', 'Reader@sink.tern.test')).toMatchObject({ reason: 'unsubscribe', queue_id: qid });
    expect(events((e) => e.type === 'unsubscribed' && e.queue_id === qid)).toEqual([
      expect.objectContaining({ tenant: 'default', rcpt: 'reader@sink.tern.test', method: 'mailto', unique: true, ip: '127.0.0.1', mail_from: 'reader@sink.tern.test', campaign: '-' }),
    ]);
    // nothing else is made of it: not a report
    expect(events((e) => e.type.startsWith('report_'))).toEqual([]);
  });

  it('drops the next message to the unsubscribed address at acceptance', async () => {
    const next = await send({ user: 'tenant1', pass: 'secret-1' }, ['reader@sink.tern.test', 'other@sink.tern.test'], '<mailto-2@sender.tern.test>');
    expect(events((e) => e.type === 'suppressed' && e.queue_id === next)).toEqual([expect.objectContaining({ rcpt: 'reader@sink.tern.test', reason: 'unsubscribe' })]);
    const copies = await delivered('<mailto-2@sender.tern.test>');
    expect(copies.flatMap((c) => c.to)).toEqual(['other@sink.tern.test']);
  });

  it('takes the address in upper case (MTAs that change its case), again: unique false', async () => {
    const r = await sendReport(node.ports.inbound, '', [mailto.toUpperCase()], 'Subject: unsubscribe\n\n.\n');
    expect(r.data).toMatch(/^250 2\.0\.0 Ok: unsubscribed/);
    expect(events((e) => e.type === 'unsubscribed' && e.queue_id === qid).map((e) => e.unique)).toEqual([true, false]);
  });

  it('refuses a tampered or forged token with 550 5.1.1 and records nothing', async () => {
    const before = node.store.events(0, 100_000).length;
    const [local, domain] = mailto.split('@') as [string, string];
    const i = local.length - 3;
    const tampered = `${local.slice(0, i)}${local[i] === 'a' ? 'b' : 'a'}${local.slice(i + 1)}@${domain}`;
    const forged = new TrackingTokens([Buffer.alloc(32, 9)]).mailto({ msgId: qid, rcptIndex: 0, tenant: 'default' }, domain)!;
    for (const address of [tampered, forged, `u-${local.slice(2, 10)}@${domain}`]) {
      const r = await sendReport(node.ports.inbound, '', [address], 'Subject: unsubscribe\n\nx\n');
      expect(r.rcpt[0]).toMatch(/^550 5\.1\.1 /);
      expect(r.data).toBeNull();
    }
    expect(logLines.filter((l) => l.msg === 'unsubscribe address does not verify; refused')).toHaveLength(3);
    expect(node.store.events(0, 100_000)).toHaveLength(before);
  });

  it('refuses mailto addresses on a node without tracking', async () => {
    const plain = await startTestNode({});
    try {
      const address = new TrackingTokens([Buffer.alloc(32, 1)]).mailto({ msgId: qid, rcptIndex: 0, tenant: 'default' }, 'bounces.node.tern.test')!;
      const r = await sendReport(plain.ports.inbound, '', [address], 'Subject: unsubscribe\n\nx\n');
      expect(r.rcpt[0]).toMatch(/^550 5\.1\.1 /);
      expect(plain.store.events(0, 1000).filter((e) => e.type === 'unsubscribed')).toEqual([]);
    } finally {
      await plain.stop();
    }
  });
});

describe('tenants made through the control API', () => {
  let trk: { user: string; pass: string };

  it('the node warned at start about the webhook endpoint of a tenant that did not exist yet', () => {
    expect(logLines).toContainEqual(expect.objectContaining({ endpoint: 'trk-hook', tenant: 'trk', msg: expect.stringMatching(/^webhooks\[0\]\.tenant: tenant "trk" does not exist/) }));
  });

  it('get untracked mail when the tenant has tracking off (still with List-Unsubscribe on marketing mail)', async () => {
    const quiet = await apiTenant('quiet', { tracking: false });
    await send(quiet, 'q@sink.tern.test', '<api-untracked@sender.tern.test>');
    const [m] = await delivered('<api-untracked@sender.tern.test>');
    const text = m!.data!.toString('latin1');
    expect(text).toContain(`${L}/offer`);
    expect(text).not.toContain(`${base}/c/`);
    expect(text).not.toContain(`${base}/o/`);
    expect(headersOf(m!.data!)).toMatch(new RegExp(`^List-Unsubscribe: <${base}/u/[A-Za-z0-9_-]+>, <mailto:u-[a-z2-7]+@bounces\\.node\\.tern\\.test\\?subject=unsubscribe>$`, 'm'));
  });

  it('get tracked mail when the tenant has tracking on, with their own bounce domain in the mailto address', async () => {
    trk = await apiTenant('trk', { tracking: true, bounce_domain: 'bounces.trk.tern.test' });
    const id = await send(trk, 't@sink.tern.test', '<api-tracked@sender.tern.test>');
    const [m] = await delivered('<api-tracked@sender.tern.test>');
    const text = m!.data!.toString('latin1');
    expect(text).not.toContain(`${L}/offer`);
    expect(text).toContain(`${base}/c/`);
    expect(text).toContain(`${base}/o/`);
    // the tracked links (the hidden trap link among them) name the API tenant
    const tokens = [...text.replace(/=\r\n/g, '').matchAll(/http:\/\/127\.0\.0\.1:\d+\/c\/([A-Za-z0-9_-]+)/g)].map((x) => node.tracking!.tokens.verify(x[1]!));
    expect(tokens).toContainEqual({ ok: true, token: expect.objectContaining({ kind: 'click', tenant: 'trk', msgId: id, url: `${L}/offer` }) });
    expect(tokens.every((t) => t.ok && t.token.tenant === 'trk')).toBe(true);
    const mailto = mailtoOf(m!.data!)!;
    expect(mailto).toMatch(/@bounces\.trk\.tern\.test$/);

    // the mailto address at the tenant's bounce domain works too
    const r = await sendReport(node.ports.inbound, 't@sink.tern.test', [mailto], 'Subject: unsubscribe\n\nunsubscribe\n');
    expect(r.data).toMatch(/^250 2\.0\.0 Ok: unsubscribed/);
    expect(node.bounces.suppressions.get('trk', 't@sink.tern.test')).toMatchObject({ reason: 'unsubscribe', queue_id: id });
    expect(node.bounces.suppressions.get('default', 't@sink.tern.test')).toBeUndefined();
  });

  it("a configured webhook endpoint for the API tenant receives that tenant's events, and no other tenant's", async () => {
    await waitForEvents((e) => e.type === 'delivered' && e.tenant === 'trk');
    const want = events((e) => e.tenant === 'trk').map((e) => e.type);
    expect(want).toEqual(expect.arrayContaining(['accepted', 'delivered', 'suppression_added', 'unsubscribed']));
    await receiver.waitFor((r) => r.events().length >= want.length, 15_000, 'trk events');
    const got = receiver.events();
    expect(got.every((e) => e.tenant === 'trk')).toBe(true);
    expect(got.map((e) => e.type)).toEqual(want);
    expect(receiver.requests[0]!.headers['tern-webhook-id']).toBe('trk-hook');
    expect(got.find((e) => e.type === 'unsubscribed')).toMatchObject({ method: 'mailto', rcpt: 't@sink.tern.test' });
  });
});
