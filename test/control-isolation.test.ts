/**
 * Tenant isolation and the OpenAPI document, both checked against the listener's own route table, so that a
 * route added later is covered without anyone remembering to: every tenant-scoped route is called with
 * tenant B's credentials (API key and session) against tenant A's resources, and answers 404 or B's own data,
 * never anything of A's; every route appears in the OpenAPI document, which is well-formed.
 */
import { Ajv2020 } from 'ajv/dist/2020.js';
import type { FastifyInstance } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSink, type Sink } from '../bench/sink.js';
import type { RouteEntry } from '../src/control/api.js';
import { isTenantScoped } from '../src/control/auth.js';
import type { TernNode } from '../src/node.js';
import { controlApi, mailTo, sendAs, sessionCookie, tokenIn, type Answer, type CallOptions } from './support/control.js';
import { startTestNode } from './support/node.js';

const TOKEN = 'isolation-test-operator-token';
let sink: Sink;
let node: TernNode;
let call: ReturnType<typeof controlApi>;
let routes: RouteEntry[];

/** what tenant A has, by kind; every value is something B must never see */
const A = { domain: 'alpha-sender.tern.test', key: '', keyId: '', credId: '', credUser: '', credPass: '', userId: '', inviteId: '', messageId: '', webhookId: '', suppressed: 'kept@alpha-people.tern.test' };
let bKey = '';
let bSession: { cookie: string; csrf: string } = { cookie: '', csrf: '' };

async function tenantWithOwner(id: string): Promise<string> {
  // they send From domains they have not verified
  expect((await call('POST', '/api/v1/tenants', { token: TOKEN, body: { id, allow_unverified_domains: true } })).status).toBe(201);
  return (await call('POST', `/api/v1/tenants/${id}/api-keys`, { token: TOKEN, body: { name: `${id} owner`, role: 'owner' } })).body.token;
}

async function userOf(key: string, email: string, password: string): Promise<string> {
  await call('POST', '/api/v1/invitations', { token: key, body: { email, role: 'admin' } });
  const token = tokenIn(await mailTo(sink, email, /invited/));
  return (await call('POST', '/api/v1/invitations/accept', { body: { token, password } })).body.id;
}

beforeAll(async () => {
  sink = await startSink({ keep: true });
  node = await startTestNode({ control: { admin_token: TOKEN, mail_from: 'tern@node.tern.test' }, routes: [{ domain: '*.tern.test', host: '127.0.0.1', port: sink.port }], webhook_delivery: { allow_networks: ['127.0.0.0/8'] } });
  call = controlApi(node.ports.control);
  routes = (node as unknown as { control: FastifyInstance }).control.controlRoutes;

  A.key = await tenantWithOwner('alpha');
  bKey = await tenantWithOwner('beta');
  const viewer = await call('POST', '/api/v1/api-keys', { token: A.key, body: { name: 'alpha viewer', role: 'viewer' } });
  A.keyId = viewer.body.id;
  const cred = await call('POST', '/api/v1/smtp-credentials', { token: A.key, body: { name: 'alpha app' } });
  [A.credId, A.credUser, A.credPass] = [cred.body.id, cred.body.username, cred.body.password];
  await call('POST', '/api/v1/suppressions', { token: A.key, body: { address: A.suppressed, reason: 'alpha reason' } });
  expect((await call('POST', '/api/v1/domains', { token: A.key, body: { domain: A.domain } })).status).toBe(201);
  A.webhookId = (await call('POST', '/api/v1/webhooks', { token: A.key, body: { url: 'http://127.0.0.1:9/alpha-hook', events: ['delivered'] } })).body.id;
  A.userId = await userOf(A.key, 'alice@alpha-people.tern.test', 'alpha password 1');
  A.inviteId = (await call('POST', '/api/v1/invitations', { token: A.key, body: { email: 'pending@alpha-people.tern.test', role: 'viewer' } })).body.id;
  A.messageId = await sendAs(node.ports.submission, { user: A.credUser, pass: A.credPass }, 'someone@alpha-rcpt.tern.test', { from: 'news@alpha-sender.tern.test' });
  await sink.waitFor(() => sink.messages.some((m) => m.to.includes('someone@alpha-rcpt.tern.test')), 15_000);
  const viaHttp = { from: { email: 'news@alpha-sender.tern.test' }, to: [{ email: 'http@alpha-rcpt.tern.test' }], subject: 'a', text: 'a', idempotency_key: 'alpha-key' };
  expect((await call('POST', '/api/v1/messages', { token: A.key, body: viaHttp })).status).toBe(202);

  await userOf(bKey, 'bob@beta-people.tern.test', 'beta password 1');
  const login = await call('POST', '/api/v1/auth/login', { body: { email: 'bob@beta-people.tern.test', password: 'beta password 1' } });
  bSession = { cookie: sessionCookie(login), csrf: login.body.csrf_token };
});

afterAll(async () => {
  await node?.stop();
  await sink?.close();
});

/** Strings of A's that must never appear in an answer to B. */
const markers = () => ['alpha', A.keyId, A.credId, A.credUser, A.userId, A.inviteId, A.messageId, A.webhookId, A.suppressed, 'alice@', 'pending@', 'alpha-rcpt', 'alpha-sender', 'alpha reason'];

/**
 * How to call each tenant-scoped route against A's resources: path parameters and a valid body. A route
 * missing here fails the test: add it, with A's resource in its parameters.
 */
const REQUESTS: Record<string, { params?: () => Record<string, string>; query?: string; body?: unknown }> = {
  'GET /api/v1/api-keys': {},
  'POST /api/v1/api-keys': { body: { name: 'b key', role: 'viewer' } },
  'DELETE /api/v1/api-keys/:id': { params: () => ({ id: A.keyId }) },
  'GET /api/v1/smtp-credentials': {},
  'POST /api/v1/smtp-credentials': { body: { name: 'b cred' } },
  'DELETE /api/v1/smtp-credentials/:id': { params: () => ({ id: A.credId }) },
  'GET /api/v1/suppressions': {},
  'GET /api/v1/suppressions/:address': { params: () => ({ address: A.suppressed }) },
  'POST /api/v1/suppressions': { body: { address: 'b-own@beta-people.tern.test' } },
  'DELETE /api/v1/suppressions/:address': { params: () => ({ address: A.suppressed }) },
  'GET /api/v1/domains': {},
  'POST /api/v1/domains': { body: { domain: 'b-own.beta-people.tern.test' } },
  'GET /api/v1/domains/:domain': { params: () => ({ domain: A.domain }) },
  'DELETE /api/v1/domains/:domain': { params: () => ({ domain: A.domain }) },
  'POST /api/v1/domains/:domain/check': { params: () => ({ domain: A.domain }) },
  'GET /api/v1/events': {},
  // naming A's tenant: refused before any stream opens (B's own stream would never end)
  'GET /api/v1/events/stream': { query: '?tenant=alpha' },
  'GET /api/v1/messages/:id': { params: () => ({ id: A.messageId }) },
  // B sends as itself: its own answer, nothing of A's (A's idempotency key names nothing B can reach)
  'POST /api/v1/messages': { body: { from: { email: 'app@beta-sender.tern.test' }, to: [{ email: 'b-rcpt@beta-people.tern.test' }], subject: 'b', text: 'b', idempotency_key: 'alpha-key' } },
  'POST /api/v1/messages/raw': { body: { mail_from: 'app@beta-sender.tern.test', rcpt_to: ['b-rcpt@beta-people.tern.test'], message: 'From: app@beta-sender.tern.test\nSubject: b\n\nb\n' } },
  'GET /api/v1/stats': {},
  'GET /api/v1/users': {},
  'PATCH /api/v1/users/:id': { params: () => ({ id: A.userId }), body: { role: 'viewer' } },
  'DELETE /api/v1/users/:id': { params: () => ({ id: A.userId }) },
  'GET /api/v1/invitations': {},
  'POST /api/v1/invitations': { body: { email: 'b-invite@beta-people.tern.test', role: 'viewer' } },
  'DELETE /api/v1/invitations/:id': { params: () => ({ id: A.inviteId }) },
  'GET /api/v1/webhooks': {},
  'POST /api/v1/webhooks': { body: { url: 'http://127.0.0.1:9/b-own', events: ['failed'] } },
  'GET /api/v1/webhooks/:id': { params: () => ({ id: A.webhookId }) },
  'PATCH /api/v1/webhooks/:id': { params: () => ({ id: A.webhookId }), body: { events: ['bounced'] } },
  'DELETE /api/v1/webhooks/:id': { params: () => ({ id: A.webhookId }) },
  'POST /api/v1/webhooks/:id/enable': { params: () => ({ id: A.webhookId }) },
  'GET /api/v1/audit': {},
  'GET /api/v1/auth/me': {},
  'POST /api/v1/auth/password': { body: { current_password: 'not the password', new_password: 'whatever password' } },
  'POST /api/v1/auth/logout': {},
};

function pathOf(url: string, params: Record<string, string> = {}): string {
  return url.replace(/:(\w+)/g, (_, name: string) => {
    if (!(name in params)) throw new Error(`no value for :${name} of ${url}`);
    return encodeURIComponent(params[name]!);
  });
}

describe('tenant isolation', () => {
  it('every tenant-scoped route, called with tenant B\'s key or session against A\'s resources, gives nothing of A\'s', async () => {
    const scoped = routes.filter((r) => r.method !== 'HEAD' && !r.access.public && isTenantScoped(r.access));
    expect(scoped.length).toBeGreaterThanOrEqual(Object.keys(REQUESTS).length);
    const missing = scoped.map((r) => `${r.method} ${r.url}`).filter((k) => !(k in REQUESTS));
    expect(missing, 'tenant routes without an entry in REQUESTS (add one naming A\'s resource)').toEqual([]);

    const credentials: Array<[string, (o: CallOptions) => CallOptions]> = [
      ['api key', (o) => ({ ...o, token: bKey })],
      ['session', (o) => ({ ...o, cookie: bSession.cookie, headers: { 'x-tern-csrf': bSession.csrf } })],
    ];
    for (const [kind, withCredential] of credentials) {
      // logout last: it ends B's session
      for (const r of [...scoped].sort((x, y) => Number(x.url.endsWith('/logout')) - Number(y.url.endsWith('/logout')))) {
        const spec = REQUESTS[`${r.method} ${r.url}`]!;
        const params = spec.params?.() ?? {};
        const answer: Answer = await call(r.method, pathOf(r.url, params) + (spec.query ?? ''), withCredential({ body: spec.body }));
        const what = `${kind}: ${r.method} ${r.url} → ${answer.status} ${JSON.stringify(answer.body).slice(0, 300)}`;
        expect(answer.status, what).toBeLessThan(500);
        let text = JSON.stringify(answer.body ?? '');
        if (Object.keys(params).length) {
          // A's resource is answered exactly like one that does not exist
          expect(answer.status, what).toBe(404);
          const made = Object.fromEntries(Object.entries(params).map(([k, v]) => [k, v.includes('@') ? `x${v}` : `${v.slice(0, -1)}${v.endsWith('x') ? 'y' : 'x'}`]));
          const none = await call(r.method, pathOf(r.url, made), withCredential({ body: spec.body }));
          let noneText = JSON.stringify(none.body ?? '');
          for (const [k, v] of Object.entries(params)) [text, noneText] = [text.replaceAll(v, `<${k}>`), noneText.replaceAll(made[k]!, `<${k}>`)];
          expect([none.status, noneText], what).toEqual([answer.status, text]);
        } else expect([200, 201, 202, 204, 400, 403], what).toContain(answer.status);
        for (const m of markers()) expect(text.includes(m), `${what} holds ${m}`).toBe(false);
      }
    }

    // and A's resources are all still there
    expect((await call('GET', '/api/v1/api-keys', { token: A.key })).body.items.map((k: { id: string }) => k.id)).toContain(A.keyId);
    expect((await call('GET', `/api/v1/suppressions/${A.suppressed}`, { token: A.key })).status).toBe(200);
    expect((await call('GET', `/api/v1/domains/${A.domain}`, { token: A.key })).body).toMatchObject({ domain: A.domain, status: 'pending', last_check: null });
    expect((await call('GET', '/api/v1/users', { token: A.key })).body.items.map((u: { id: string; role: string }) => [u.id, u.role])).toEqual([[A.userId, 'admin']]);
    expect((await call('GET', '/api/v1/invitations', { token: A.key })).body.items.map((i: { id: string }) => i.id)).toEqual([A.inviteId]);
    expect((await call('GET', `/api/v1/messages/${A.messageId}`, { token: A.key })).status).toBe(200);
    expect((await call('GET', `/api/v1/webhooks/${A.webhookId}`, { token: A.key })).body).toMatchObject({ id: A.webhookId, events: ['delivered'] });
    await sendAs(node.ports.submission, { user: A.credUser, pass: A.credPass }, 'again@alpha-rcpt.tern.test');
    // B's own events are B's alone
    const bEvents = await call('GET', '/api/v1/events', { token: bKey });
    expect(bEvents.body.items.every((e: { tenant: string }) => e.tenant === 'beta')).toBe(true);
  });

  it('the operator reaches A only by naming it; B cannot name A', async () => {
    const named = await call('GET', `/api/v1/messages/${A.messageId}`, { token: TOKEN, headers: { 'x-tern-tenant': 'alpha' } });
    expect(named.status).toBe(200);
    expect((await call('GET', `/api/v1/messages/${A.messageId}`, { token: TOKEN, headers: { 'x-tern-tenant': 'beta' } })).status).toBe(404);
    const spoof = await call('GET', `/api/v1/messages/${A.messageId}`, { token: bKey, headers: { 'x-tern-tenant': 'alpha' } });
    expect(spoof.status).toBe(400);
    expect(JSON.stringify(spoof.body)).not.toContain(A.messageId + '"');
  });
});

describe('OpenAPI document', () => {
  let doc: any;
  beforeAll(async () => {
    const r = await call('GET', '/api/v1/openapi.json');
    expect(r.status).toBe(200);
    doc = r.body;
  });

  const openapiPath = (url: string) => url.replace(/:(\w+)/g, '{$1}');

  it('lists every route of the listener with its methods', () => {
    expect(doc.openapi).toBe('3.1.0');
    expect(doc.info).toMatchObject({ title: expect.any(String), version: expect.any(String) });
    const expected = routes.filter((r) => r.method !== 'HEAD');
    expect(expected.length).toBeGreaterThan(30);
    for (const r of expected) expect(doc.paths[openapiPath(r.url)]?.[r.method.toLowerCase()], `${r.method} ${r.url}`).toBeDefined();
    const documented = Object.entries(doc.paths).flatMap(([p, ops]) => Object.keys(ops as object).filter((m) => m !== 'parameters').map((m) => `${m.toUpperCase()} ${p}`));
    expect(documented.sort()).toEqual(expected.map((r) => `${r.method} ${openapiPath(r.url)}`).sort());
  });

  it('says who may call each operation, how to authenticate, and what comes back', () => {
    expect(doc.components.securitySchemes).toMatchObject({ bearer: { type: 'http', scheme: 'bearer' }, session: { type: 'apiKey', in: 'cookie', name: 'tern_session' } });
    const ids = new Set<string>();
    for (const [p, ops] of Object.entries<Record<string, any>>(doc.paths)) {
      for (const [method, op] of Object.entries(ops)) {
        const where = `${method} ${p}`;
        expect(Object.keys(op.responses).some((c) => c.startsWith('2')), where).toBe(true);
        for (const res of Object.values<any>(op.responses)) expect(typeof res.description, where).toBe('string');
        expect(Array.isArray(op.security), where).toBe(true);
        for (const s of op.security) for (const name of Object.keys(s)) expect(doc.components.securitySchemes[name], where).toBeDefined();
        for (const name of [...p.matchAll(/\{(\w+)\}/g)].map((m) => m[1])) expect(op.parameters?.some((x: any) => x.in === 'path' && x.name === name && x.required), `${where}: path parameter ${name}`).toBe(true);
        if (!p.startsWith('/api/v1')) continue;
        expect(op['x-tern-roles'], where).toEqual(expect.any(Array));
        if (op['x-tern-roles'].includes('anyone')) expect(op.security).toEqual([]);
        else expect(op.responses['401'], where).toBeDefined();
        expect(ids.has(op.operationId), `${where}: operationId ${op.operationId} is not unique`).toBe(false);
        ids.add(op.operationId);
      }
    }
    expect(doc.paths['/api/v1/tenants'].post['x-tern-roles']).toEqual(['operator']);
    expect(doc.paths['/api/v1/suppressions'].get['x-tern-roles']).toEqual(['operator', 'owner', 'admin', 'marketer', 'viewer']);
    expect(doc.paths['/api/v1/suppressions'].get.parameters.some((x: any) => x.in === 'header' && x.name === 'x-tern-tenant')).toBe(true);
    expect(doc.paths['/api/v1/queues/suspend'].post.requestBody).toBeDefined();
  });

  it('every schema in it is a valid JSON Schema (2020-12, the dialect of OpenAPI 3.1)', () => {
    const ajv = new Ajv2020({ strict: false, validateFormats: false });
    // every schema is inline (TypeBox without $id): a $ref would need the components resolved first
    expect(JSON.stringify(doc)).not.toContain('"$ref"');
    const schemas: Array<[string, object]> = [];
    for (const [p, ops] of Object.entries<Record<string, any>>(doc.paths))
      for (const [method, op] of Object.entries(ops)) {
        for (const x of op.parameters ?? []) schemas.push([`${method} ${p} parameter ${x.name}`, x.schema]);
        for (const c of Object.values<any>(op.requestBody?.content ?? {})) schemas.push([`${method} ${p} body`, c.schema]);
        for (const [code, r] of Object.entries<any>(op.responses)) for (const c of Object.values<any>(r.content ?? {})) schemas.push([`${method} ${p} ${code}`, c.schema]);
      }
    expect(schemas.length).toBeGreaterThan(50);
    for (const [where, schema] of schemas) expect(() => ajv.compile(schema), where).not.toThrow();
  });
});
