/**
 * Queue administration over real sockets: a node delivering to a sink through routes, driven by an operator
 * over /api/v1/queues — holds (by domain, campaign, tenant, source; timed; across a restart), fail, retry now,
 * message inspection, auth and input checks.
 */
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import nodemailer from 'nodemailer';
import { SMTPServer } from 'smtp-server';
import { startSink, type Sink } from '../bench/sink.js';
import { shapingFile, startTestNode, tempDir } from './support/node.js';
import type { TernNode } from '../src/node.js';
import type { TernEvent } from '../src/core/store.js';

const TOKEN = 'queue-admin-test-operator-token';
let sink: Sink;
let node: TernNode;
/** a front for the sink that holds connections silently (no greeting) until opened */
let gate: net.Server;
let gateOpen = false;
const parked: net.Socket[] = [];
/** a server that never greets */
let tarpit: net.Server;
/** a server that holds each message's DATA until the test answers it */
let slow: SMTPServer;
const slowWaiting: Array<(err?: Error) => void> = [];

const smtpUsers = [
  { username: 'tenant1', password: 'secret-1', tenant: 'default' },
  { username: 'acme-user', password: 'secret-2', tenant: 'acme' },
];

function nodeConfig(sinkPort: number, gatePort: number, tarpitPort = 9, slowPort = 9) {
  return {
    routes: [
      { domain: 'gated.tern.test', host: '127.0.0.1', port: gatePort },
      { domain: 'tarpit.tern.test', host: '127.0.0.1', port: tarpitPort },
      { domain: 'slow.tern.test', host: '127.0.0.1', port: slowPort },
      { domain: '*.tern.test', host: '127.0.0.1', port: sinkPort },
    ],
    pools: { default: { sources: [{ name: 'ip2', address: '127.0.0.2', ehlo: 'ip2.tern.test' }, { name: 'ip3', address: '127.0.0.3', ehlo: 'ip3.tern.test' }] } },
    tenants: { default: { pool: 'default' }, acme: { pool: 'default' } },
    smtp_users: smtpUsers,
    shaping: { file: shapingFile({ domains: { 'gated.tern.test': { connections: 1, connect_timeout: '2s' }, 'tarpit.tern.test': { connections: 1, connect_timeout: '2s' } } }) },
    control: { admin_token: TOKEN },
    // deferred mail waits an hour unless the operator says otherwise; a silent host is not skipped for long
    retry: { schedule: ['1h'] },
    delivery: { mx_down_for: '1ms' },
  };
}

beforeAll(async () => {
  sink = await startSink({
    // "retry-…" messages are deferred on their first attempt
    decide: (ctx) => (ctx.stage === 'data' && ctx.id?.startsWith('<retry-') && ctx.attempt === 1 ? '451 4.3.0 Try again later' : undefined),
  });
  gate = net.createServer((socket) => {
    socket.on('error', () => {});
    if (!gateOpen) return void parked.push(socket);
    const upstream = net.connect(sink.port, '127.0.0.1');
    upstream.on('error', () => socket.destroy());
    socket.pipe(upstream).pipe(socket);
  });
  await new Promise<void>((r) => gate.listen(0, '127.0.0.1', r));
  tarpit = net.createServer((socket) => void parked.push(socket.on('error', () => {})));
  await new Promise<void>((r) => tarpit.listen(0, '127.0.0.1', r));
  slow = new SMTPServer({
    authOptional: true,
    disabledCommands: ['STARTTLS'],
    logger: false,
    onData: (stream, _session, cb) => {
      stream.resume();
      stream.on('end', () => slowWaiting.push(cb));
    },
  });
  await new Promise<void>((r) => slow.listen(0, '127.0.0.1', r));
  const port = (s: net.Server) => (s.address() as net.AddressInfo).port;
  node = await startTestNode(nodeConfig(sink.port, port(gate), port(tarpit), port(slow.server)));
});

afterAll(async () => {
  await node?.stop();
  await sink?.close();
  for (const s of parked) s.destroy();
  await new Promise((r) => gate?.close(r));
  await new Promise((r) => tarpit?.close(r));
  for (const cb of slowWaiting) cb();
  await new Promise<void>((r) => (slow ? slow.close(() => r()) : r()));
});

async function api(method: string, path: string, body?: unknown, token: string | null = TOKEN) {
  const headers: Record<string, string> = {};
  if (token) headers.authorization = `Bearer ${token}`;
  if (body !== undefined) headers['content-type'] = 'application/json';
  const res = await fetch(`http://127.0.0.1:${node.ports.control}${path}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  return { status: res.status, body: (text ? JSON.parse(text) : null) as any };
}

/** Sends one message through SMTP submission; resolves with its queue id. */
async function send(to: string | string[], id: string, user = smtpUsers[0]!): Promise<string> {
  const info = await nodemailer
    .createTransport({ host: '127.0.0.1', port: node.ports.submission, auth: { user: user.username, pass: user.password }, ignoreTLS: true })
    .sendMail({ from: 'a@sender.tern.test', to, text: 'x', messageId: id });
  return /queued as (\S+)/.exec(info.response)![1]!;
}

/** Injects a campaign's message straight into the spool, as campaign fan-out does. */
async function injectCampaign(campaign: string, to: string[], id: string): Promise<string> {
  const body = Buffer.from(`From: a@sender.tern.test\r\nTo: ${to.join(', ')}\r\nMessage-ID: ${id}\r\nSubject: c\r\n\r\nhello\r\n`);
  const { msgId, jobs } = await node.spool.accept({ tenant: 'default', campaign, sender: 'a@sender.tern.test', recipients: to, body, messageId: id, listener: 'test' });
  node.scheduler.enqueue(jobs);
  return msgId;
}

const events = (pred: (e: TernEvent) => boolean) => node.store.events(0, 1_000_000).filter(pred);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(pred: () => boolean | Promise<boolean>, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!(await pred())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

describe('authentication and input', () => {
  it('refuses every queue route without the operator token, before looking at the request', async () => {
    expect((await api('GET', '/api/v1/queues', undefined, null)).status).toBe(401);
    expect((await api('GET', '/api/v1/queues', undefined, 'not-the-token-not-the-token')).status).toBe(401);
    const bad = await api('POST', '/api/v1/queues/suspend', { nonsense: true }, null);
    expect(bad.status).toBe(401);
    expect(bad.body.error.code).toBe('unauthorized');
    expect((await api('POST', '/api/v1/queues/fail', { domain: 'x.tern.test', reason: 'r' }, null)).status).toBe(401);
    expect((await api('GET', '/api/v1/queues/messages/abc', undefined, null)).status).toBe(401);
    expect((await api('DELETE', '/api/v1/queues/suspensions/abc', undefined, null)).status).toBe(401);
  });

  it('answers bad input with 400 and a sentence that says what to do', async () => {
    const cases: Array<[string, unknown, RegExp]> = [
      ['/suspend', {}, /reason/],
      ['/suspend', { reason: 'why' }, /at least one of tenant, campaign, domain or source/],
      ['/suspend', { domain: 'x.tern.test' }, /reason.*send e\.g\./],
      ['/suspend', { domain: 'x.tern.test', reason: 'r', duration: '2 hours' }, /duration: "2 hours" is not a duration; write it like "30s"/],
      ['/suspend', { domian: 'x.tern.test', reason: 'r' }, /domian: unknown key; the keys allowed here are tenant, campaign, domain, source, reason, duration/],
      ['/suspend', { tenant: 'nobody', reason: 'r' }, /No tenant is named "nobody"; the tenants are default, acme/],
      ['/suspend', { source: 'ip9', reason: 'r' }, /No egress source is named "ip9"; the sources are ip2, ip3/],
      ['/suspend', { domain: 'not a domain', reason: 'r' }, /is not a domain name/],
      ['/suspend', { domain: 'x.tern.test', reason: 'line\r\nbreak' }, /reason: .* is not one line of text/],
      ['/fail', { source: 'ip2', reason: 'r' }, /not tied to an egress source/],
      ['/fail', { reason: 'r' }, /at least one of tenant, campaign or domain/],
      ['/retry', { domain: 'x.tern.test', message_id: 'abc' }, /either message_id or selectors/],
      ['/resume', {}, /at least one of/],
    ];
    for (const [path, body, message] of cases) {
      const res = await api('POST', `/api/v1/queues${path}`, body);
      expect(res.status, `${path} ${JSON.stringify(body)}`).toBe(400);
      expect(res.body.error.message, `${path} ${JSON.stringify(body)}`).toMatch(message);
    }
    // no body at all, and an empty JSON body
    const none = await fetch(`http://127.0.0.1:${node.ports.control}/api/v1/queues/suspend`, { method: 'POST', headers: { authorization: `Bearer ${TOKEN}` } });
    expect(none.status).toBe(400);
    expect(((await none.json()) as { error: { message: string } }).error.message).toMatch(/no JSON body; send e\.g\. \{"domain"/);
    const empty = await fetch(`http://127.0.0.1:${node.ports.control}/api/v1/queues/fail`, { method: 'POST', headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' } });
    expect(empty.status).toBe(400);
    expect((await api('GET', '/api/v1/queues?limit=lots')).status).toBe(400);
    expect((await api('GET', '/api/v1/queues?cursor=garbage')).body.error.code).toBe('invalid_cursor');
  });

  it('answers 404 for unknown messages and holds', async () => {
    expect((await api('GET', '/api/v1/queues/messages/nosuchmessage')).status).toBe(404);
    expect((await api('POST', '/api/v1/queues/retry', { message_id: 'nosuchmessage' })).status).toBe(404);
    expect((await api('DELETE', '/api/v1/queues/suspensions/nosuchhold')).status).toBe(404);
    expect((await api('POST', '/api/v1/queues/resume', { id: 'nosuchhold' })).status).toBe(404);
    expect((await api('POST', '/api/v1/queues/resume', { domain: 'never-held.tern.test' })).status).toBe(404);
  });
});

describe('holds', () => {
  it('keeps a suspended domain\'s mail queued and unattempted, lists it with the hold, and delivers it promptly on resume', async () => {
    const held = await api('POST', '/api/v1/queues/suspend', { domain: 'Held.tern.test', reason: 'complaints spike' });
    expect(held.status).toBe(201);
    expect(held.body.hold).toMatchObject({ domain: 'held.tern.test', tenant: null, source: null, reason: 'complaints spike', until: null });
    const hold = held.body.hold.id as string;

    const ids = ['<held-1@x>', '<held-2@x>', '<held-3@x>'];
    const qids = await Promise.all(ids.map((id, n) => send(`u${n}@held.tern.test`, id)));
    await send('v@free.tern.test', '<free-1@x>');
    await sink.waitFor(() => sink.idCounts.get('<free-1@x>') === 1, 10_000);
    await sleep(500);
    for (const id of ids) expect(sink.idCounts.has(id)).toBe(false);

    const list = await api('GET', '/api/v1/queues?domain=held.tern.test');
    expect(list.status).toBe(200);
    expect(list.body.scheduled).toHaveLength(1);
    expect(list.body.scheduled[0]).toMatchObject({ queue: 'default:-@held.tern.test', tenant: 'default', campaign: '-', domain: 'held.tern.test', recipients: 3, messages: 3 });
    expect(list.body.scheduled[0].held).toEqual([{ id: hold, reason: 'complaints spike', until: null }]);
    expect(list.body.scheduled[0].oldest_age_s).toBeGreaterThanOrEqual(0);
    expect(list.body.ready).toEqual([]); // nothing of it reached a ready queue

    const shown = await api('GET', `/api/v1/queues/messages/${qids[0]}`);
    expect(shown.body.recipients[0]).toMatchObject({ rcpt: 'u0@held.tern.test', status: 'queued', attempts: 0, queue: 'default:-@held.tern.test' });
    expect(shown.body.recipients[0].held[0].id).toBe(hold);
    expect((await api('GET', '/api/v1/queues/suspensions')).body.holds.map((h: { id: string }) => h.id)).toContain(hold);

    const resumedAt = Date.now();
    const resumed = await api('POST', '/api/v1/queues/resume', { id: hold });
    expect(resumed.status).toBe(200);
    expect(resumed.body.resumed[0].id).toBe(hold);
    await sink.waitFor(() => ids.every((id) => sink.idCounts.get(id) === 1), 5_000);
    expect(Date.now() - resumedAt).toBeLessThan(5_000);
    // never attempted while held: the one attempt delivered them
    await until(() => qids.every((qid) => events((e) => e.queue_id === qid && e.type === 'delivered').length === 1), 5_000, 'delivered events');
    for (const qid of qids) expect(events((e) => e.queue_id === qid && e.type === 'delivered').map((e) => e.attempts)).toEqual([1]);
    expect(events((e) => e.type === 'deferred' && String(e.rcpt).endsWith('@held.tern.test'))).toEqual([]);
    expect(events((e) => e.type === 'queue_suspended' && e.hold === hold)).toHaveLength(1);
    expect(events((e) => e.type === 'queue_resumed' && e.hold === hold)[0]).toMatchObject({ domain: 'held.tern.test', by: 'operator' });
    await until(async () => (await api('GET', '/api/v1/queues?domain=held.tern.test')).body.scheduled.length === 0, 5_000, 'empty listing');
  });

  it('pulls mail already in a ready queue back to the spool: the failing connection defers nothing of it', async () => {
    const ids = ['<gated-1@x>', '<gated-2@x>'];
    const qids = await Promise.all(ids.map((id, n) => send(`g${n}@gated.tern.test`, id)));
    // the gate never greets: each waits in its ready queue (one per source) while that queue's one connection tries
    const readyRecipients = (list: { ready: Array<{ recipients: number }> }) => list.ready.reduce((n, q) => n + q.recipients, 0);
    await until(async () => readyRecipients((await api('GET', '/api/v1/queues?domain=gated.tern.test')).body) === 2, 5_000, 'two recipients in ready queues');
    for (const rq of (await api('GET', '/api/v1/queues?domain=gated.tern.test')).body.ready) expect(rq).toMatchObject({ connections: 1, limits: { connections: 1 } });
    const { body } = await api('POST', '/api/v1/queues/suspend', { domain: 'gated.tern.test', reason: 'pull back' });
    const after = await api('GET', '/api/v1/queues?domain=gated.tern.test');
    expect(readyRecipients(after.body)).toBe(0);
    expect(after.body.scheduled[0]).toMatchObject({ recipients: 2, held: [{ id: body.hold.id }] });
    await sleep(2500); // the connection times out (connect_timeout 2s) with nothing left to defer
    for (const qid of qids) {
      expect(events((e) => e.queue_id === qid && e.type !== 'accepted')).toEqual([]);
      expect((await api('GET', `/api/v1/queues/messages/${qid}`)).body.recipients[0]).toMatchObject({ status: 'queued', attempts: 0 });
    }
    gateOpen = true;
    expect((await api('DELETE', `/api/v1/queues/suspensions/${body.hold.id}`)).status).toBe(200);
    await sink.waitFor(() => ids.every((id) => sink.idCounts.get(id) === 1), 10_000);
  });

  it('ends a timed hold on its own and then delivers', async () => {
    const { body } = await api('POST', '/api/v1/queues/suspend', { domain: 'timed.tern.test', reason: 'short pause', duration: '2s' });
    expect(body.hold.until - body.hold.since).toBe(2000);
    await send('t@timed.tern.test', '<timed-1@x>');
    await sleep(1000);
    expect(sink.idCounts.has('<timed-1@x>')).toBe(false);
    await sink.waitFor(() => sink.idCounts.get('<timed-1@x>') === 1, 6_000);
    expect(sink.messages.find((m) => m.id === '<timed-1@x>')!.receivedAt).toBeGreaterThanOrEqual(body.hold.until);
    expect(events((e) => e.type === 'queue_resumed' && e.hold === body.hold.id)[0]).toMatchObject({ expired: true });
    expect((await api('GET', '/api/v1/queues/suspensions')).body.holds.map((h: { id: string }) => h.id)).not.toContain(body.hold.id);
  });

  it('holds a tenant\'s mail and not another\'s', async () => {
    const { body } = await api('POST', '/api/v1/queues/suspend', { tenant: 'acme', reason: 'unpaid invoice' });
    await send('a@tenants.tern.test', '<acme-1@x>', smtpUsers[1]);
    await send('a@tenants.tern.test', '<default-1@x>');
    await sink.waitFor(() => sink.idCounts.get('<default-1@x>') === 1, 10_000);
    await sleep(300);
    expect(sink.idCounts.has('<acme-1@x>')).toBe(false);
    const list = await api('GET', '/api/v1/queues?tenant=acme');
    expect(list.body.scheduled).toMatchObject([{ queue: 'acme:-@tenants.tern.test', recipients: 1, held: [{ id: body.hold.id }] }]);
    // resuming by the same selectors ends it
    expect((await api('POST', '/api/v1/queues/resume', { tenant: 'acme' })).body.resumed[0].id).toBe(body.hold.id);
    await sink.waitFor(() => sink.idCounts.get('<acme-1@x>') === 1, 5_000);
  });

  it('passes over a held source (its mail leaves from the other one) and waits when every source is held', async () => {
    const ip2 = (await api('POST', '/api/v1/queues/suspend', { source: 'ip2', reason: 'listed on a blocklist' })).body.hold;
    const ids = Array.from({ length: 6 }, (_, n) => `<src-${n}@x>`);
    await Promise.all(ids.map((id, n) => send(`s${n}@sources.tern.test`, id)));
    await sink.waitFor(() => ids.every((id) => sink.idCounts.get(id) === 1), 10_000);
    expect(sink.messages.filter((m) => ids.includes(m.id!)).map((m) => m.remoteAddress)).toEqual(ids.map(() => '127.0.0.3'));

    const ip3 = (await api('POST', '/api/v1/queues/suspend', { source: 'ip3', reason: 'maintenance' })).body.hold;
    await send('w@sources.tern.test', '<src-wait@x>');
    await sleep(800);
    expect(sink.idCounts.has('<src-wait@x>')).toBe(false);
    const list = await api('GET', '/api/v1/queues?domain=sources.tern.test');
    expect(list.body.scheduled[0]).toMatchObject({ recipients: 1, held: [] }); // not held itself: no source may carry it
    await api('POST', '/api/v1/queues/resume', { id: ip2.id });
    await sink.waitFor(() => sink.idCounts.get('<src-wait@x>') === 1, 5_000);
    expect(sink.messages.find((m) => m.id === '<src-wait@x>')!.remoteAddress).toBe('127.0.0.2');
    await api('POST', '/api/v1/queues/resume', { id: ip3.id });
  });
});

describe('listing', () => {
  it('pages through the scheduled queues with limit and cursor', async () => {
    const hold = (await api('POST', '/api/v1/queues/suspend', { campaign: 'paging', reason: 'keep them queued' })).body.hold;
    for (const d of ['p1', 'p2', 'p3']) await injectCampaign('paging', [`a@${d}.tern.test`, `b@${d}.tern.test`], `<paging-${d}@x>`);
    const first = (await api('GET', '/api/v1/queues?campaign=paging&limit=2')).body;
    expect(first.scheduled.map((q: { queue: string }) => q.queue)).toEqual(['default:paging@p1.tern.test', 'default:paging@p2.tern.test']);
    expect(first.totals).toMatchObject({ scheduled_queues: 3, scheduled_recipients: 6 });
    expect(first.next_cursor).toEqual(expect.any(String));
    const second = (await api('GET', `/api/v1/queues?campaign=paging&limit=2&cursor=${first.next_cursor}`)).body;
    expect(second.scheduled.map((q: { queue: string }) => q.queue)).toEqual(['default:paging@p3.tern.test']);
    expect(second.next_cursor).toBeNull();
    expect((await api('POST', '/api/v1/queues/fail', { campaign: 'paging', reason: 'test over' })).body.failed).toBe(6);
    await api('POST', '/api/v1/queues/resume', { id: hold.id });
  });
});

describe('fail and retry now', () => {
  it('fails every queued recipient of a campaign with an operator reply, delivering none, and leaves the rest', async () => {
    const hold = (await api('POST', '/api/v1/queues/suspend', { campaign: 'spring', reason: 'check before bouncing' })).body.hold;
    const spring = [
      await injectCampaign('spring', ['c1@camp.tern.test', 'c2@camp.tern.test'], '<spring-1@x>'),
      await injectCampaign('spring', ['c3@other.tern.test'], '<spring-2@x>'),
    ];
    const summer = await injectCampaign('summer', ['c4@camp.tern.test'], '<summer-1@x>');
    await sink.waitFor(() => sink.idCounts.get('<summer-1@x>') === 1, 10_000);
    expect((await api('GET', '/api/v1/queues?campaign=spring')).body.totals.scheduled_recipients).toBe(3);

    const res = await api('POST', '/api/v1/queues/fail', { campaign: 'spring', reason: 'sent by mistake' });
    expect(res.status).toBe(200);
    expect(res.body).toEqual({ failed: 3, in_flight: 0 });
    const failed = events((e) => e.type === 'failed' && spring.includes(String(e.queue_id)));
    expect(failed.map((e) => e.rcpt).sort()).toEqual(['c1@camp.tern.test', 'c2@camp.tern.test', 'c3@other.tern.test']);
    for (const e of failed) expect(e).toMatchObject({ response: '554 5.0.0 Failed by operator: sent by mistake', attempts: 0, by: 'operator', campaign: 'spring' });
    expect(events((e) => e.type === 'queue_failed' && e.campaign === 'spring')[0]).toMatchObject({ reason: 'sent by mistake', recipients: 3 });
    expect((await api('GET', '/api/v1/queues?campaign=spring')).body.scheduled).toEqual([]);
    const shown = (await api('GET', `/api/v1/queues/messages/${spring[0]}`)).body;
    expect(shown.pending).toBe(0);
    expect(shown.recipients.map((r: { status: string }) => r.status)).toEqual(['failed', 'failed']);
    expect(shown.recipients[0].history).toEqual([expect.objectContaining({ type: 'failed', by: 'operator', attempt: 0 })]);
    expect(node.spool.body(spring[0]!)).toBeUndefined();

    await api('POST', '/api/v1/queues/resume', { id: hold.id });
    await sleep(500);
    expect(sink.idCounts.has('<spring-1@x>')).toBe(false);
    expect(sink.idCounts.has('<spring-2@x>')).toBe(false);
    expect(events((e) => e.queue_id === summer && e.type === 'delivered')).toHaveLength(1);
  });

  it('fails mail waiting in a ready queue, so the failing connection has nothing left to defer', async () => {
    const qids = [await send('t1@tarpit.tern.test', '<tarpit-1@x>'), await send('t2@tarpit.tern.test', '<tarpit-2@x>')];
    const readyRecipients = async () => (await api('GET', '/api/v1/queues?domain=tarpit.tern.test')).body.ready.reduce((n: number, q: { recipients: number }) => n + q.recipients, 0);
    await until(async () => (await readyRecipients()) === 2, 5_000, 'two recipients in ready queues');
    expect((await api('POST', '/api/v1/queues/fail', { domain: 'tarpit.tern.test', reason: 'no such host really' })).body).toEqual({ failed: 2, in_flight: 0 });
    expect(await readyRecipients()).toBe(0);
    await sleep(2500); // connect_timeout 2s
    for (const qid of qids) expect(events((e) => e.queue_id === qid && e.type !== 'accepted').map((e) => [e.type, e.attempts])).toEqual([['failed', 0]]);
  });

  it('lets an attempt on the wire finish, and turns its deferral into the operator\'s failure', async () => {
    const qid = await send('w@slow.tern.test', '<slow-1@x>');
    await until(() => slowWaiting.length === 1, 10_000, 'the message data at the slow server');
    expect((await api('POST', '/api/v1/queues/fail', { domain: 'slow.tern.test', reason: 'stop it' })).body).toEqual({ failed: 0, in_flight: 1 });
    slowWaiting.shift()!(Object.assign(new Error('Try again later'), { responseCode: 451 }));
    await until(() => events((e) => e.queue_id === qid && e.type === 'failed').length === 1, 5_000, 'the failure');
    const failed = events((e) => e.queue_id === qid && e.type !== 'accepted');
    expect(failed).toHaveLength(1);
    expect(failed[0]).toMatchObject({ type: 'failed', attempts: 1, by: 'operator' });
    expect(String(failed[0]!.response)).toMatch(/^554 5\.0\.0 Failed by operator: stop it \(the attempt in progress got: 451 Try again later\)$/);
    expect((await api('GET', '/api/v1/queues?domain=slow.tern.test')).body.scheduled).toEqual([]);
  });

  it('fails a tenant\'s queued mail', async () => {
    const hold = (await api('POST', '/api/v1/queues/suspend', { tenant: 'acme', reason: 'account closed' })).body.hold;
    const qids = [await send(['x1@acme.tern.test', 'x2@acme2.tern.test'], '<acme-f1@x>', smtpUsers[1]), await send('x3@acme.tern.test', '<acme-f2@x>', smtpUsers[1])];
    const res = await api('POST', '/api/v1/queues/fail', { tenant: 'acme', reason: 'account closed' });
    expect(res.body).toEqual({ failed: 3, in_flight: 0 });
    for (const qid of qids) expect(events((e) => e.queue_id === qid && e.type === 'failed').length).toBeGreaterThan(0);
    expect((await api('GET', '/api/v1/queues?tenant=acme')).body.scheduled).toEqual([]);
    await api('POST', '/api/v1/queues/resume', { id: hold.id });
  });

  it('makes a deferred message due now without counting an attempt, and shows its whole history', async () => {
    const qid = await send('r@retry.tern.test', '<retry-1@x>');
    await until(() => events((e) => e.queue_id === qid && e.type === 'deferred').length === 1, 10_000, 'the deferral');
    const before = (await api('GET', `/api/v1/queues/messages/${qid}`)).body;
    expect(before.recipients[0]).toMatchObject({ status: 'queued', attempts: 1, last_reply: '451 4.3.0 Try again later' });
    expect(before.recipients[0].next_at - Date.now()).toBeGreaterThan(50 * 60_000); // the schedule says in an hour
    expect((await api('GET', '/api/v1/queues?domain=retry.tern.test')).body.scheduled[0].next_due_at).toBeGreaterThan(Date.now() + 50 * 60_000);

    const res = await api('POST', '/api/v1/queues/retry', { message_id: qid });
    expect(res.body).toMatchObject({ retried: 1, held: 0 });
    await sink.waitFor(() => sink.idCounts.get('<retry-1@x>') === 1, 5_000);
    await until(() => events((e) => e.queue_id === qid && e.type === 'delivered').length === 1, 5_000, 'the delivery');
    expect(events((e) => e.queue_id === qid && e.type === 'delivered')[0]!.attempts).toBe(2);

    const shown = (await api('GET', `/api/v1/queues/messages/${qid}`)).body;
    expect(shown).toMatchObject({ queue_id: qid, message_id: '<retry-1@x>', tenant: 'default', campaign: '-', sender: 'a@sender.tern.test', pending: 0 });
    expect(shown.size).toBeGreaterThan(0);
    expect(shown.recipients[0]).toMatchObject({ rcpt: 'r@retry.tern.test', status: 'delivered', attempts: 2, next_at: null });
    expect(shown.history.map((h: { type: string }) => h.type)).toEqual(['accepted', 'deferred', 'retried', 'delivered']);
    expect(shown.history[1]).toMatchObject({ rcpt: 'r@retry.tern.test', attempt: 1, response: '451 4.3.0 Try again later', source: expect.stringMatching(/^ip[23]$/) });
    expect(shown.history[1].mx).toMatch(new RegExp(`127\\.0\\.0\\.1\\]:${sink.port}$`));
    expect(shown.history[2]).toMatchObject({ by: 'operator', attempt: 1 });
    expect(shown.history[3]).toMatchObject({ attempt: 2, response: expect.stringMatching(/^250/) });
  });

  it('retries by selector, leaving held mail held', async () => {
    const a = await send('r1@retry2.tern.test', '<retry-2@x>');
    const b = await send('r2@retry3.tern.test', '<retry-3@x>');
    await until(() => events((e) => (e.queue_id === a || e.queue_id === b) && e.type === 'deferred').length === 2, 10_000, 'two deferrals');
    const hold = (await api('POST', '/api/v1/queues/suspend', { domain: 'retry3.tern.test', reason: 'wait' })).body.hold;
    expect((await api('POST', '/api/v1/queues/retry', { domain: 'retry2.tern.test' })).body).toMatchObject({ retried: 1 });
    expect((await api('POST', '/api/v1/queues/retry', { domain: 'retry3.tern.test' })).body).toMatchObject({ retried: 0, held: 1 });
    await sink.waitFor(() => sink.idCounts.get('<retry-2@x>') === 1, 5_000);
    await sleep(300);
    expect(sink.idCounts.has('<retry-3@x>')).toBe(false);
    await api('POST', '/api/v1/queues/resume', { id: hold.id });
  });
});

describe('across a restart', () => {
  it('keeps a hold (and its mail queued) when the node restarts on the same data', async () => {
    const dataDir = tempDir('tern-holds-');
    const config = nodeConfig(sink.port, (gate.address() as net.AddressInfo).port);
    const first = await startTestNode(config, { dataDir });
    const call = (n: TernNode, method: string, path: string, body?: unknown) =>
      fetch(`http://127.0.0.1:${n.ports.control}${path}`, { method, headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' }, body: body ? JSON.stringify(body) : undefined }).then(
        async (r) => (await r.json()) as any,
      );
    let second: TernNode | undefined;
    try {
      const hold = (await call(first, 'POST', '/api/v1/queues/suspend', { domain: 'restart.tern.test', reason: 'over the restart' })).hold;
      const timed = (await call(first, 'POST', '/api/v1/queues/suspend', { domain: 'restart2.tern.test', reason: 'a while', duration: '1h' })).hold;
      await nodemailer
        .createTransport({ host: '127.0.0.1', port: first.ports.submission, auth: { user: 'tenant1', pass: 'secret-1' }, ignoreTLS: true })
        .sendMail({ from: 'a@sender.tern.test', to: 'p@restart.tern.test', text: 'x', messageId: '<restart-1@x>' });
      await first.stop();

      second = await startTestNode(config, { dataDir });
      const holds = (await call(second, 'GET', '/api/v1/queues/suspensions')).holds;
      expect(holds).toHaveLength(2);
      expect(holds).toEqual(
        expect.arrayContaining([
          expect.objectContaining({ id: hold.id, domain: 'restart.tern.test', reason: 'over the restart', until: null }),
          expect.objectContaining({ id: timed.id, until: timed.until }),
        ]),
      );
      expect((await call(second, 'GET', '/api/v1/queues?domain=restart.tern.test')).scheduled[0]).toMatchObject({ recipients: 1, held: [{ id: hold.id }] });
      await sleep(500);
      expect(sink.idCounts.has('<restart-1@x>')).toBe(false);
      await call(second, 'POST', '/api/v1/queues/resume', { id: hold.id });
      await sink.waitFor(() => sink.idCounts.get('<restart-1@x>') === 1, 5_000);
    } finally {
      await second?.stop();
    }
  });
});
