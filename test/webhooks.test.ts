/**
 * Webhooks over real sockets: a Tern node delivers mail to a sink and posts its events to webhook receivers
 * on loopback (node:http), through a real DNS server where a host name is involved.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import nodemailer from 'nodemailer';
import { startSink, type Sink } from '../bench/sink.js';
import { startDnsServer, type DnsServer } from './support/dns-server.js';
import { startTestNode, tempDir } from './support/node.js';
import { testCa } from './support/tls.js';
import { startReceiver, type ReceivedEvent, type Receiver } from './support/webhook-receiver.js';
import { EVENT_TYPES } from '../src/events/types.js';
import { publicEvent, type EndpointStatus } from '../src/events/webhooks.js';
import type { TernNode } from '../src/node.js';

const ADMIN = 'admin-token-0123456789';
const SECRET_A = 'whsec-acme-0123456789';
const SECRET_B = 'whsec-beta-0123456789';
const HOST = 'node.tern.test';

/** The verification README "Webhooks and the live stream" tells receivers to do, written out the same way. */
function verifyTernSignature(secret: string, rawBody: string, header: string, toleranceSeconds = 300): boolean {
  const parts = Object.fromEntries(header.split(',').map((p) => p.split('=', 2) as [string, string]));
  const t = Number(parts.t);
  if (!Number.isInteger(t) || Math.abs(Date.now() / 1000 - t) > toleranceSeconds) return false;
  const expected = crypto.createHmac('sha256', secret).update(`${t}.${rawBody}`).digest();
  const given = Buffer.from(parts.v1 ?? '', 'hex');
  return given.length === expected.length && crypto.timingSafeEqual(given, expected);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function mailer(node: TernNode, user: string, pass: string) {
  return nodemailer.createTransport({ host: '127.0.0.1', port: node.ports.submission, auth: { user, pass }, ignoreTLS: true });
}

async function admin(node: TernNode, method: string, path: string): Promise<{ status: number; body: any }> {
  const res = await fetch(`http://127.0.0.1:${node.ports.control}${path}`, { method, headers: { authorization: `Bearer ${ADMIN}` } });
  return { status: res.status, body: await res.json() };
}

async function endpointStatus(node: TernNode, id: string): Promise<EndpointStatus> {
  const r = await admin(node, 'GET', `/api/v1/webhooks/${id}`);
  expect(r.status).toBe(200);
  return r.body as EndpointStatus;
}

async function waitUntil(cond: () => boolean | Promise<boolean>, what: string, timeoutMs = 20_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > until) throw new Error(`${what}: not in time`);
    await sleep(50);
  }
}

/** The events of `tenant` in the outbox after `after`, as the documentation says a receiver gets them. */
function outboxFor(node: TernNode, tenant: string, after = 0): ReceivedEvent[] {
  return node.store
    .events(after, 1_000_000)
    .filter((e) => e.tenant === tenant)
    .map((e) => JSON.parse(JSON.stringify(publicEvent(e, HOST))) as ReceivedEvent);
}

/** The received events without repeats (at-least-once), in order of first arrival. */
function firstArrivals(events: ReceivedEvent[]): ReceivedEvent[] {
  const seen = new Set<string>();
  return events.filter((e) => !seen.has(e.id) && seen.add(e.id));
}

let sink: Sink;
let dnsServer: DnsServer;

beforeAll(async () => {
  sink = await startSink({
    decide: (ctx) => {
      if (ctx.stage !== 'rcpt') return undefined;
      const to = ctx.to!.at(-1)!;
      if (to.startsWith('refused')) return '550 5.1.1 No such user here';
      if (to.startsWith('later')) return '451 4.3.0 Try again later';
      return undefined;
    },
  });
  dnsServer = await startDnsServer({ records: [{ type: 'A', name: 'hook.tern.test', address: '127.0.0.1' }], zones: ['tern.test'] });
});

afterAll(async () => {
  await sink?.close();
  await dnsServer?.close();
});

function baseConfig(extra: Record<string, unknown>): Record<string, unknown> {
  return {
    hostname: HOST,
    control: { admin_token: ADMIN },
    dns: { servers: [dnsServer.address] },
    routes: [{ domain: '*.tern.test', host: '127.0.0.1', port: sink.port, tls: 'none' }],
    tenants: { default: { pool: 'default' }, acme: { pool: 'default' }, beta: { pool: 'default' } },
    smtp_users: [
      { username: 'acme', password: 'acme-pass', tenant: 'acme' },
      { username: 'beta', password: 'beta-pass', tenant: 'beta' },
    ],
    ...extra,
  };
}

describe('delivery to subscribed endpoints', () => {
  let node: TernNode;
  let all: Receiver; // acme, every type
  let some: Receiver; // acme, delivered + failed
  let beta: Receiver; // beta, every type
  let named: Receiver; // acme, reached through a host name on our DNS server

  beforeAll(async () => {
    [all, some, beta, named] = await Promise.all([startReceiver(), startReceiver(), startReceiver(), startReceiver()]);
    node = await startTestNode(
      baseConfig({
        webhooks: [
          { id: 'acme-all', tenant: 'acme', url: all.url, secret: SECRET_A, events: ['*'] },
          { id: 'acme-some', tenant: 'acme', url: some.url, secret: SECRET_A, events: ['delivered', 'failed'] },
          { id: 'beta-all', tenant: 'beta', url: beta.url, secret: SECRET_B, events: ['*'] },
          { id: 'acme-named', tenant: 'acme', url: `http://hook.tern.test:${named.port}/by-name?x=1`, secret: SECRET_A, events: ['accepted'] },
        ],
        webhook_delivery: { allow_networks: ['127.0.0.0/8'], batch_size: 3 },
      }),
    );
  });

  afterAll(async () => {
    await node?.stop();
    await Promise.all([all, some, beta, named].map((r) => r?.close()));
  });

  it('posts every event type of the tenant, in order, signed, exactly as the outbox holds it', async () => {
    const start = node.store.lastSeq;
    await mailer(node, 'acme', 'acme-pass').sendMail({ from: 'news@acme.tern.test', to: ['ok@rcpt.tern.test', 'refused@rcpt.tern.test', 'later@rcpt.tern.test'], subject: 'hi', text: 'hello' });
    await mailer(node, 'beta', 'beta-pass').sendMail({ from: 'news@beta.tern.test', to: ['ok2@rcpt.tern.test'], subject: 'hi', text: 'hello' });
    // the types no mail of this test produces (inbound reports, tracking, operator actions) come from their
    // own modules in the same outbox; write one of each for the tenant
    const produced = new Set(['accepted', 'delivered', 'deferred', 'failed', 'suppression_added']);
    await waitUntil(() => produced.size === new Set(outboxFor(node, 'acme', start).map((e) => e.type).filter((t) => produced.has(t))).size, 'the mail results');
    const injected = Object.entries(EVENT_TYPES).filter(([t, scope]) => scope === 'tenant' && !produced.has(t)).map(([t]) => t);
    await node.store.transact((tx) => {
      for (const type of injected) tx.event(type, { tenant: 'acme', queue_id: 'q-test', rcpt: 'someone@rcpt.tern.test' });
      tx.event('warmup_advanced', { source: 'default', day: 2, cap: '70' }); // a node event: no tenant gets it
    });

    const expected = outboxFor(node, 'acme', start);
    expect(new Set(expected.map((e) => e.type))).toEqual(new Set(Object.entries(EVENT_TYPES).filter(([, s]) => s === 'tenant').map(([t]) => t)));
    await all.waitFor((r) => firstArrivals(r.events()).length >= expected.length, 20_000, 'every acme event');

    // nothing lost, nothing foreign, in outbox order, each field as documented
    expect(firstArrivals(all.events())).toEqual(expected);
    const seqs = all.events().map((e) => e.seq);
    expect(seqs).toEqual([...seqs].sort((a, b) => a - b));
    for (const req of all.requests) {
      expect(req.method).toBe('POST');
      expect(req.url).toBe('/hook');
      expect(req.headers['content-type']).toBe('application/json');
      expect(req.headers['user-agent']).toMatch(/^Tern-Webhooks\//);
      expect(req.headers['tern-webhook-id']).toBe('acme-all');
      expect(verifyTernSignature(SECRET_A, req.body, String(req.headers['tern-signature']))).toBe(true);
      expect(verifyTernSignature(SECRET_B, req.body, String(req.headers['tern-signature']))).toBe(false);
      const events = (JSON.parse(req.body) as { events: ReceivedEvent[] }).events;
      expect(events.length).toBeGreaterThan(0);
      expect(events.length).toBeLessThanOrEqual(3); // batch_size
      expect(req.headers['tern-delivery-id']).toBe(`acme-all:${events[0]!.seq}-${events.at(-1)!.seq}`);
      expect(req.headers['tern-delivery-attempt']).toBe('1');
      for (const e of events) expect(e.id).toBe(`${HOST}:${e.seq}`);
    }
    const delivered = all.events().find((e) => e.type === 'delivered')!;
    expect(delivered).toMatchObject({ tenant: 'acme', rcpt: 'ok@rcpt.tern.test', campaign: expect.any(String), queue_id: expect.any(String), attempts: 1 });
    expect(typeof delivered.at).toBe('number');
    // a tampered body no longer verifies
    const req = all.requests[0]!;
    expect(verifyTernSignature(SECRET_A, req.body.replace('acme', 'acmf'), String(req.headers['tern-signature']))).toBe(false);

    // type filtering
    await some.waitFor((r) => r.events().length >= expected.filter((e) => e.type === 'delivered' || e.type === 'failed').length);
    expect(firstArrivals(some.events())).toEqual(expected.filter((e) => e.type === 'delivered' || e.type === 'failed'));

    // tenant isolation: beta's endpoint got beta's mail and nothing of acme's
    await beta.waitFor((r) => r.events().some((e) => e.type === 'delivered'));
    expect(beta.events().every((e) => e.tenant === 'beta')).toBe(true);
    expect(firstArrivals(beta.events())).toEqual(outboxFor(node, 'beta', start));
    for (const q of beta.requests) expect(verifyTernSignature(SECRET_B, q.body, String(q.headers['tern-signature']))).toBe(true);

    // a host name is resolved through the node's resolver; the request names the host, not the address
    await named.waitFor((r) => r.events().length > 0);
    expect(named.requests[0]!.headers.host).toBe(`hook.tern.test:${named.port}`);
    expect(named.requests[0]!.url).toBe('/by-name?x=1');

    const status = await admin(node, 'GET', '/api/v1/webhooks');
    expect(status.status).toBe(200);
    const acmeAll = (status.body.items as EndpointStatus[]).find((e) => e.id === 'acme-all')!;
    expect(acmeAll).toMatchObject({ tenant: 'acme', state: 'active', failures: 0, pending: 0, disabled_at: null, last_error: null });
    expect(acmeAll.cursor).toBeGreaterThanOrEqual(expected.at(-1)!.seq);
    const metrics = await (await fetch(`http://127.0.0.1:${node.ports.control}/metrics`)).text();
    expect(metrics).toMatch(/tern_webhook_requests_total\{endpoint="acme-all",result="ok"\} \d+/);
    expect(metrics).toContain(`tern_webhook_events_delivered_total{endpoint="acme-all"} ${expected.length}`);
    expect(metrics).toMatch(/tern_webhook_lag_seconds\{endpoint="acme-all"\} 0/);
  });

  it('answers 401 without the operator token and 404 for an unknown endpoint', async () => {
    const res = await fetch(`http://127.0.0.1:${node.ports.control}/api/v1/webhooks`);
    expect(res.status).toBe(401);
    expect((await admin(node, 'POST', '/api/v1/webhooks/nope/enable')).status).toBe(404);
  });
});

describe('an endpoint that is down', () => {
  it('gets everything, in order, once it is back, across a node restart', async () => {
    const receiver = await startReceiver();
    const dataDir = tempDir();
    const config = baseConfig({
      webhooks: [{ id: 'acme', tenant: 'acme', url: receiver.url, secret: SECRET_A, events: ['accepted', 'delivered'] }],
      webhook_delivery: { allow_networks: ['127.0.0.0/8'], backoff_initial: '50ms', backoff_max: '300ms' },
    });
    let node = await startTestNode(config, { dataDir });
    try {
      const send = (n: number) => mailer(node, 'acme', 'acme-pass').sendMail({ from: 'a@acme.tern.test', to: `ok${n}@rcpt.tern.test`, subject: `m${n}`, text: 'x' });
      // first it answers 503
      receiver.answer = { status: 503 };
      await send(1);
      await waitUntil(async () => (await endpointStatus(node, 'acme')).failures >= 2, 'retries of the 503');
      const failing = await endpointStatus(node, 'acme');
      expect(failing).toMatchObject({ state: 'failing', last_error: expect.stringMatching(/^HTTP 503/) });
      expect(failing.pending).toBeGreaterThan(0);
      // retries of one batch say so
      expect(receiver.requests.map((q) => q.headers['tern-delivery-attempt']).slice(0, 2)).toEqual(['1', '2']);

      // then it is gone altogether: connection refused
      await receiver.down();
      await send(2);
      await waitUntil(async () => /ECONNREFUSED/.test((await endpointStatus(node, 'acme')).last_error ?? ''), 'a refused connection');

      // the node restarts while the receiver is still away
      await node.stop();
      node = await startTestNode(config, { dataDir });
      expect((await endpointStatus(node, 'acme')).state).toBe('failing'); // the failure clock survives
      await send(3);
      await waitUntil(() => outboxFor(node, 'acme').filter((e) => e.type === 'delivered').length === 3, 'the mail delivered');
      await sleep(300);

      receiver.answer = { status: 200 };
      await receiver.up();
      const expected = outboxFor(node, 'acme').filter((e) => e.type === 'accepted' || e.type === 'delivered');
      expect(expected).toHaveLength(6);
      await receiver.waitFor((r) => firstArrivals(r.events()).length >= 6, 20_000, 'the backlog');
      expect(firstArrivals(receiver.events())).toEqual(expected);
      const seqs = receiver.events().map((e) => e.seq);
      expect(seqs).toEqual([...seqs].sort((a, b) => a - b));
      await waitUntil(async () => (await endpointStatus(node, 'acme')).state === 'active', 'the endpoint active again');
      expect(await endpointStatus(node, 'acme')).toMatchObject({ failures: 0, failing_since: null, pending: 0 });
    } finally {
      await node.stop();
      await receiver.close();
    }
  });
});

describe('an endpoint failing for too long', () => {
  it('is disabled with an event, stays disabled across a restart, and is enabled again by the operator or a config change', async () => {
    const [flaky, watcher] = await Promise.all([startReceiver(), startReceiver()]);
    flaky.answer = { status: 500 };
    const dataDir = tempDir();
    const hooks = (secret: string) => [
      { id: 'flaky', tenant: 'acme', url: flaky.url, secret, events: ['*'] },
      { id: 'watcher', tenant: 'acme', url: watcher.url, secret: SECRET_A, events: ['webhook_disabled', 'webhook_enabled'] },
    ];
    const config = (secret: string) => baseConfig({ webhooks: hooks(secret), webhook_delivery: { allow_networks: ['127.0.0.0/8'], backoff_initial: '50ms', backoff_max: '200ms', disable_after: '1500ms' } });
    let node = await startTestNode(config(SECRET_A), { dataDir });
    try {
      const inject = (n: number) => node.store.transact((tx) => tx.event('opened', { tenant: 'acme', queue_id: `q${n}`, rcpt: 'r@rcpt.tern.test' }));
      await inject(1);
      await watcher.waitFor((r) => r.events().some((e) => e.type === 'webhook_disabled'), 20_000, 'webhook_disabled');
      const disabled = watcher.events().find((e) => e.type === 'webhook_disabled')!;
      expect(disabled).toMatchObject({ tenant: 'acme', endpoint: 'flaky', last_error: expect.stringMatching(/^HTTP 500/), failing_since: expect.any(Number), failures: expect.any(Number) });
      expect(disabled.at - (disabled.failing_since as number)).toBeGreaterThanOrEqual(1500);
      let status = await endpointStatus(node, 'flaky');
      expect(status).toMatchObject({ state: 'disabled', next_attempt_at: null, pending: 1 });
      const tried = flaky.requests.length;
      await inject(2);
      await sleep(500);
      expect(flaky.requests.length).toBe(tried); // a disabled endpoint is left alone

      await node.stop();
      node = await startTestNode(config(SECRET_A), { dataDir });
      expect((await endpointStatus(node, 'flaky')).state).toBe('disabled');
      await sleep(300);
      expect(flaky.requests.length).toBe(tried);

      // the operator enables it: the backlog follows, its own disabling included
      flaky.answer = { status: 200 };
      const enabled = await admin(node, 'POST', '/api/v1/webhooks/flaky/enable');
      expect(enabled.status).toBe(200);
      expect(enabled.body).toMatchObject({ id: 'flaky', state: 'active', disabled_at: null });
      await flaky.waitFor((r) => r.events().some((e) => e.type === 'webhook_enabled'), 20_000, 'the backlog after enabling');
      expect(flaky.events().map((e) => e.type)).toEqual(['opened', 'webhook_disabled', 'opened', 'webhook_enabled']);
      await watcher.waitFor((r) => r.events().some((e) => e.type === 'webhook_enabled'));
      expect(watcher.events().find((e) => e.type === 'webhook_enabled')).toMatchObject({ endpoint: 'flaky', by: 'operator', tenant: 'acme' });

      // failing again until disabled; a changed config (a new secret) enables it at the next start
      flaky.answer = { status: 500 };
      await inject(3);
      await waitUntil(async () => (await endpointStatus(node, 'flaky')).state === 'disabled', 'disabled again');
      await node.stop();
      flaky.answer = { status: 200 };
      const secret2 = 'whsec-rotated-0123456789';
      node = await startTestNode(config(secret2), { dataDir });
      await flaky.waitFor((r) => r.events().filter((e) => e.type === 'webhook_enabled').length === 2, 20_000, 'delivery after the config change');
      const last = flaky.requests.at(-1)!;
      expect(verifyTernSignature(secret2, last.body, String(last.headers['tern-signature']))).toBe(true);
      expect(flaky.events().filter((e) => e.type === 'webhook_enabled').at(-1)).toMatchObject({ by: 'config' });
      status = await endpointStatus(node, 'flaky');
      expect(status.state).toBe('active');
    } finally {
      await node.stop();
      await flaky.close();
      await watcher.close();
    }
  });
});

describe('where webhooks may go', () => {
  it('does not follow a redirect', async () => {
    const [redirecting, elsewhere] = await Promise.all([startReceiver(), startReceiver()]);
    redirecting.answer = { status: 302, headers: { location: elsewhere.url } };
    const node = await startTestNode(baseConfig({
      webhooks: [{ id: 'moved', tenant: 'acme', url: redirecting.url, secret: SECRET_A, events: ['*'] }],
      webhook_delivery: { allow_networks: ['127.0.0.0/8'], backoff_initial: '50ms', backoff_max: '100ms' },
    }));
    try {
      await node.store.transact((tx) => tx.event('clicked', { tenant: 'acme', url: 'https://example.com/' }));
      await redirecting.waitFor((r) => r.requests.length >= 3, 20_000, 'retries');
      expect(elsewhere.requests).toHaveLength(0);
      const status = await endpointStatus(node, 'moved');
      expect(status.last_error).toBe(`HTTP 302 redirect to ${elsewhere.url} (redirects are not followed; configure the final URL)`);
      expect(status.state).toBe('failing');
    } finally {
      await node.stop();
      await redirecting.close();
      await elsewhere.close();
    }
  });

  it('posts over https to the checked address, with the host name in Host, SNI and the certificate check', async () => {
    const ca = await testCa();
    const leaf = (name: string) => ca.leaf([name]);
    const caFile = path.join(tempDir('tern-ca-'), 'ca.pem');
    fs.writeFileSync(caFile, ca.cert);
    const good = await leaf('hook.tern.test');
    const wrong = await leaf('other.tern.test');
    const [secure, misnamed] = await Promise.all([
      startReceiver('127.0.0.1', 0, { key: good.private, cert: good.cert }),
      startReceiver('127.0.0.1', 0, { key: wrong.private, cert: wrong.cert }),
    ]);
    const node = await startTestNode(baseConfig({
      delivery: { tls_ca_file: caFile },
      webhooks: [
        { id: 'tls', tenant: 'acme', url: `https://hook.tern.test:${secure.port}/tls`, secret: SECRET_A, events: ['*'] },
        { id: 'misnamed', tenant: 'acme', url: `https://hook.tern.test:${misnamed.port}/tls`, secret: SECRET_A, events: ['*'] },
      ],
      webhook_delivery: { allow_networks: ['127.0.0.0/8'], backoff_initial: '50ms', backoff_max: '100ms' },
    }));
    try {
      await node.store.transact((tx) => tx.event('complained', { tenant: 'acme', rcpt: 'r@rcpt.tern.test' }));
      await secure.waitFor((r) => r.events().length === 1);
      expect(secure.requests[0]).toMatchObject({ servername: 'hook.tern.test', url: '/tls' });
      expect(secure.requests[0]!.headers.host).toBe(`hook.tern.test:${secure.port}`);
      await waitUntil(async () => (await endpointStatus(node, 'misnamed')).failures >= 1, 'the misnamed certificate refused');
      expect((await endpointStatus(node, 'misnamed')).last_error).toMatch(/^https:\/\/hook\.tern\.test:\d+ via 127\.0\.0\.1: .*(altnames|certificate)/i);
      expect(misnamed.requests).toHaveLength(0);
    } finally {
      await node.stop();
      await secure.close();
      await misnamed.close();
    }
  });

  it('refuses a host name that resolves to a private address, without connecting', async () => {
    let connections = 0;
    const trap = net.createServer((s) => {
      connections++;
      s.destroy();
    });
    await new Promise<void>((r) => trap.listen(0, '127.0.0.1', () => r()));
    const port = (trap.address() as net.AddressInfo).port;
    const node = await startTestNode(baseConfig({
      webhooks: [
        { id: 'tls-name', tenant: 'acme', url: `https://hook.tern.test:${port}/`, secret: SECRET_A, events: ['*'] },
        { id: 'plain-name', tenant: 'acme', url: `http://hook.tern.test:${port}/`, secret: SECRET_A, events: ['*'] },
      ],
      // an internal network is allowed, but not loopback
      webhook_delivery: { allow_networks: ['10.20.0.0/16'], backoff_initial: '50ms', backoff_max: '100ms' },
    }));
    try {
      await node.store.transact((tx) => tx.event('unsubscribed', { tenant: 'acme', rcpt: 'r@rcpt.tern.test' }));
      for (const id of ['tls-name', 'plain-name'])
        await waitUntil(async () => (await endpointStatus(node, id)).failures >= 2, `${id} refused twice`);
      for (const id of ['tls-name', 'plain-name'])
        expect((await endpointStatus(node, id)).last_error).toBe('refused: hook.tern.test resolves to 127.0.0.1, a loopback address; webhooks go only to public addresses unless webhook_delivery.allow_networks lists the network');
      expect(connections).toBe(0);
      const metrics = await (await fetch(`http://127.0.0.1:${node.ports.control}/metrics`)).text();
      expect(metrics).toMatch(/tern_webhook_requests_total\{endpoint="tls-name",result="refused"\} [1-9]/);
    } finally {
      await node.stop();
      await new Promise((r) => trap.close(r));
    }
  });
});
