/**
 * HTTP sending over real sockets: POST /api/v1/messages and /messages/raw against a node that delivers to a
 * sink, with each refusal checked to store nothing (no spool record, no event), idempotent replays, and the
 * stats the follower keeps from the events of those sends.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSink, type Sink } from '../bench/sink.js';
import type { TernNode } from '../src/node.js';
import { controlApi } from './support/control.js';
import { startTestNode } from './support/node.js';

const TOKEN = 'http-send-test-operator-token';
let sink: Sink;
let node: TernNode;
let call: ReturnType<typeof controlApi>;
let key = '';
let viewer = '';

const send = (body: unknown, path = '/api/v1/messages', token = key) => call('POST', path, { token, body });
const mailTo = async (rcpt: string) => {
  await sink.waitFor(() => sink.messages.some((m) => m.to.includes(rcpt)), 15_000);
  return sink.messages.find((m) => m.to.includes(rcpt))!.data!.toString('utf8');
};
/** the events of the tenant (all types), newest last */
const events = async () => (await call('GET', '/api/v1/events?order=asc&limit=500', { token: key })).body.items as Array<Record<string, any>>;

beforeAll(async () => {
  sink = await startSink({ keep: true });
  node = await startTestNode({ control: { admin_token: TOKEN }, routes: [{ domain: '*.tern.test', host: '127.0.0.1', port: sink.port }] });
  call = controlApi(node.ports.control);
  expect((await call('POST', '/api/v1/tenants', { token: TOKEN, body: { id: 'web', allow_unverified_domains: true } })).status).toBe(201);
  key = (await call('POST', '/api/v1/tenants/web/api-keys', { token: TOKEN, body: { name: 'app', role: 'marketer' } })).body.token;
  viewer = (await call('POST', '/api/v1/tenants/web/api-keys', { token: TOKEN, body: { name: 'reader', role: 'viewer' } })).body.token;
  await call('POST', '/api/v1/suppressions', { token: key, body: { address: 'gone@rcpt.tern.test' } });
});

afterAll(async () => {
  await node?.stop();
  await sink?.close();
});

describe('POST /api/v1/messages', () => {
  it('answers 202 with each recipient\'s status; each gets its own rendering, a text part made from the HTML, and only its own address', async () => {
    const r = await send({
      from: { email: 'shop@web.tern.test', name: 'The Shop' },
      to: [
        { email: 'ann@rcpt.tern.test', name: 'Ann', substitutions: { first_name: 'Ann', code: '<A1>' } },
        { email: 'gone@rcpt.tern.test' },
        { email: 'not an address' },
        { email: 'bob@rcpt.tern.test', substitutions: { first_name: 'Bob' } },
      ],
      subject: 'Hello {{ first_name | default: "there" }}',
      html: '<p>Hi <b>{{ first_name }}</b>, your code is {{ code }}. <a href="https://shop.example/x">Shop</a></p>',
      campaign: 'spring-sale',
      tags: ['welcome'],
      metadata: { order: '42' },
    });
    expect(r.status).toBe(202);
    expect(r.body).toEqual({
      queue_id: expect.any(String),
      message_id: expect.stringMatching(/^<.+@web\.tern\.test>$/),
      recipients: [
        { email: 'ann@rcpt.tern.test', status: 'queued', index: 0 },
        { email: 'gone@rcpt.tern.test', status: 'suppressed', reason: 'manual' },
        { email: 'not an address', status: 'rejected', reason: 'not a valid mail address' },
        { email: 'bob@rcpt.tern.test', status: 'queued', index: 1 },
      ],
    });
    const ann = await mailTo('ann@rcpt.tern.test');
    expect(ann).toMatch(/^Subject: Hello Ann\r$/m);
    expect(ann).toMatch(/^To: Ann <ann@rcpt\.tern\.test>\r$/m);
    expect(ann).not.toContain('bob@rcpt');
    expect(ann).toContain('&lt;A1&gt;'); // substitutions are escaped in HTML
    expect(ann).toMatch(/Content-Type: text\/plain/);
    expect(ann).toContain('Hi Ann, your code is <A1>. Shop [https://shop.example/x]');
    expect(ann).toMatch(/^Feedback-ID: spring-sale:web:marketing:/m);
    expect(ann).not.toMatch(/^X-Tern-(Campaign|Stream|Track):/im);
    const bob = await mailTo('bob@rcpt.tern.test');
    expect(bob).toMatch(/^Subject: Hello Bob\r$/m);
    expect(bob).not.toContain('ann@rcpt');

    const mine = (await events()).filter((e) => e.queue_id === r.body.queue_id);
    expect(mine.find((e) => e.type === 'accepted')).toMatchObject({ recipients: ['ann@rcpt.tern.test', 'bob@rcpt.tern.test'], campaign: 'spring-sale', listener: 'http', tags: ['welcome'], metadata: { order: '42' } });
    expect(mine.find((e) => e.type === 'suppressed')).toMatchObject({ rcpt: 'gone@rcpt.tern.test' });
    expect((await call('GET', `/api/v1/messages/${r.body.queue_id}`, { token: key })).body.recipients.map((x: { rcpt: string }) => x.rcpt)).toEqual(['ann@rcpt.tern.test', 'bob@rcpt.tern.test']);
  });

  it('without Liquid or substitutions, one message for all recipients', async () => {
    const r = await send({ from: { email: 'shop@web.tern.test' }, to: [{ email: 'c1@rcpt.tern.test' }, { email: 'c2@rcpt.tern.test' }], subject: 'Plain', text: 'Just text' });
    expect(r.status).toBe(202);
    const m = await mailTo('c1@rcpt.tern.test');
    expect(m).toMatch(/^To: c1@rcpt\.tern\.test, c2@rcpt\.tern\.test\r$/m);
    expect(node.spool.message(r.body.queue_id)).toMatchObject({ recipients: 2 });
  });

  it('refuses header injection, bad fields and unknown routes with a precise 4xx, and stores nothing', async () => {
    const base = { from: { email: 'shop@web.tern.test' }, to: [{ email: 'x@rcpt.tern.test' }], subject: 'ok', text: 'ok' };
    const seqBefore = node.store.lastSeq;
    const cases: Array<[unknown, number, string]> = [
      [{ ...base, subject: 'a\r\nBcc: victim@evil.example' }, 400, 'body.subject'],
      [{ ...base, subject: 'a\u0000b' }, 400, 'body.subject'],
      [{ ...base, to: [{ email: 'x@rcpt.tern.test', name: 'X\nBcc: v@evil.example' }] }, 400, 'body.to.0.name'],
      [{ ...base, from: { email: 'shop@web.tern.test', name: 'S\r' } }, 400, 'body.from.name'],
      [{ ...base, reply_to: { email: 'r@web.tern.test\r\nBcc: v@evil.example' } }, 400, 'body.reply_to.email'],
      [{ ...base, headers: { 'X-Ok': 'a\r\nBcc: v@evil.example' } }, 400, 'body.headers.X-Ok'],
      [{ ...base, headers: { 'Bad Name': 'v' } }, 400, 'body.headers.Bad Name'],
      [{ ...base, headers: { 'DKIM-Signature': 'v=1' } }, 400, 'body.headers.DKIM-Signature'],
      [{ ...base, headers: { 'x-tern-campaign': 'c' } }, 400, 'body.headers.x-tern-campaign'],
      [{ ...base, from: { email: 'not-an-address' } }, 400, 'body.from.email'],
      [{ ...base, to: [{ email: 'x@rcpt.tern.test', substitutions: { s: 'a\r\nBcc: v@evil.example' } }], subject: 'Hi {{ s }}' }, 400, 'body.to[0].substitutions'],
      [{ ...base, html: '{% if %}' }, 400, 'body.html'],
      [{ ...base, text: undefined }, 400, 'body.html'],
      [{ ...base, to: [{ email: 'nope' }, { email: 'also nope' }] }, 422, 'body.to[0].email'],
      [{ ...base, to: Array.from({ length: 1001 }, (_, i) => ({ email: `r${i}@rcpt.tern.test` })) }, 400, 'body.to'],
    ];
    for (const [body, status, field] of cases) {
      const r = await send(body);
      expect(r.status, JSON.stringify(r.body)).toBe(status);
      expect(r.body.error.details.map((d: { field: string }) => d.field), JSON.stringify(r.body)).toContain(field);
    }
    const malformed = await call('POST', '/api/v1/messages', { token: key, raw: '{"from": ' });
    expect(malformed.status).toBe(400);
    expect(malformed.body.error.message).toMatch(/not valid JSON/);
    const big = await call('POST', '/api/v1/messages', { token: key, raw: JSON.stringify({ ...base, text: 'x'.repeat(11 * 1024 * 1024) }) });
    expect(big.status).toBe(413);
    expect(big.body.error.code).toBe('payload_too_large');
    // a body between the API's default limit and this route's is taken
    expect((await send({ ...base, to: [{ email: 'big@rcpt.tern.test' }], text: 'y'.repeat(2 * 1024 * 1024) })).status).toBe(202);
    expect((await send(base, '/api/v1/messages', viewer)).status).toBe(403);
    const written = node.store.events(seqBefore).filter((e) => e.tenant === 'web');
    expect(written.map((e) => e.type).filter((t) => t === 'accepted')).toHaveLength(1); // only the large one
  });

  it('an over-quota tenant gets 429 and nothing is stored; a suspended one 403', async () => {
    expect((await call('PATCH', '/api/v1/tenants/web', { token: TOKEN, body: { daily_quota: 1 } })).status).toBe(200);
    const before = node.store.lastSeq;
    const r = await send({ from: { email: 'shop@web.tern.test' }, to: [{ email: 'q1@rcpt.tern.test' }, { email: 'q2@rcpt.tern.test' }], subject: 's', text: 't' });
    expect(r.status).toBe(429);
    expect(r.body.error.code).toBe('quota_exceeded');
    expect(node.store.events(before).filter((e) => e.type === 'accepted')).toEqual([]);
    await call('PATCH', '/api/v1/tenants/web', { token: TOKEN, body: { daily_quota: null, suspended: true } });
    expect((await send({ from: { email: 'shop@web.tern.test' }, to: [{ email: 'q1@rcpt.tern.test' }], subject: 's', text: 't' })).body.error.code).toBe('tenant_suspended');
    await call('PATCH', '/api/v1/tenants/web', { token: TOKEN, body: { suspended: false } });
  });

  it('a replay with the same idempotency key answers the first result; another body with it is 409', async () => {
    const body = { from: { email: 'shop@web.tern.test' }, to: [{ email: 'idem@rcpt.tern.test' }], subject: 'once', text: 'once', idempotency_key: 'order-42' };
    const [a, b] = await Promise.all([send(body), send(body)]);
    expect(a.status).toBe(202);
    expect(b).toMatchObject({ status: 202, body: a.body });
    expect((await send(body)).body).toEqual(a.body);
    const other = await send({ ...body, subject: 'twice' });
    expect(other.status).toBe(409);
    expect(other.body.error.code).toBe('idempotency_conflict');
    await mailTo('idem@rcpt.tern.test');
    await new Promise((r) => setTimeout(r, 300));
    expect(sink.messages.filter((m) => m.to.includes('idem@rcpt.tern.test'))).toHaveLength(1);
  });
});

describe('POST /api/v1/messages/raw', () => {
  it('takes an RFC 5322 message with LF line ends (made CRLF), in base64 too, through the same preparation', async () => {
    const message = 'From: App <app@web.tern.test>\nTo: raw@rcpt.tern.test\nSubject: Raw one\nX-Tern-Campaign: raws\n\nBody line\n';
    const r = await send({ mail_from: 'app@web.tern.test', rcpt_to: ['raw@rcpt.tern.test', 'gone@rcpt.tern.test', 'bad'], message }, '/api/v1/messages/raw');
    expect(r.status).toBe(202);
    expect(r.body.recipients.map((x: { status: string }) => x.status)).toEqual(['queued', 'suppressed', 'rejected']);
    const got = await mailTo('raw@rcpt.tern.test');
    expect(got).toMatch(/^Subject: Raw one\r\n/m);
    expect(got).toMatch(/^Feedback-ID: raws:web:/m);
    expect(got).toMatch(/^Message-ID: </m);
    const b64 = await send({ mail_from: 'app@web.tern.test', rcpt_to: ['raw64@rcpt.tern.test'], message: Buffer.from(message.replace('raw@', 'raw64@')).toString('base64'), encoding: 'base64' }, '/api/v1/messages/raw');
    expect(b64.status).toBe(202);
    await mailTo('raw64@rcpt.tern.test');
  });

  it('refuses a bare CR, a missing From, and all-invalid recipients with 4xx, storing nothing', async () => {
    const before = node.store.lastSeq;
    const cr = await send({ mail_from: 'app@web.tern.test', rcpt_to: ['r@rcpt.tern.test'], message: 'From: a@web.tern.test\r\nSubject: x\rBcc: v@evil.example\r\n\r\nx\r\n' }, '/api/v1/messages/raw');
    expect(cr).toMatchObject({ status: 422, body: { error: { code: 'message_refused', message: expect.stringMatching(/bare CR/) } } });
    const noFrom = await send({ mail_from: 'app@web.tern.test', rcpt_to: ['r@rcpt.tern.test'], message: 'Subject: x\n\nx\n' }, '/api/v1/messages/raw');
    expect(noFrom).toMatchObject({ status: 422, body: { error: { message: expect.stringMatching(/no From header/) } } });
    expect((await send({ mail_from: 'app@web.tern.test', rcpt_to: ['bad'], message: 'From: a@web.tern.test\n\nx\n' }, '/api/v1/messages/raw')).status).toBe(422);
    expect(node.store.events(before).filter((e) => e.type === 'accepted')).toEqual([]);
  });
});

describe('GET /api/v1/stats', () => {
  it('counts per day, domain and campaign from the events, with rates; every tenant role may read', async () => {
    await send({ from: { email: 'shop@web.tern.test' }, to: [{ email: 's1@stats-a.tern.test' }, { email: 's2@stats-b.tern.test' }], subject: 'stats', text: 't', campaign: 'statsy' });
    await sink.waitFor(() => ['s1@stats-a.tern.test', 's2@stats-b.tern.test'].every((a) => sink.messages.some((m) => m.to.includes(a))), 15_000);
    let byCampaign: any;
    for (let i = 0; i < 50; i++) {
      byCampaign = (await call('GET', '/api/v1/stats?by=campaign', { token: viewer })).body;
      if (byCampaign.items.find((x: { key: string }) => x.key === 'statsy')?.delivered === 2) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(byCampaign.items.find((x: { key: string }) => x.key === 'statsy')).toMatchObject({ accepted: 2, delivered: 2, bounced: 0, delivery_rate: 1, bounce_rate: 0, open_rate: 0 });
    expect(byCampaign.items.find((x: { key: string }) => x.key === 'spring-sale')).toMatchObject({ accepted: 2, suppressed: 1 });

    const byDomain = (await call('GET', '/api/v1/stats?by=domain', { token: key })).body;
    expect(byDomain.items.find((x: { key: string }) => x.key === 'stats-a.tern.test')).toMatchObject({ accepted: 1, delivered: 1 });
    const today = new Date().toISOString().slice(0, 10);
    const byDay = (await call('GET', `/api/v1/stats?from=${today}&to=${today}`, { token: key })).body;
    expect(byDay).toMatchObject({ from: today, to: today, by: 'day' });
    expect(byDay.items).toHaveLength(1);
    expect(byDay.items[0]).toMatchObject({ key: today, suppressed: 2 });
    expect(byDay.items[0].accepted).toBe(byDay.totals.accepted);
    expect(byDay.totals.accepted).toBeGreaterThanOrEqual(9);
    // another tenant sees none of it; a range in the past is empty
    expect((await call('GET', '/api/v1/stats?from=2020-01-01&to=2020-01-31', { token: key })).body.items).toEqual([]);
    expect((await call('GET', '/api/v1/stats?from=2020-02-01&to=2020-01-31', { token: key })).status).toBe(400);
    expect((await call('GET', '/api/v1/stats', { token: TOKEN, headers: { 'x-tern-tenant': 'web' } })).body.totals.accepted).toBe(byDay.totals.accepted);
  });
});
