/**
 * Pools and webhook endpoints made through the control API, applied without a restart: mail of a tenant on
 * an API pool leaves from its sources (warmup caps included) and with their EHLO; a tenant's own webhook
 * endpoint gets its events signed with the secret it was given, follows a change of its event types, and
 * stops when deleted.
 */
import crypto from 'node:crypto';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSink, type Sink } from '../bench/sink.js';
import type { TernNode } from '../src/node.js';
import { controlApi, sendAs } from './support/control.js';
import { startTestNode } from './support/node.js';
import { startReceiver, type Receiver } from './support/webhook-receiver.js';

const TOKEN = 'pools-webhooks-operator-token';
const today = new Date().toISOString().slice(0, 10);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** An SMTP server that records each message's EHLO name and client address, and closes after each message. */
async function ehloSink() {
  const seen: Array<{ ehlo: string; address: string; to: string }> = [];
  const server = net.createServer((sock) => {
    let buf = '';
    let ehlo = '';
    let to = '';
    let inData = false;
    sock.on('error', () => {});
    sock.write('220 ehlo-sink\r\n');
    sock.on('data', (d) => {
      buf += d.toString('latin1');
      for (let i = buf.indexOf('\r\n'); i >= 0; i = buf.indexOf('\r\n')) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 2);
        if (inData) {
          if (line === '.') {
            inData = false;
            seen.push({ ehlo, address: (sock.remoteAddress ?? '').replace(/^::ffff:/, ''), to });
            sock.end('250 2.0.0 ok\r\n');
          }
          continue;
        }
        const cmd = line.slice(0, 4).toUpperCase();
        if (cmd === 'EHLO' || cmd === 'HELO') {
          ehlo = line.slice(5).trim();
          sock.write('250 ehlo-sink\r\n');
        } else if (cmd === 'RCPT') {
          to = /<([^>]*)>/.exec(line)?.[1] ?? '';
          sock.write('250 2.1.5 ok\r\n');
        } else if (cmd === 'DATA') {
          inData = true;
          sock.write('354 go on\r\n');
        } else if (cmd === 'QUIT') sock.end('221 bye\r\n');
        else sock.write('250 ok\r\n');
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { seen, port: (server.address() as net.AddressInfo).port, close: () => new Promise<void>((r) => server.close(() => r())) };
}

describe('pools made through the API', () => {
  let node: TernNode;
  let sink: Awaited<ReturnType<typeof ehloSink>>;
  let call: ReturnType<typeof controlApi>;

  beforeAll(async () => {
    sink = await ehloSink();
    node = await startTestNode({ control: { admin_token: TOKEN }, routes: [{ domain: '*.tern.test', host: '127.0.0.1', port: sink.port }], warmup: { plans: { tiny: { days: [3, 6] } } }, retry: { schedule: ['1h'] } });
    call = controlApi(node.ports.control);
  });
  afterAll(async () => {
    await node?.stop();
    await sink?.close();
  });

  it('are checked: addresses of this host, unique source names, known plans; the config\'s are read-only', async () => {
    const bad = await call('POST', '/api/v1/pools', {
      token: TOKEN,
      body: { name: 'bad', sources: [{ name: 'default', address: '127.0.0.9', ehlo: 'x.tern.test' }, { name: 'b2', address: '192.0.2.77', ehlo: 'y.tern.test', warmup: { plan: 'nope', start: today } }, { name: 'b3', address: 'not-an-ip', ehlo: 'z.tern.test' }] },
    });
    expect(bad.status).toBe(400);
    const fields = bad.body.error.details.map((d: { field: string }) => d.field);
    expect(fields).toEqual(expect.arrayContaining(['body.sources.0.name', 'body.sources.1.warmup.plan', 'body.sources.1.address', 'body.sources.2.address']));
    expect(bad.body.error.message).toMatch(/is a source of pool default already/);
    expect((await call('PATCH', '/api/v1/pools/default', { token: TOKEN, body: { upsert_sources: [{ name: 'default', address: '0.0.0.0', ehlo: 'a.tern.test' }] } })).status).toBe(409);
    const list = await call('GET', '/api/v1/pools', { token: TOKEN });
    expect(list.body.items.map((p: { name: string; managed_by: string }) => [p.name, p.managed_by])).toEqual([['default', 'config']]);
  });

  it('take a tenant\'s mail at once: from their addresses, under the warmup cap, with the EHLO a PATCH gives', async () => {
    const made = await call('POST', '/api/v1/pools', {
      token: TOKEN,
      body: { name: 'fresh', sources: [{ name: 'f5', address: '127.0.0.5', ehlo: 'f5.tern.test', warmup: { plan: 'tiny', start: today } }, { name: 'f6', address: '127.0.0.6', ehlo: 'f6.tern.test' }] },
    });
    expect(made.status).toBe(201);
    expect(made.body).toMatchObject({ name: 'fresh', managed_by: 'api', sources: [{ name: 'f5', warmup: { plan: 'tiny' } }, { name: 'f6', warmup: null }] });
    expect((await call('POST', '/api/v1/tenants', { token: TOKEN, body: { id: 'pooled', allow_unverified_domains: true } })).status).toBe(201);
    expect((await call('PATCH', '/api/v1/tenants/pooled', { token: TOKEN, body: { pool: 'fresh' } })).body.pool).toBe('fresh');
    const key = (await call('POST', '/api/v1/tenants/pooled/api-keys', { token: TOKEN, body: { name: 'k', role: 'owner' } })).body.token;
    const cred = (await call('POST', '/api/v1/smtp-credentials', { token: key, body: { name: 'app' } })).body;

    for (let i = 0; i < 8; i++) await sendAs(node.ports.submission, { user: cred.username, pass: cred.password }, `r${i}@pooled-rcpt.tern.test`, { from: 'news@pooled.tern.test' });
    const until = Date.now() + 20_000;
    while (sink.seen.length < 8 && Date.now() < until) await sleep(50);
    expect(sink.seen.length).toBe(8);
    expect(sink.seen.filter((m) => m.address === '127.0.0.5').map((m) => m.ehlo)).toEqual(['f5.tern.test', 'f5.tern.test', 'f5.tern.test']); // the day's cap
    expect(sink.seen.filter((m) => m.address === '127.0.0.6')).toHaveLength(5);
    expect((await call('GET', '/api/v1/warmup/f5', { token: TOKEN })).body).toMatchObject({ pool: 'fresh', cap: 3, sent_today: 3 });

    const patched = await call('PATCH', '/api/v1/pools/fresh', { token: TOKEN, body: { upsert_sources: [{ name: 'f6', address: '127.0.0.6', ehlo: 'renamed-f6.tern.test' }] } });
    expect(patched.status).toBe(200);
    expect(patched.body.sources.map((s: { ehlo: string }) => s.ehlo)).toEqual(['f5.tern.test', 'renamed-f6.tern.test']);
    for (let i = 0; i < 2; i++) await sendAs(node.ports.submission, { user: cred.username, pass: cred.password }, `s${i}@pooled-rcpt.tern.test`, { from: 'news@pooled.tern.test' });
    while (sink.seen.length < 10 && Date.now() < until + 10_000) await sleep(50);
    expect(sink.seen.slice(8).map((m) => [m.address, m.ehlo])).toEqual([['127.0.0.6', 'renamed-f6.tern.test'], ['127.0.0.6', 'renamed-f6.tern.test']]);
    const audit = await call('GET', '/api/v1/audit', { token: TOKEN });
    expect(audit.body.items.map((e: { action: string }) => e.action)).toEqual(expect.arrayContaining(['pool.create', 'pool.update']));
  });
});

/** The verification README "Webhooks and the live stream" tells receivers to do. */
function verify(secret: string, rawBody: string, header: string): boolean {
  const parts = Object.fromEntries(header.split(',').map((p) => p.split('=', 2) as [string, string]));
  const expected = crypto.createHmac('sha256', secret).update(`${parts.t}.${rawBody}`).digest();
  const given = Buffer.from(parts.v1 ?? '', 'hex');
  return given.length === expected.length && crypto.timingSafeEqual(given, expected);
}

describe('webhook endpoints made through the API', () => {
  let node: TernNode;
  let sink: Sink;
  let receiver: Receiver;
  let call: ReturnType<typeof controlApi>;

  beforeAll(async () => {
    sink = await startSink();
    receiver = await startReceiver();
    node = await startTestNode({ control: { admin_token: TOKEN }, routes: [{ domain: '*.tern.test', host: '127.0.0.1', port: sink.port }], webhook_delivery: { allow_networks: ['127.0.0.0/8'] } });
    call = controlApi(node.ports.control);
  });
  afterAll(async () => {
    await node?.stop();
    await sink?.close();
    await receiver?.close();
  });

  it('deliver a tenant\'s events signed with the secret it was given, follow a PATCH, stop when deleted; other tenants see nothing', async () => {
    const keys: Record<string, string> = {};
    for (const id of ['hooked', 'other']) {
      expect((await call('POST', '/api/v1/tenants', { token: TOKEN, body: { id, allow_unverified_domains: true } })).status).toBe(201);
      keys[id] = (await call('POST', `/api/v1/tenants/${id}/api-keys`, { token: TOKEN, body: { name: 'k', role: 'owner' } })).body.token;
    }
    const cred = (await call('POST', '/api/v1/smtp-credentials', { token: keys.hooked, body: { name: 'app' } })).body;
    const send = (to: string) => sendAs(node.ports.submission, { user: cred.username, pass: cred.password }, to, { from: 'news@hooked.tern.test' });

    const refused = await call('POST', '/api/v1/webhooks', { token: keys.hooked, body: { url: 'http://10.1.2.3/hook', events: ['delivered'] } });
    expect(refused.status).toBe(400);
    expect(refused.body.error.message).toBe('The webhook URL cannot be used: 10.1.2.3 is a private address (RFC 1918); webhooks go only to public addresses unless webhook_delivery.allow_networks lists the network');
    expect((await call('POST', '/api/v1/webhooks', { token: keys.hooked, body: { url: receiver.url, events: ['nonsense'] } })).status).toBe(400);

    const made = await call('POST', '/api/v1/webhooks', { token: keys.hooked, body: { url: receiver.url, events: ['accepted', 'delivered'] } });
    expect(made.status).toBe(201);
    const { id, secret } = made.body as { id: string; secret: string };
    expect(made.body).toMatchObject({ tenant: 'hooked', managed_by: 'api', enabled: true, state: 'active' });
    expect(secret).toMatch(/^whsec_/);
    expect((await call('GET', `/api/v1/webhooks/${id}`, { token: keys.hooked })).body.secret).toBeUndefined();

    const first = await send('one@hooked-rcpt.tern.test');
    await receiver.waitFor((r) => r.events().some((e) => e.type === 'delivered' && e.queue_id === first), 20_000, 'the first delivery');
    expect(receiver.events().filter((e) => e.queue_id === first).map((e) => e.type)).toEqual(['accepted', 'delivered']);
    for (const q of receiver.requests) expect(verify(secret, q.body, String(q.headers['tern-signature']))).toBe(true);
    expect(receiver.requests.every((q) => q.headers['tern-webhook-id'] === id)).toBe(true);

    // another tenant neither sees nor touches it
    expect((await call('GET', `/api/v1/webhooks/${id}`, { token: keys.other })).status).toBe(404);
    expect((await call('PATCH', `/api/v1/webhooks/${id}`, { token: keys.other, body: { enabled: false } })).status).toBe(404);
    expect((await call('DELETE', `/api/v1/webhooks/${id}`, { token: keys.other })).status).toBe(404);
    expect((await call('GET', '/api/v1/webhooks', { token: keys.other })).body.items).toEqual([]);
    expect((await call('GET', '/api/v1/webhooks', { token: TOKEN })).body.items.map((w: { id: string }) => w.id)).toEqual([id]);

    const patched = await call('PATCH', `/api/v1/webhooks/${id}`, { token: keys.hooked, body: { events: ['delivered'] } });
    expect(patched.status).toBe(200);
    expect(patched.body).toMatchObject({ events: ['delivered'], state: 'active' });
    const second = await send('two@hooked-rcpt.tern.test');
    await receiver.waitFor((r) => r.events().some((e) => e.type === 'delivered' && e.queue_id === second), 20_000, 'the second delivery');
    expect(receiver.events().filter((e) => e.queue_id === second).map((e) => e.type)).toEqual(['delivered']);

    expect((await call('DELETE', `/api/v1/webhooks/${id}`, { token: keys.hooked })).status).toBe(204);
    const before = receiver.requests.length;
    const third = await send('three@hooked-rcpt.tern.test');
    await sink.waitFor(() => sink.messages.some((m) => m.id === third || m.to.includes('three@hooked-rcpt.tern.test')), 20_000);
    await sleep(700);
    expect(receiver.requests.length).toBe(before);
    expect((await call('GET', `/api/v1/webhooks/${id}`, { token: keys.hooked })).status).toBe(404);
    const audit = await call('GET', '/api/v1/audit', { token: keys.hooked });
    expect(audit.body.items.map((e: { action: string }) => e.action)).toEqual(expect.arrayContaining(['webhook.create', 'webhook.update', 'webhook.delete']));
    expect(JSON.stringify(audit.body)).not.toContain(secret);
  });
});
