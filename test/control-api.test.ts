/**
 * The control API over real sockets: a node delivering to a sink, driven as an operator and as tenants —
 * tenants and keys, SMTP credentials that send at once, roles, revocation, suspension and quota, users with
 * invitations, sessions and CSRF, password resets mailed through Tern, rate limits, bad input, the audit log.
 */
import fc from 'fast-check';
import nodemailer from 'nodemailer';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSink, type Sink } from '../bench/sink.js';
import type { TernNode } from '../src/node.js';
import { controlApi, mailTo, sendAs, sessionCookie, tokenIn, type Answer } from './support/control.js';
import { startTestNode } from './support/node.js';

const TOKEN = 'control-api-test-operator-token';
let sink: Sink;
let node: TernNode;
let call: ReturnType<typeof controlApi>;
/** the owner key of tenant acme, made by the operator */
let owner: string;

const op = (method: string, path: string, body?: unknown, headers?: Record<string, string>) => call(method, path, { token: TOKEN, body, headers });
const as = (token: string, method: string, path: string, body?: unknown) => call(method, path, { token, body });

async function makeKey(role: string, token = owner): Promise<string> {
  const r = await as(token, 'POST', '/api/v1/api-keys', { name: `${role} key`, role });
  expect(r.status).toBe(201);
  return r.body.token;
}

beforeAll(async () => {
  sink = await startSink({ keep: true });
  node = await startTestNode({
    control: { admin_token: TOKEN, mail_from: 'tern@node.tern.test', public_url: 'https://tern.example', login_rate: '10/min' },
    routes: [{ domain: '*.tern.test', host: '127.0.0.1', port: sink.port }],
    pools: {
      default: { sources: [{ name: 'main', address: '127.0.0.1', ehlo: 'main.tern.test' }] },
      bulk: { sources: [{ name: 'bulk', address: '127.0.0.2', ehlo: 'bulk.tern.test' }] },
    },
    retry: { schedule: ['1h'] },
  });
  call = controlApi(node.ports.control);
});

afterAll(async () => {
  await node?.stop();
  await sink?.close();
});

describe('tenants, keys and SMTP credentials', () => {
  it('the operator makes a tenant and its key; the tenant makes an SMTP credential that sends at once, from its pool', async () => {
    // acme sends From domains it has not verified (test/domains.test.ts covers the refusal)
    const t = await op('POST', '/api/v1/tenants', { id: 'acme', name: 'Acme Inc', pool: 'bulk', allow_unverified_domains: true });
    expect(t.status).toBe(201);
    expect(t.body).toMatchObject({ id: 'acme', name: 'Acme Inc', pool: 'bulk', suspended: false, daily_quota: null, managed_by: 'api', allow_unverified_domains: true });
    expect((await op('POST', '/api/v1/tenants', { id: 'acme' })).status).toBe(409);
    expect((await op('POST', '/api/v1/tenants', { id: 'other', pool: 'nope' })).body.error.details[0].field).toBe('body.pool');

    const k = await op('POST', '/api/v1/tenants/acme/api-keys', { name: 'first', role: 'owner' });
    expect(k.status).toBe(201);
    expect(k.body.token).toMatch(/^tern_[a-z0-9]{16}_[A-Za-z0-9_-]{43}$/);
    owner = k.body.token;

    const c = await as(owner, 'POST', '/api/v1/smtp-credentials', { name: 'web shop' });
    expect(c.status).toBe(201);
    expect(c.body).toMatchObject({ name: 'web shop', username: expect.stringMatching(/^smtp-/), password: expect.any(String) });
    const listed = await as(owner, 'GET', '/api/v1/smtp-credentials');
    expect(listed.body.items).toEqual([expect.objectContaining({ id: c.body.id, username: c.body.username })]);
    expect(JSON.stringify(listed.body)).not.toContain(c.body.password);

    const queueId = await sendAs(node.ports.submission, { user: c.body.username, pass: c.body.password }, 'rcpt1@acme.tern.test');
    await sink.waitFor(() => sink.messages.some((m) => m.to.includes('rcpt1@acme.tern.test')), 15_000);
    // API tenants send from their pool
    expect(sink.messages.find((m) => m.to.includes('rcpt1@acme.tern.test'))!.remoteAddress).toBe('127.0.0.2');

    let msg!: Answer;
    for (let i = 0; i < 50; i++) {
      msg = await as(owner, 'GET', `/api/v1/messages/${queueId}`);
      if (msg.body.recipients?.[0]?.status === 'delivered') break;
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(msg.status).toBe(200);
    expect(msg.body).toMatchObject({ queue_id: queueId, recipients: [{ rcpt: 'rcpt1@acme.tern.test', status: 'delivered', attempts: 1, held: false }] });
    expect(msg.body.history.map((h: { type: string }) => h.type)).toEqual(['accepted', 'delivered']);
    expect(msg.body.tenant).toBeUndefined();

    const events = await as(owner, 'GET', '/api/v1/events?rcpt=RCPT1@acme.tern.test&order=asc');
    expect(events.body.items.map((e: { type: string; queue_id: string }) => [e.type, e.queue_id])).toEqual([
      ['accepted', queueId],
      ['delivered', queueId],
    ]);
    const delivered = await as(owner, 'GET', '/api/v1/events?type=delivered');
    expect(delivered.body.items.every((e: { type: string; tenant: string }) => e.type === 'delivered' && e.tenant === 'acme')).toBe(true);

    expect((await as(owner, 'DELETE', `/api/v1/smtp-credentials/${c.body.id}`)).status).toBe(204);
    await expect(sendAs(node.ports.submission, { user: c.body.username, pass: c.body.password }, 'rcpt2@acme.tern.test')).rejects.toMatchObject({ responseCode: 535 });
    // the config's bootstrap credential still works
    await sendAs(node.ports.submission, { user: 'tenant1', pass: 'secret-1' }, 'rcpt3@default.tern.test');
  });

  it('the operator acts for a tenant by naming it in X-Tern-Tenant; a tenant key cannot', async () => {
    expect((await op('GET', '/api/v1/suppressions')).body.error.code).toBe('tenant_required');
    const listed = await op('GET', '/api/v1/api-keys', undefined, { 'x-tern-tenant': 'acme' });
    expect(listed.status).toBe(200);
    expect(listed.body.items[0]).toMatchObject({ tenant: 'acme', role: 'owner' });
    expect((await op('GET', '/api/v1/api-keys', undefined, { 'x-tern-tenant': 'nope' })).status).toBe(404);
    const other = await call('GET', '/api/v1/api-keys', { token: owner, headers: { 'x-tern-tenant': 'default' } });
    expect(other.status).toBe(400);
    expect(JSON.stringify(other.body)).not.toContain('tenant1');
  });

  it("a tenant's key streams its own events live, and no other tenant's", async () => {
    const ac = new AbortController();
    const res = await fetch(`http://127.0.0.1:${node.ports.control}/api/v1/events/stream?since=0`, { headers: { authorization: `Bearer ${owner}` }, signal: ac.signal });
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/text\/event-stream/);
    const reader = res.body!.getReader();
    let text = '';
    while (!/"type":"delivered"/.test(text)) text += new TextDecoder().decode((await reader.read()).value);
    ac.abort();
    const tenants = [...text.matchAll(/"tenant":"([^"]*)"/g)].map((m) => m[1]);
    expect(tenants.length).toBeGreaterThan(0);
    expect(new Set(tenants)).toEqual(new Set(['acme']));
    expect((await as(owner, 'GET', '/api/v1/events/stream?tenant=default')).status).toBe(403);
  });

  it('config tenants are listed; what the file owns is changed only there', async () => {
    const d = await op('GET', '/api/v1/tenants/default');
    expect(d.body).toMatchObject({ id: 'default', managed_by: 'config', pool: 'default' });
    expect((await op('PATCH', '/api/v1/tenants/default', { pool: 'bulk' })).body.error.code).toBe('managed_by_config');
    expect((await op('DELETE', '/api/v1/tenants/default')).status).toBe(409);
    const named = await op('PATCH', '/api/v1/tenants/default', { name: 'The node itself' });
    expect(named.body).toMatchObject({ name: 'The node itself', pool: 'default' });
  });
});

describe('roles', () => {
  it('each role gets what the routes allow it, and nothing more', async () => {
    const [admin, marketer, viewer] = [await makeKey('admin'), await makeKey('marketer'), await makeKey('viewer')];
    const status = async (token: string, method: string, path: string, body?: unknown) => (await as(token, method, path, body)).status;

    expect(await status(viewer, 'GET', '/api/v1/suppressions')).toBe(200);
    expect(await status(viewer, 'GET', '/api/v1/events')).toBe(200);
    expect(await status(viewer, 'POST', '/api/v1/suppressions', { address: 'v@x.tern.test' })).toBe(403);
    expect(await status(viewer, 'GET', '/api/v1/api-keys')).toBe(403);
    expect(await status(viewer, 'GET', '/api/v1/audit')).toBe(403);

    expect(await status(marketer, 'POST', '/api/v1/suppressions', { address: 'm@x.tern.test', reason: 'asked by phone' })).toBe(201);
    expect(await status(marketer, 'POST', '/api/v1/suppressions', { address: 'M@x.tern.test' })).toBe(200);
    expect(await status(marketer, 'POST', '/api/v1/api-keys', { name: 'x', role: 'viewer' })).toBe(403);
    expect(await status(marketer, 'POST', '/api/v1/smtp-credentials', { name: 'x' })).toBe(403);
    expect(await status(marketer, 'GET', '/api/v1/users')).toBe(403);

    const denied = await as(admin, 'POST', '/api/v1/api-keys', { name: 'x', role: 'owner' });
    expect(denied.status).toBe(403);
    expect(denied.body.error.message).toMatch(/admin cannot make a key with the role owner/);
    expect(await status(admin, 'POST', '/api/v1/api-keys', { name: 'x', role: 'viewer' })).toBe(201);
    expect(await status(admin, 'GET', '/api/v1/audit')).toBe(403);
    expect(await status(owner, 'GET', '/api/v1/audit')).toBe(200);

    // tenant credentials never reach operator routes
    for (const token of [owner, admin]) {
      expect(await status(token, 'GET', '/api/v1/tenants')).toBe(403);
      expect(await status(token, 'GET', '/api/v1/queues')).toBe(403);
      expect(await status(token, 'POST', '/api/v1/reload')).toBe(403);
    }
    expect((await call('GET', '/api/v1/suppressions')).status).toBe(401);
    expect((await call('GET', '/api/v1/suppressions', { token: 'tern_0000000000000000_' + 'a'.repeat(43) })).status).toBe(401);
    expect((await call('GET', '/api/v1/suppressions', { headers: { authorization: 'Basic abc' } })).status).toBe(401);
  });

  it('a revoked key stops working with the next request', async () => {
    const made = await as(owner, 'POST', '/api/v1/api-keys', { name: 'short-lived', role: 'viewer' });
    expect((await as(made.body.token, 'GET', '/api/v1/suppressions')).status).toBe(200);
    const lastUsed = async () => (await as(owner, 'GET', '/api/v1/api-keys?limit=1000')).body.items.find((k: { id: string }) => k.id === made.body.id).last_used_at;
    for (let i = 0; i < 50 && (await lastUsed()) === null; i++) await new Promise((r) => setTimeout(r, 20));
    expect(await lastUsed()).toEqual(expect.any(Number));
    expect((await as(owner, 'DELETE', `/api/v1/api-keys/${made.body.id}`)).status).toBe(204);
    const after = await as(made.body.token, 'GET', '/api/v1/suppressions');
    expect(after.status).toBe(401);
    expect(after.body.error.code).toBe('unauthorized');
    expect((await as(owner, 'DELETE', `/api/v1/api-keys/${made.body.id}`)).status).toBe(404);
  });
});

describe('sending limits', () => {
  it('a suspended tenant is refused at RCPT, and sends again once resumed', async () => {
    const c = await as(owner, 'POST', '/api/v1/smtp-credentials', { name: 'limits' });
    const auth = { user: c.body.username, pass: c.body.password };
    const s = await op('PATCH', '/api/v1/tenants/acme', { suspended: true, suspended_reason: 'complaints spike' });
    expect(s.body).toMatchObject({ suspended: true, suspended_reason: 'complaints spike' });
    await expect(sendAs(node.ports.submission, auth, 'r@acme.tern.test')).rejects.toMatchObject({ responseCode: 550, response: expect.stringMatching(/5\.7\.1 Sending is suspended for this account \(complaints spike\)/) });
    // the API still answers a suspended tenant
    expect((await as(owner, 'GET', '/api/v1/suppressions')).status).toBe(200);
    expect((await op('PATCH', '/api/v1/tenants/acme', { suspended: false })).body).toMatchObject({ suspended: false, suspended_reason: null });
    await sendAs(node.ports.submission, auth, 'r@acme.tern.test');
  });

  it('a daily quota counts accepted recipients and refuses past it with 452 4.7.1', async () => {
    const c = await as(owner, 'POST', '/api/v1/smtp-credentials', { name: 'quota' });
    const auth = { user: c.body.username, pass: c.body.password };
    await op('PATCH', '/api/v1/tenants/acme', { daily_quota: 3 });
    await sendAs(node.ports.submission, auth, ['q1@acme.tern.test', 'q2@acme.tern.test']);
    // the third recipient fits, the fourth does not: refused at its RCPT, the message goes to the third
    const info = await nodemailer
      .createTransport({ host: '127.0.0.1', port: node.ports.submission, auth, ignoreTLS: true })
      .sendMail({ from: 'app@sender.tern.test', to: ['q3@acme.tern.test', 'q4@acme.tern.test'], text: 'x' });
    expect(info.accepted).toEqual(['q3@acme.tern.test']);
    expect(info.rejectedErrors?.[0]).toMatchObject({ responseCode: 452, response: expect.stringMatching(/4\.7\.1 Daily sending quota of 3 recipients reached/) });
    await expect(sendAs(node.ports.submission, auth, 'q4@acme.tern.test')).rejects.toMatchObject({ responseCode: 452 });
    expect((await op('GET', '/api/v1/tenants/acme')).body).toMatchObject({ daily_quota: 3, sent_today: 3 });
    await op('PATCH', '/api/v1/tenants/acme', { daily_quota: null });
    await sendAs(node.ports.submission, auth, 'q4@acme.tern.test');
  });
});

describe('users and sessions', () => {
  let cookie = '';
  let csrf = '';

  it('an invitation goes out by mail through Tern; accepting it sets the password, once', async () => {
    const inv = await as(owner, 'POST', '/api/v1/invitations', { email: 'Ann@People.tern.test', role: 'admin' });
    expect(inv.status).toBe(201);
    expect(inv.body).toMatchObject({ email: 'ann@people.tern.test', role: 'admin' });
    const mail = await mailTo(sink, 'ann@people.tern.test', /invited to Acme Inc/);
    expect(mail).toContain('https://tern.example/accept-invitation?token=');
    const token = tokenIn(mail);
    expect((await as(owner, 'GET', '/api/v1/invitations')).body.items).toHaveLength(1);

    expect((await call('POST', '/api/v1/invitations/accept', { body: { token, password: 'short' } })).status).toBe(400);
    const accepted = await call('POST', '/api/v1/invitations/accept', { body: { token, password: 'a long enough password', name: 'Ann' } });
    expect(accepted.status).toBe(201);
    expect(accepted.body).toMatchObject({ email: 'ann@people.tern.test', role: 'admin', tenant: 'acme', name: 'Ann' });
    expect(accepted.body.password_hash).toBeUndefined();
    expect((await call('POST', '/api/v1/invitations/accept', { body: { token, password: 'a long enough password' } })).body.error.code).toBe('invalid_token');
    expect((await as(owner, 'GET', '/api/v1/invitations')).body.items).toHaveLength(0);
    const users = await as(owner, 'GET', '/api/v1/users');
    expect(users.body.items).toEqual([expect.objectContaining({ email: 'ann@people.tern.test', role: 'admin' })]);
  });

  it('login sets an HttpOnly SameSite cookie; unsafe requests with it need the CSRF token; logout ends it', async () => {
    expect((await call('POST', '/api/v1/auth/login', { body: { email: 'ann@people.tern.test', password: 'wrong password!' } })).status).toBe(401);
    const login = await call('POST', '/api/v1/auth/login', { body: { email: 'ANN@people.tern.test', password: 'a long enough password' } });
    expect(login.status).toBe(200);
    const set = login.headers.get('set-cookie')!;
    expect(set).toMatch(/HttpOnly/);
    expect(set).toMatch(/SameSite=Lax/);
    expect(set).not.toMatch(/Secure/); // plain HTTP listener
    cookie = sessionCookie(login);
    csrf = login.body.csrf_token;
    expect(login.body.user).toMatchObject({ email: 'ann@people.tern.test', role: 'admin' });

    const me = await call('GET', '/api/v1/auth/me', { cookie });
    expect(me.body).toMatchObject({ kind: 'session', tenant: 'acme', role: 'admin', csrf_token: csrf });

    const noCsrf = await call('POST', '/api/v1/suppressions', { cookie, body: { address: 'csrf@x.tern.test' } });
    expect(noCsrf.status).toBe(403);
    expect(noCsrf.body.error.code).toBe('csrf_failed');
    expect((await call('POST', '/api/v1/suppressions', { cookie, body: { address: 'csrf@x.tern.test' }, headers: { 'x-tern-csrf': 'x'.repeat(43) } })).status).toBe(403);
    expect((await as(owner, 'GET', '/api/v1/suppressions/csrf@x.tern.test')).status).toBe(404);
    expect((await call('POST', '/api/v1/suppressions', { cookie, body: { address: 'csrf@x.tern.test' }, headers: { 'x-tern-csrf': csrf } })).status).toBe(201);
    // reading needs no CSRF token; admins do not reach owner-only routes
    expect((await call('GET', '/api/v1/suppressions/csrf@x.tern.test', { cookie })).status).toBe(200);
    expect((await call('GET', '/api/v1/audit', { cookie })).status).toBe(403);

    expect((await call('POST', '/api/v1/auth/logout', { cookie })).status).toBe(403);
    const out = await call('POST', '/api/v1/auth/logout', { cookie, headers: { 'x-tern-csrf': csrf } });
    expect(out.status).toBe(204);
    expect(out.headers.get('set-cookie')).toMatch(/tern_session=;/);
    expect((await call('GET', '/api/v1/auth/me', { cookie })).body.error.code).toBe('session_expired');
  });

  it('a role change applies to the next request; the last owner cannot be demoted', async () => {
    const ann = (await as(owner, 'GET', '/api/v1/users')).body.items[0];
    const login = await call('POST', '/api/v1/auth/login', { body: { email: 'ann@people.tern.test', password: 'a long enough password' } });
    const c = sessionCookie(login);
    expect((await call('GET', '/api/v1/api-keys', { cookie: c })).status).toBe(200);
    expect((await as(owner, 'PATCH', `/api/v1/users/${ann.id}`, { role: 'viewer' })).body.role).toBe('viewer');
    expect((await call('GET', '/api/v1/api-keys', { cookie: c })).status).toBe(403);
    // an admin cannot make anyone owner; an owner can
    expect((await as(owner, 'PATCH', `/api/v1/users/${ann.id}`, { role: 'owner' })).body.role).toBe('owner');
    expect((await as(owner, 'PATCH', `/api/v1/users/${ann.id}`, { role: 'admin' })).status).toBe(409);
    expect((await as(owner, 'DELETE', `/api/v1/users/${ann.id}`)).status).toBe(409);
  });

  it('a password reset mails a single-use link through Tern; it ends every session', async () => {
    const before = sessionCookie(await call('POST', '/api/v1/auth/login', { body: { email: 'ann@people.tern.test', password: 'a long enough password' } }));
    expect((await call('POST', '/api/v1/auth/password-reset', { body: { email: 'ann@people.tern.test' } })).status).toBe(202);
    // the same answer for an address without an account, and no mail
    expect((await call('POST', '/api/v1/auth/password-reset', { body: { email: 'nobody@people.tern.test' } })).status).toBe(202);
    const mail = await mailTo(sink, 'ann@people.tern.test', /Reset your Tern password/);
    expect(mail).toMatch(/^From: Tern <tern@node\.tern\.test>/m);
    expect(mail).toMatch(/^Feedback-ID: tern-account:default:transactional:/m);
    const token = tokenIn(mail);
    expect(mail).toContain(`https://tern.example/reset-password?token=${token}`);

    // it went through the spool, for the node's own tenant
    const events = await op('GET', '/api/v1/events?type=accepted&rcpt=ann@people.tern.test', undefined, { 'x-tern-tenant': 'default' });
    expect(events.body.items.length).toBeGreaterThanOrEqual(1);
    expect(events.body.items[0]).toMatchObject({ listener: 'control', campaign: 'tern-account', sender: 'tern@node.tern.test' });

    expect((await call('POST', '/api/v1/auth/password-reset/confirm', { body: { token, password: 'the new password' } })).status).toBe(204);
    expect((await call('POST', '/api/v1/auth/password-reset/confirm', { body: { token, password: 'another password' } })).body.error.code).toBe('invalid_token');
    expect((await call('GET', '/api/v1/auth/me', { cookie: before })).status).toBe(401);
    expect((await call('POST', '/api/v1/auth/login', { body: { email: 'ann@people.tern.test', password: 'a long enough password' } })).status).toBe(401);
    expect((await call('POST', '/api/v1/auth/login', { body: { email: 'ann@people.tern.test', password: 'the new password' } })).status).toBe(200);
    await new Promise((r) => setTimeout(r, 200));
    expect(sink.messages.filter((m) => m.to.includes('nobody@people.tern.test'))).toHaveLength(0);
  });

  it('login is rate-limited per address and account, with a JSON 429', async () => {
    const attempts: number[] = [];
    for (let i = 0; i < 11; i++) attempts.push((await call('POST', '/api/v1/auth/login', { body: { email: 'guess@people.tern.test', password: `guess number ${i}` } })).status);
    expect(attempts).toEqual([...Array(10).fill(401), 429]);
    const limited = await call('POST', '/api/v1/auth/login', { body: { email: 'guess@people.tern.test', password: 'guess again' } });
    expect(limited.body.error.code).toBe('rate_limited');
    expect(Number(limited.headers.get('retry-after'))).toBeGreaterThan(0);
    // another account from the same address is not blocked by it
    expect((await call('POST', '/api/v1/auth/login', { body: { email: 'ann@people.tern.test', password: 'the new password' } })).status).toBe(200);
  });
});

describe('bad input gets a 4xx and stores nothing', () => {
  it('header injection, unknown fields, bad types, malformed and oversized bodies', async () => {
    const auditBefore = (await op('GET', '/api/v1/audit?limit=1')).body.items[0].id;
    const keysBefore = (await as(owner, 'GET', '/api/v1/api-keys?limit=1000')).body.items.length;

    const injected = await as(owner, 'POST', '/api/v1/api-keys', { name: 'ok\r\nX-Evil: 1', role: 'viewer' });
    expect(injected.status).toBe(400);
    expect(injected.body.error).toMatchObject({ code: 'invalid_request', details: [{ field: 'body.name', message: expect.stringMatching(/one line/) }] });
    const unknown = await as(owner, 'POST', '/api/v1/api-keys', { name: 'x', role: 'viewer', tenant: 'other' });
    expect(unknown.body.error.details).toEqual([{ field: 'body.tenant', message: 'is not a field of this request' }]);
    expect((await as(owner, 'POST', '/api/v1/api-keys', { name: 'x', role: 'superuser' })).status).toBe(400);
    expect((await as(owner, 'GET', '/api/v1/suppressions?limit=5000')).body.error.details[0].field).toBe('query.limit');
    expect((await as(owner, 'GET', '/api/v1/suppressions?cursor=nope')).body.error.details[0].field).toBe('query.cursor');

    const malformed = await call('POST', '/api/v1/api-keys', { token: owner, raw: '{"name": "x", ' });
    expect(malformed.status).toBe(400);
    expect(malformed.body.error.code).toBe('invalid_request');
    const noBody = await call('POST', '/api/v1/api-keys', { token: owner });
    expect(noBody.status).toBe(400);
    const wrongType = await call('POST', '/api/v1/api-keys', { token: owner, raw: 'name=x', headers: { 'content-type': 'application/x-www-form-urlencoded' } });
    expect(wrongType.status).toBe(415);
    expect(wrongType.body.error.code).toBe('unsupported_media_type');
    const big = await call('POST', '/api/v1/suppressions', { token: owner, raw: JSON.stringify({ address: 'a@b.tern.test', reason: 'x'.repeat(2 * 1024 * 1024) }) });
    expect(big.status).toBe(413);
    expect(big.body.error.code).toBe('payload_too_large');

    expect((await as(owner, 'GET', '/api/v1/api-keys?limit=1000')).body.items.length).toBe(keysBefore);
    expect((await as(owner, 'GET', '/api/v1/suppressions/a@b.tern.test')).status).toBe(404);
    expect((await op('GET', '/api/v1/audit?limit=1')).body.items[0].id).toBe(auditBefore);
  });

  it('property: any field with CR, LF, NUL or another control character is refused and nothing is stored', async () => {
    const auditBefore = (await op('GET', '/api/v1/audit?limit=1')).body.items[0].id;
    const breakers = fc.constantFrom('\r', '\n', '\0', '\r\n', '\u2028', '\u0085', '\u001b');
    const injected = fc.tuple(fc.string({ maxLength: 20 }), breakers, fc.string({ maxLength: 20 })).map(([a, b, c]) => a + b + c);
    await fc.assert(
      fc.asyncProperty(injected, fc.constantFrom('address', 'reason', 'name', 'email'), async (v, field) => {
        const [path, body] =
          field === 'address' ? ['/api/v1/suppressions', { address: `a${v}@x.tern.test` }]
          : field === 'reason' ? ['/api/v1/suppressions', { address: 'ok@x.tern.test', reason: v }]
          : field === 'name' ? ['/api/v1/smtp-credentials', { name: v }]
          : ['/api/v1/invitations', { email: `${v}@people.tern.test`, role: 'viewer' }];
        const r = await as(owner, 'POST', path, body);
        expect(r.status).toBe(400);
        expect(r.body.error.code).toBe('invalid_request');
      }),
      { numRuns: 60 },
    );
    expect((await as(owner, 'GET', '/api/v1/suppressions/ok@x.tern.test')).status).toBe(404);
    expect((await op('GET', '/api/v1/audit?limit=1')).body.items[0].id).toBe(auditBefore);
  });
});

describe('audit log', () => {
  it('has an entry for every change: who, what, when, from where; owners see their tenant, the operator all', async () => {
    await op('POST', '/api/v1/tenants', { id: 'zeta', daily_quota: 100 });
    await op('POST', '/api/v1/tenants/zeta/api-keys', { name: 'z', role: 'owner' });
    const mine = await as(owner, 'GET', '/api/v1/audit?limit=1000');
    const actions = new Set(mine.body.items.map((e: { action: string }) => e.action));
    for (const a of ['tenant.create', 'tenant.suspend', 'tenant.resume', 'tenant.update', 'api_key.create', 'api_key.revoke', 'smtp_credential.create', 'smtp_credential.delete', 'suppression.add', 'invitation.create', 'invitation.accept', 'user.login', 'user.logout', 'user.update', 'user.password_reset_request', 'user.password_reset'])
      expect(actions, a).toContain(a);
    expect(mine.body.items.every((e: { tenant: string }) => e.tenant === 'acme')).toBe(true);
    const revoke = mine.body.items.find((e: { action: string }) => e.action === 'api_key.revoke');
    expect(revoke).toMatchObject({ actor: { kind: 'api_key', role: 'owner', tenant: 'acme' }, ip: '127.0.0.1', user_agent: expect.any(String), target: { type: 'api_key' }, at: expect.any(Number) });
    const bySession = mine.body.items.find((e: { action: string; actor: { kind: string } }) => e.action === 'suppression.add' && e.actor.kind === 'session');
    expect(bySession.actor).toMatchObject({ role: 'admin', name: 'ann@people.tern.test' });
    // no secret is ever in the log
    expect(JSON.stringify(mine.body)).not.toMatch(/tern_[a-z0-9]{16}_|password"\s*:\s*"[^"]/);

    const all = await op('GET', '/api/v1/audit?limit=1000');
    expect(all.body.items.some((e: { tenant: string }) => e.tenant === 'zeta')).toBe(true);
    const one = await op('GET', '/api/v1/audit?limit=1000', undefined, { 'x-tern-tenant': 'zeta' });
    expect(one.body.items.map((e: { action: string }) => e.action)).toEqual(['api_key.create', 'tenant.create']);

    const keysOnly = await as(owner, 'GET', '/api/v1/audit?action=api_key');
    expect(keysOnly.body.items.length).toBeGreaterThan(0);
    expect(keysOnly.body.items.every((e: { action: string }) => e.action.startsWith('api_key.'))).toBe(true);

    const first = await as(owner, 'GET', '/api/v1/audit?limit=2');
    const second = await as(owner, 'GET', `/api/v1/audit?limit=2&cursor=${first.body.next_cursor}`);
    expect(second.body.items[0].id).toBeLessThan(first.body.items[1].id);
  });

  it('a deleted tenant loses its keys and users at once, and its id is never reused', async () => {
    const zetaKey = (await op('POST', '/api/v1/tenants/zeta/api-keys', { name: 'z2', role: 'viewer' })).body.token;
    expect((await as(zetaKey, 'GET', '/api/v1/suppressions')).status).toBe(200);
    expect((await op('DELETE', '/api/v1/tenants/zeta')).status).toBe(204);
    expect((await as(zetaKey, 'GET', '/api/v1/suppressions')).status).toBe(401);
    expect((await op('GET', '/api/v1/tenants/zeta')).status).toBe(404);
    expect((await op('POST', '/api/v1/tenants', { id: 'zeta' })).status).toBe(409);
    expect((await op('GET', '/api/v1/tenants')).body.items.map((t: { id: string }) => t.id)).not.toContain('zeta');
  });
});

describe('API rate limit', () => {
  it('counts per credential and answers 429 JSON past it', async () => {
    const limited = await startTestNode({ control: { admin_token: TOKEN, api_rate: '3/min' } });
    try {
      const c = controlApi(limited.ports.control);
      await c('POST', '/api/v1/tenants', { token: TOKEN, body: { id: 'r' } });
      const key = (await c('POST', '/api/v1/tenants/r/api-keys', { token: TOKEN, body: { name: 'k', role: 'viewer' } })).body.token;
      const statuses = [];
      for (let i = 0; i < 4; i++) statuses.push((await c('GET', '/api/v1/suppressions', { token: key })).status);
      expect(statuses).toEqual([200, 200, 200, 429]);
      const r = await c('GET', '/api/v1/suppressions', { token: key });
      expect(r.body.error.code).toBe('rate_limited');
      expect(r.headers.get('retry-after')).toMatch(/^\d+$/);
      // the operator token has its own count (it made 2 requests)
      expect((await c('GET', '/api/v1/tenants', { token: TOKEN })).status).toBe(200);
    } finally {
      await limited.stop();
    }
  });
});
