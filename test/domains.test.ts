/**
 * Sending domains over real sockets: the newcomer's journey (operator makes a tenant and its key → the
 * tenant adds a domain → publishes the returned records in a real DNS server → check turns green → sends
 * through SMTP with an API-made credential → the mail reaches the sink DKIM-valid under both selectors →
 * the events show it), then each record broken on its own, with its own failure and sentence.
 */
import crypto from 'node:crypto';
import dns from 'node:dns';
import { dkimVerify } from 'mailauth/lib/dkim/verify.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSink, type Sink } from '../bench/sink.js';
import { dnsRecordFor } from '../src/mta/dkim.js';
import type { TernNode } from '../src/node.js';
import { controlApi, sendAs } from './support/control.js';
import { startDnsServer, type DnsServer, type ZoneRecord } from './support/dns-server.js';
import { startTestNode } from './support/node.js';
import { rawSmtp } from './support/smtp.js';

const TOKEN = 'domains-test-operator-token';
// another organisational domain than the node's (tern.test), so that DMARC alignment is meaningful
const DOMAIN = 'shop.example';
let sink: Sink;
let dnsServer: DnsServer;
let node: TernNode;
let call: ReturnType<typeof controlApi>;
let owner = '';
let cred = { user: '', pass: '' };
let published: ZoneRecord[] = [];

/** What the test zone always has: the recipients' MX, and the egress source's forward-confirmed PTR. */
const BASE: ZoneRecord[] = [
  { type: 'MX', name: 'sink.tern.test', priority: 10, exchange: 'mx.sink.tern.test' },
  { type: 'A', name: 'mx.sink.tern.test', address: '127.0.0.1' },
  { type: 'A', name: 'src2.tern.test', address: '127.0.0.2' },
  { type: 'PTR', name: '127.0.0.2', target: 'src2.tern.test' },
];

const as = (method: string, path: string, body?: unknown) => call(method, path, { token: owner, body });
const check = async () => {
  const r = await as('POST', `/api/v1/domains/${DOMAIN}/check`);
  expect(r.status).toBe(200);
  return r.body as { status: string; last_check: { verified: boolean; records: Array<{ key: string; status: string; fix: string; found: string | null }> } };
};
const recordOf = (body: Awaited<ReturnType<typeof check>>, key: string) => body.last_check.records.find((r) => r.key === key)!;
/** the zone with the published records, `change` applied to them */
const publish = (change: (records: ZoneRecord[]) => ZoneRecord[] = (r) => r) => dnsServer.set([...BASE, ...change(published.map((r) => ({ ...r })))]);
const without = (name: string, type: string) => (records: ZoneRecord[]) => records.filter((r) => !(r.name === name && r.type === type));
const replacing = (name: string, type: string, by: ZoneRecord) => (records: ZoneRecord[]) => [...without(name, type)(records), by];

beforeAll(async () => {
  sink = await startSink({ keep: true, idHeader: 'Message-ID' });
  dnsServer = await startDnsServer({ records: BASE, zones: ['tern.test', 'example', 'in-addr.arpa'] });
  node = await startTestNode({
    control: { admin_token: TOKEN },
    dns: { servers: [dnsServer.address] },
    delivery: { smtp_port: sink.port },
    pools: { default: { sources: [{ name: 'src2', address: '127.0.0.2', ehlo: 'src2.tern.test' }] } },
    domains: { tracking_cname: 'track.node.tern.test' },
  });
  call = controlApi(node.ports.control);
});

afterAll(async () => {
  await node?.stop();
  await sink?.close();
  await dnsServer?.close();
});

describe("the newcomer's journey", () => {
  it('operator makes a tenant and key; the tenant adds a domain and gets the exact records to publish', async () => {
    expect((await call('POST', '/api/v1/tenants', { token: TOKEN, body: { id: 'shop' } })).body).toMatchObject({ id: 'shop', allow_unverified_domains: false });
    owner = (await call('POST', '/api/v1/tenants/shop/api-keys', { token: TOKEN, body: { name: 'owner', role: 'owner' } })).body.token;
    const c = await as('POST', '/api/v1/smtp-credentials', { name: 'shop app' });
    cred = { user: c.body.username, pass: c.body.password };

    const added = await as('POST', '/api/v1/domains', { domain: 'Shop.Example' });
    expect(added.status).toBe(201);
    const ym = new Date().toISOString().slice(0, 7).replace('-', '');
    expect(added.body).toMatchObject({ domain: DOMAIN, status: 'pending', selectors: [`t${ym}r`, `t${ym}e`], bounce_domain: `bounces.${DOMAIN}`, tracking_domain: `track.${DOMAIN}`, last_check: null });
    const byKey = Object.fromEntries(added.body.records.map((r: { key: string }) => [r.key, r]));
    expect(byKey.spf).toMatchObject({ name: DOMAIN, type: 'TXT', value: 'v=spf1 ip4:127.0.0.2 ~all', required: true });
    expect(byKey.dkim_rsa).toMatchObject({ name: `t${ym}r._domainkey.${DOMAIN}`, type: 'TXT', value: expect.stringMatching(/^v=DKIM1; k=rsa; p=MIIBIjAN/) });
    expect(byKey.dkim_ed25519).toMatchObject({ name: `t${ym}e._domainkey.${DOMAIN}`, value: expect.stringMatching(/^v=DKIM1; k=ed25519; p=/) });
    expect(byKey.dmarc).toMatchObject({ name: `_dmarc.${DOMAIN}`, value: `v=DMARC1; p=none; rua=mailto:postmaster@${DOMAIN}`, required: false });
    expect(byKey.bounce_mx).toMatchObject({ name: `bounces.${DOMAIN}`, type: 'MX', value: 'node.tern.test', priority: 10, required: true });
    expect(byKey.tracking_cname).toMatchObject({ name: `track.${DOMAIN}`, type: 'CNAME', value: 'track.node.tern.test' });
    // the private keys never leave, and are sealed on disk
    expect(JSON.stringify(added.body)).not.toMatch(/PRIVATE KEY/);
    const stored = node.controlPlane.domains.get('shop', DOMAIN)!;
    expect(JSON.stringify(stored)).not.toMatch(/PRIVATE KEY/);
    expect(stored.keys.map((k) => k.sealed)).toEqual([expect.stringMatching(/^v1:[0-9a-f]{8}:/), expect.stringMatching(/^v1:[0-9a-f]{8}:/)]);
    expect((await as('POST', '/api/v1/domains', { domain: DOMAIN })).status).toBe(200);

    published = added.body.records.map((r: { type: string; name: string; value: string; priority?: number }): ZoneRecord =>
      r.type === 'MX' ? { type: 'MX', name: r.name, priority: r.priority!, exchange: r.value } : r.type === 'CNAME' ? { type: 'CNAME', name: r.name, target: r.value } : { type: 'TXT', name: r.name, data: r.value },
    );
  });

  it('before the records are published: missing, each with what to publish, and mail From the domain is refused', async () => {
    const c = await check();
    expect(c.status).toBe('pending');
    expect(c.last_check.verified).toBe(false);
    expect(recordOf(c, 'spf')).toMatchObject({ status: 'missing', fix: `Publish a TXT record at ${DOMAIN} with the value "v=spf1 ip4:127.0.0.2 ~all"` });
    expect(recordOf(c, 'dkim_rsa').status).toBe('missing');
    expect(recordOf(c, 'bounce_mx')).toMatchObject({ status: 'missing', fix: expect.stringContaining(`Publish an MX record at bounces.${DOMAIN} pointing to node.tern.test`) });
    expect(recordOf(c, 'dmarc').status).toBe('warning');
    expect(recordOf(c, 'ptr')).toMatchObject({ status: 'ok', found: 'src2.tern.test' });

    await expect(sendAs(node.ports.submission, cred, 'early@sink.tern.test', { from: `news@${DOMAIN}` })).rejects.toMatchObject({
      responseCode: 550,
      response: expect.stringMatching(/5\.7\.1 Sending From shop\.example is refused: it is not a verified sending domain/),
    });
    // and the inbound listener does not take bounces for it yet
    const smtp = await rawSmtp(node.ports.inbound);
    await smtp.cmd('EHLO remote.example');
    await smtp.cmd('MAIL FROM:<>');
    expect(await smtp.cmd(`RCPT TO:<postmaster@bounces.${DOMAIN}>`)).toMatch(/^550 5\.7\.1/);
    smtp.close();
  });

  it('published: the check turns green and a domain_verified event is written; bounces are taken at its bounce subdomain', async () => {
    publish();
    const c = await check();
    expect(c.status).toBe('verified');
    expect(c.last_check.verified).toBe(true);
    for (const key of ['spf', 'dkim_rsa', 'dkim_ed25519', 'bounce_mx', 'bounce_spf', 'tracking_cname', 'ptr']) expect(recordOf(c, key).status, key).toBe('ok');
    // the tenant's envelope sender is still the node's bounce domain: DKIM aligns, SPF does not
    expect(recordOf(c, 'dmarc')).toMatchObject({ status: 'warning', fix: expect.stringMatching(/DKIM aligns.*SPF will not align, because the envelope sender domain is bounces\.node\.tern\.test/) });
    const events = await as('GET', '/api/v1/events?type=domain_verified');
    expect(events.body.items).toEqual([expect.objectContaining({ type: 'domain_verified', tenant: 'shop', domain: DOMAIN, previous: 'pending' })]);

    const smtp = await rawSmtp(node.ports.inbound);
    await smtp.cmd('EHLO remote.example');
    await smtp.cmd('MAIL FROM:<>');
    expect(await smtp.cmd(`RCPT TO:<postmaster@bounces.${DOMAIN}>`)).toMatch(/^250/);
    smtp.close();

    // the operator points the tenant's envelope senders at the domain's bounce subdomain: SPF aligns too
    expect((await call('PATCH', '/api/v1/tenants/shop', { token: TOKEN, body: { bounce_domain: `bounces.${DOMAIN}` } })).status).toBe(200);
    expect(recordOf(await check(), 'dmarc')).toMatchObject({ status: 'ok', fix: expect.stringMatching(/both SPF \(envelope bounces\.shop\.example\) and DKIM/) });
  });

  it('sends through SMTP with the API-made credential; the sink gets it signed with both selectors, from the bounce subdomain; the events show it', async () => {
    const queueId = await sendAs(node.ports.submission, cred, 'buyer@sink.tern.test', { from: `news@${DOMAIN}`, subject: 'Your order' });
    await sink.waitFor(() => sink.messages.some((m) => m.to.includes('buyer@sink.tern.test')), 15_000);
    const msg = sink.messages.find((m) => m.to.includes('buyer@sink.tern.test'))!;
    expect(msg.remoteAddress).toBe('127.0.0.2');
    expect(msg.from).toMatch(new RegExp(`^b-[a-z0-9]+@bounces\\.${DOMAIN.replace(/\./g, '\\.')}$`));
    const resolver = new dns.promises.Resolver();
    resolver.setServers([dnsServer.address]);
    const verified = await dkimVerify(msg.data!, { resolver: (name: string, rr: string) => resolver.resolve(name, rr as 'TXT') });
    const ym = new Date().toISOString().slice(0, 7).replace('-', '');
    expect(verified.results.map((r: { selector?: string; signingDomain?: string; status: { result: string } }) => `${r.signingDomain}/${r.selector}:${r.status.result}`).sort()).toEqual([`${DOMAIN}/t${ym}e:pass`, `${DOMAIN}/t${ym}r:pass`]);

    let types: string[] = [];
    for (let i = 0; i < 50 && !types.includes('delivered'); i++) {
      types = (await as('GET', `/api/v1/events?rcpt=buyer@sink.tern.test&order=asc`)).body.items.filter((e: { queue_id: string }) => e.queue_id === queueId).map((e: { type: string }) => e.type);
      if (!types.includes('delivered')) await new Promise((r) => setTimeout(r, 100));
    }
    expect(types).toEqual(['accepted', 'delivered']);
  });

  it('sends the same through HTTP with an API key, and an unverified From domain is refused with 403 domain_not_verified', async () => {
    const before = node.store.lastSeq;
    const refused = await as('POST', '/api/v1/messages', { from: { email: 'news@elsewhere.example' }, to: [{ email: 'web@sink.tern.test' }], subject: 'x', text: 'x' });
    expect(refused.status).toBe(403);
    expect(refused.body.error).toMatchObject({ code: 'domain_not_verified', message: expect.stringMatching(/Sending From elsewhere\.example is refused/) });
    expect(node.store.events(before).filter((e) => e.type === 'accepted')).toEqual([]);

    const sent = await as('POST', '/api/v1/messages', { from: { email: `news@${DOMAIN}`, name: 'Shop' }, to: [{ email: 'web@sink.tern.test', substitutions: { first_name: 'Wen' } }], subject: 'Your order, {{ first_name }}', html: '<p>Thanks, {{ first_name }}!</p>' });
    expect(sent.status).toBe(202);
    expect(sent.body.recipients).toEqual([{ email: 'web@sink.tern.test', status: 'queued', index: 0 }]);
    await sink.waitFor(() => sink.messages.some((m) => m.to.includes('web@sink.tern.test')), 15_000);
    const msg = sink.messages.find((m) => m.to.includes('web@sink.tern.test'))!;
    expect(msg.from).toMatch(new RegExp(`^b-[a-z0-9]+@bounces\\.${DOMAIN.replace(/\./g, '\\.')}$`));
    expect(msg.data!.toString()).toMatch(/^Subject: Your order, Wen\r$/m);
    expect(msg.data!.toString()).toContain('Thanks, Wen!');
    const resolver = new dns.promises.Resolver();
    resolver.setServers([dnsServer.address]);
    const verified = await dkimVerify(msg.data!, { resolver: (name: string, rr: string) => resolver.resolve(name, rr as 'TXT') });
    const ym = new Date().toISOString().slice(0, 7).replace('-', '');
    expect(verified.results.map((r: { selector?: string; signingDomain?: string; status: { result: string } }) => `${r.signingDomain}/${r.selector}:${r.status.result}`).sort()).toEqual([`${DOMAIN}/t${ym}e:pass`, `${DOMAIN}/t${ym}r:pass`]);

    // the stats show both sends (SMTP and HTTP) as delivered today
    const today = new Date().toISOString().slice(0, 10);
    let row: { accepted?: number; delivered?: number } | undefined;
    for (let i = 0; i < 50 && (row?.delivered ?? 0) < 2; i++) {
      row = (await as('GET', `/api/v1/stats?from=${today}&to=${today}`)).body.items[0];
      if ((row?.delivered ?? 0) < 2) await new Promise((r) => setTimeout(r, 100));
    }
    expect(row).toMatchObject({ accepted: 2, delivered: 2 });
  });
});

describe('each record, when wrong, gives its own failure and sentence', () => {
  it('SPF without the pool\'s address: wrong, the domain turns failing with a domain_failing event, and back', async () => {
    publish(replacing(DOMAIN, 'TXT', { type: 'TXT', name: DOMAIN, data: 'v=spf1 ip4:192.0.2.10 -all' }));
    const c = await check();
    expect(recordOf(c, 'spf')).toMatchObject({ status: 'wrong', found: 'v=spf1 ip4:192.0.2.10 -all', fix: expect.stringMatching(/does not permit 127\.0\.0\.2, an address Tern sends your mail from \(SPF fail\); add ip4:127\.0\.0\.2/) });
    expect(c.status).toBe('failing');
    const failing = (await as('GET', '/api/v1/events?type=domain_failing')).body.items;
    expect(failing).toEqual([expect.objectContaining({ domain: DOMAIN, previous: 'verified', problems: [expect.objectContaining({ record: 'spf', status: 'wrong' })] })]);
    // a failing domain was verified: it still signs and sends
    await sendAs(node.ports.submission, cred, 'during@sink.tern.test', { from: `news@${DOMAIN}` });
    publish();
    expect((await check()).status).toBe('verified');
    expect((await as('GET', '/api/v1/events?type=domain_verified')).body.items[0]).toMatchObject({ previous: 'failing' });
  });

  it('SPF over the 10-lookup limit: wrong, with the limit named', async () => {
    const chain: ZoneRecord[] = Array.from({ length: 11 }, (_, i) => ({ type: 'TXT', name: `inc${i}.tern.test`, data: `v=spf1 include:inc${i + 1}.tern.test ~all` }));
    publish((r) => [...replacing(DOMAIN, 'TXT', { type: 'TXT', name: DOMAIN, data: 'v=spf1 include:inc0.tern.test ip4:127.0.0.2 ~all' })(r), ...chain]);
    expect(recordOf(await check(), 'spf')).toMatchObject({ status: 'wrong', fix: expect.stringMatching(/needs more than 10 DNS lookups/) });
  });

  it('a DKIM record with another key: wrong, while the other selector keeps the domain verified', async () => {
    const other = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ type: 'pkcs8', format: 'pem' }) as string;
    const rsa = published.find((r) => r.type === 'TXT' && r.name.includes('r._domainkey'))!;
    publish(replacing(rsa.name, 'TXT', { type: 'TXT', name: rsa.name, data: dnsRecordFor(other).txt }));
    const c = await check();
    expect(recordOf(c, 'dkim_rsa')).toMatchObject({ status: 'wrong', fix: expect.stringMatching(/is not the one Tern signs with/) });
    expect(recordOf(c, 'dkim_ed25519').status).toBe('ok');
    expect(c.status).toBe('verified');
  });

  it('no bounce MX: missing, and the domain is not verified', async () => {
    publish(without(`bounces.${DOMAIN}`, 'MX'));
    const c = await check();
    expect(recordOf(c, 'bounce_mx')).toMatchObject({ status: 'missing', fix: expect.stringMatching(/so that bounces and complaints come back to Tern/) });
    expect(c.last_check.verified).toBe(false);
    publish((r) => replacing(`bounces.${DOMAIN}`, 'MX', { type: 'MX', name: `bounces.${DOMAIN}`, priority: 10, exchange: 'mx.elsewhere.tern.test' })(r));
    expect(recordOf(await check(), 'bounce_mx')).toMatchObject({ status: 'wrong', found: '10 mx.elsewhere.tern.test' });
  });

  it('no DMARC: a warning that says what to publish; the domain stays verified', async () => {
    publish(without(`_dmarc.${DOMAIN}`, 'TXT'));
    const c = await check();
    expect(recordOf(c, 'dmarc')).toMatchObject({ status: 'warning', fix: expect.stringMatching(/^No DMARC policy: .*publish a TXT record at _dmarc\.shop\.example/) });
    expect(c.status).toBe('verified');
  });

  it("a PTR that does not resolve back: a warning naming the address", async () => {
    publish();
    dnsServer.set([...BASE.filter((r) => r.type !== 'PTR'), { type: 'PTR', name: '127.0.0.2', target: 'other.tern.test' }, { type: 'A', name: 'other.tern.test', address: '127.0.0.9' }, ...published]);
    const c = await check();
    expect(recordOf(c, 'ptr')).toMatchObject({ status: 'warning', found: 'other.tern.test', fix: expect.stringMatching(/does not resolve back to 127\.0\.0\.2/) });
    expect(c.status).toBe('verified');
  });

  it('the tracking CNAME pointing elsewhere: a warning', async () => {
    publish(replacing(`track.${DOMAIN}`, 'CNAME', { type: 'CNAME', name: `track.${DOMAIN}`, target: 'node.tern.test' }));
    expect(recordOf(await check(), 'tracking_cname')).toMatchObject({ status: 'warning', fix: `track.${DOMAIN} is a CNAME of node.tern.test; point it to track.node.tern.test` });
  });

  it('a removed domain no longer sends, and the operator can allow unverified domains per tenant', async () => {
    expect((await as('DELETE', `/api/v1/domains/${DOMAIN}`)).status).toBe(204);
    expect((await as('GET', `/api/v1/domains/${DOMAIN}`)).status).toBe(404);
    await expect(sendAs(node.ports.submission, cred, 'after@sink.tern.test', { from: `news@${DOMAIN}` })).rejects.toMatchObject({ responseCode: 550 });
    await call('PATCH', '/api/v1/tenants/shop', { token: TOKEN, body: { allow_unverified_domains: true } });
    await sendAs(node.ports.submission, cred, 'allowed@sink.tern.test', { from: `news@${DOMAIN}` });
  });
});
