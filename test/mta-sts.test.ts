/**
 * MTA-STS end to end: a real DNS server for *.tern.test (MX, A, `_mta-sts` TXT), a real HTTPS policy host
 * with a certificate from a test CA, and sinks on 127.0.0.2-4 presenting certificates from that CA.
 */
import fs from 'node:fs';
import https from 'node:https';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import nodemailer from 'nodemailer';
import { startSink, type Sink } from '../bench/sink.js';
import { startDnsServer, type DnsServer, type ZoneRecord } from './support/dns-server.js';
import { freePort, shapingFile, startTestNode, tempDir } from './support/node.js';
import { testCa } from './support/tls.js';
import type { TernNode } from '../src/node.js';
import type { TernEvent } from '../src/core/store.js';
import { fetchPolicyText } from '../src/mta/mta-sts.js';

const TOKEN = 'operator-token-for-tests-0123456789';
const MX = { good: 'mx.good.tern.test', plain: 'mx.plain.tern.test', wrong: 'mx.wrong.tern.test' };

/** domain → its MX host, and the policy served for it (none: no TXT record) */
const DOMAINS: Record<string, { mx: string; policy?: string; status?: number; id?: string }> = {
  'enforce.tern.test': { mx: MX.good, policy: policyText('enforce', MX.good) },
  'notls.tern.test': { mx: MX.plain, policy: policyText('enforce', MX.plain) },
  'mismatch.tern.test': { mx: MX.good, policy: policyText('enforce', '*.elsewhere.tern.test') },
  'wrongcert.tern.test': { mx: MX.wrong, policy: policyText('enforce', MX.wrong) },
  'testing.tern.test': { mx: MX.wrong, policy: policyText('testing', '*.wrong.tern.test') },
  'unfetchable.tern.test': { mx: MX.plain, policy: 'gone', status: 404 },
  'nopolicy.tern.test': { mx: MX.plain },
  'cached.tern.test': { mx: MX.good, policy: policyText('enforce', '*.good.tern.test'), id: 'one' },
};

function policyText(mode: string, ...mx: string[]): string {
  return ['version: STSv1', `mode: ${mode}`, ...mx.map((m) => `mx: ${m}`), 'max_age: 86400', ''].join('\r\n');
}

function txt(domain: string, id: string): ZoneRecord {
  return { type: 'TXT', name: `_mta-sts.${domain}`, data: `v=STSv1; id=${id};`, ttl: 1 };
}

let dns: DnsServer;
let policyHost: https.Server;
const fetches = new Map<string, number>();
let sinks: Record<'good' | 'plain' | 'wrong', Sink>;
let node: TernNode;
let dataDir: string;
let overrides: Record<string, unknown>;
let caPem: string;
let httpsPort: number;
/** policy hosts that misbehave, for the fetch rules (RFC 8461 §3.3) */
const ODD_HOSTS: Record<string, (res: import('node:http').ServerResponse) => void> = {
  'redirect.tern.test': (res) => res.writeHead(301, { location: 'https://elsewhere.tern.test/policy.txt' }).end(),
  'html.tern.test': (res) => res.writeHead(200, { 'content-type': 'text/html' }).end(policyText('enforce', MX.good)),
  'charset.tern.test': (res) => res.writeHead(200, { 'content-type': 'text/plain; charset=utf-8' }).end(policyText('enforce', MX.good)),
  'huge.tern.test': (res) => res.writeHead(200, { 'content-type': 'text/plain' }).end(policyText('enforce', MX.good) + '#'.repeat(70_000)),
  'slow.tern.test': (res) => res.writeHead(200, { 'content-type': 'text/plain' }).write('version: STSv1\r\n'), // and never ends
};

beforeAll(async () => {
  const ca = await testCa();
  const leaf = ca.leaf;
  const caFile = path.join(tempDir('tern-ca-'), 'ca.pem');
  fs.writeFileSync(caFile, ca.cert);
  caPem = ca.cert;

  // the policy host: one certificate for every mta-sts.<domain>
  const hostCert = await leaf([...Object.keys(DOMAINS), ...Object.keys(ODD_HOSTS)].map((d) => `mta-sts.${d}`));
  policyHost = https.createServer({ key: hostCert.private, cert: hostCert.cert }, (req, res) => {
    const domain = String(req.headers.host).replace(/:\d+$/, '').replace(/^mta-sts\./, '');
    fetches.set(domain, (fetches.get(domain) ?? 0) + 1);
    if (ODD_HOSTS[domain]) return ODD_HOSTS[domain](res);
    const d = DOMAINS[domain];
    if (!d?.policy || req.url !== '/.well-known/mta-sts.txt') return res.writeHead(404).end();
    res.writeHead(d.status ?? 200, { 'content-type': 'text/plain' }).end(d.policy);
  });
  httpsPort = await freePort();
  await new Promise<void>((r) => policyHost.listen(httpsPort, '127.0.0.1', r));

  // every MX host listens on the same port (delivery.smtp_port), on its own loopback address
  const smtpPort = await freePort();
  const good = await leaf([MX.good]);
  const wrong = await leaf(['impostor.tern.test']);
  sinks = {
    good: await startSink({ host: '127.0.0.2', port: smtpPort, tls: { key: good.private, cert: good.cert } }),
    plain: await startSink({ host: '127.0.0.3', port: smtpPort }),
    wrong: await startSink({ host: '127.0.0.4', port: smtpPort, tls: { key: wrong.private, cert: wrong.cert } }),
  };

  const records: ZoneRecord[] = [
    { type: 'A', name: MX.good, address: '127.0.0.2' },
    { type: 'A', name: MX.plain, address: '127.0.0.3' },
    { type: 'A', name: MX.wrong, address: '127.0.0.4' },
  ];
  for (const [domain, d] of Object.entries(DOMAINS)) {
    records.push({ type: 'MX', name: domain, priority: 10, exchange: d.mx });
    if (!d.policy) continue;
    records.push(txt(domain, d.id ?? 'p1'), { type: 'A', name: `mta-sts.${domain}`, address: '127.0.0.1' });
  }
  dns = await startDnsServer({ records, zones: ['tern.test'] });

  dataDir = tempDir();
  overrides = {
    dns: { servers: [dns.address] },
    delivery: { smtp_port: smtpPort, tls_ca_file: caFile, mta_sts: { https_port: httpsPort } },
    // connections are not kept idle, so that each message below is sent under the policy then in force
    shaping: { file: shapingFile({ default: { idle_timeout: '100ms' } }) },
    control: { admin_token: TOKEN },
    retry: { schedule: ['1h'] },
  };
  node = await startTestNode(overrides, { dataDir });
});

afterAll(async () => {
  await node?.stop();
  for (const s of Object.values(sinks ?? {})) await s.close();
  await dns?.close();
  policyHost?.closeAllConnections();
  if (policyHost) await new Promise((r) => policyHost.close(r));
});

const send = (to: string, id: string) =>
  nodemailer
    .createTransport({ host: '127.0.0.1', port: node.ports.submission, auth: { user: 'tenant1', pass: 'secret-1' }, ignoreTLS: true })
    .sendMail({ from: 'a@sender.tern.test', to, text: 'x', messageId: id });

async function eventFor(pred: (e: TernEvent) => boolean, what: string, timeoutMs = 15_000): Promise<TernEvent> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const e = node.store.events(0, 1e6).find(pred);
    if (e) return e;
    if (Date.now() > until) throw new Error(`no ${what}; events: ${JSON.stringify(node.store.events(0, 1e6).filter((x) => x.type !== 'accepted'))}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** The delivery result (delivered, deferred, failed) of the message sent to `rcpt` with `id`. */
async function resultOf(rcpt: string, queueIdOf: string): Promise<TernEvent> {
  const accepted = await eventFor((e) => e.type === 'accepted' && e.message_id === queueIdOf, `accepted event for ${queueIdOf}`);
  return eventFor((e) => e.queue_id === accepted.queue_id && e.rcpt === rcpt && e.type !== 'accepted', `result for ${rcpt}`);
}

const stsFailures = (domain: string) => node.store.events(0, 1e6).filter((e) => e.type === 'mta_sts_failure' && e.domain === domain);
const received = (sink: Sink, id: string) => sink.messages.filter((m) => m.id === id);

describe('enforce mode', () => {
  it('delivers over verified TLS to an MX host the policy lists', async () => {
    await send('a@enforce.tern.test', '<enforce-1@x>');
    const r = await resultOf('a@enforce.tern.test', '<enforce-1@x>');
    expect(r.type, JSON.stringify(r)).toBe('delivered');
    expect(String(r.mx)).toMatch(/^mx\.good\.tern\.test\[127\.0\.0\.2\]/);
    expect(received(sinks.good, '<enforce-1@x>')).toEqual([expect.objectContaining({ tls: true })]);
    expect(fetches.get('enforce.tern.test')).toBe(1);
    expect(stsFailures('enforce.tern.test')).toEqual([]);
  });

  it('defers, never sending in clear, when the MX host offers no STARTTLS', async () => {
    await send('a@notls.tern.test', '<notls-1@x>');
    const r = await resultOf('a@notls.tern.test', '<notls-1@x>');
    expect(r.type).toBe('deferred');
    expect(String(r.response)).toMatch(/^451 4\.7\.4 MTA-STS policy of notls\.tern\.test: mx\.plain\.tern\.test\[127\.0\.0\.3\]:\d+: STARTTLS was not available/);
    expect(received(sinks.plain, '<notls-1@x>')).toEqual([]);
    expect(stsFailures('notls.tern.test')).toEqual([expect.objectContaining({ mode: 'enforce', policy_id: 'p1', result_type: 'starttls-not-supported' })]);
  });

  it("holds only the policy's domain: a domain without a policy on the same MX site is delivered", async () => {
    // notls.tern.test and nopolicy.tern.test share the site mx:mx.plain.tern.test
    await nodemailer
      .createTransport({ host: '127.0.0.1', port: node.ports.submission, auth: { user: 'tenant1', pass: 'secret-1' }, ignoreTLS: true })
      .sendMail({ from: 'a@sender.tern.test', to: ['b@notls.tern.test', 'b@nopolicy.tern.test'], text: 'x', messageId: '<mixed-1@x>' });
    expect((await resultOf('b@notls.tern.test', '<mixed-1@x>')).type).toBe('deferred');
    expect((await resultOf('b@nopolicy.tern.test', '<mixed-1@x>')).type).toBe('delivered');
    expect(received(sinks.plain, '<mixed-1@x>').map((m) => m.to)).toEqual([['b@nopolicy.tern.test']]);
    const queues = node.scheduler.snapshot().ready.filter((q) => q.site === 'mx:mx.plain.tern.test').map((q) => q.key);
    expect(queues).toEqual(expect.arrayContaining(['default->mx:mx.plain.tern.test', 'default->mx:mx.plain.tern.test#notls.tern.test']));
  });

  it('defers when no MX host matches the policy, without connecting', async () => {
    const before = sinks.good.connections.length;
    await send('a@mismatch.tern.test', '<mismatch-1@x>');
    const r = await resultOf('a@mismatch.tern.test', '<mismatch-1@x>');
    expect(r.type).toBe('deferred');
    expect(String(r.response)).toBe('451 4.7.5 MTA-STS policy of mismatch.tern.test: MX host mx.good.tern.test does not match the policy\'s mx patterns (*.elsewhere.tern.test)');
    expect(received(sinks.good, '<mismatch-1@x>')).toEqual([]);
    expect(sinks.good.connections.length).toBe(before);
  });

  it('defers when the certificate is not valid for the MX host name', async () => {
    await send('a@wrongcert.tern.test', '<wrongcert-1@x>');
    const r = await resultOf('a@wrongcert.tern.test', '<wrongcert-1@x>');
    expect(r.type).toBe('deferred');
    expect(String(r.response)).toMatch(/^451 4\.7\.5 MTA-STS policy of wrongcert\.tern\.test: mx\.wrong\.tern\.test\[127\.0\.0\.4\]:\d+: the certificate is not valid for the MX host name \(ERR_TLS_CERT_ALTNAME_INVALID/);
    expect(received(sinks.wrong, '<wrongcert-1@x>')).toEqual([]);
    expect(stsFailures('wrongcert.tern.test')).toEqual([expect.objectContaining({ mode: 'enforce', result_type: 'certificate-host-mismatch' })]);
  });
});

describe('testing mode', () => {
  it('delivers as usual and records what enforce would have refused', async () => {
    await send('a@testing.tern.test', '<testing-1@x>');
    const r = await resultOf('a@testing.tern.test', '<testing-1@x>');
    expect(r.type, JSON.stringify(r)).toBe('delivered');
    expect(received(sinks.wrong, '<testing-1@x>')).toEqual([expect.objectContaining({ tls: true })]);
    const failures = await eventFor((e) => e.type === 'mta_sts_failure' && e.domain === 'testing.tern.test', 'mta_sts_failure event');
    expect(failures).toMatchObject({ mode: 'testing', policy_id: 'p1', result_type: 'certificate-host-mismatch' });
    expect(String(failures.mx)).toMatch(/^mx\.wrong\.tern\.test\[127\.0\.0\.4\]:\d+$/);
    expect(String(failures.reason)).toMatch(/not valid for the MX host name/);
  });
});

describe('no usable policy', () => {
  it('delivers as usual when the TXT record exists but the policy cannot be fetched', async () => {
    await send('a@unfetchable.tern.test', '<unfetchable-1@x>');
    const r = await resultOf('a@unfetchable.tern.test', '<unfetchable-1@x>');
    expect(r.type).toBe('delivered');
    expect(received(sinks.plain, '<unfetchable-1@x>')).toEqual([expect.objectContaining({ tls: false })]);
    expect(fetches.get('unfetchable.tern.test')).toBe(1);
  });

  it('delivers as usual without a TXT record, and fetches nothing', async () => {
    await send('a@nopolicy.tern.test', '<nopolicy-1@x>');
    expect((await resultOf('a@nopolicy.tern.test', '<nopolicy-1@x>')).type).toBe('delivered');
    expect(fetches.has('nopolicy.tern.test')).toBe(false);
  });
});

describe('explain shows the policy', () => {
  const explain = async (domain: string) => {
    const res = await fetch(`http://127.0.0.1:${node.ports.control}/api/v1/shaping/explain?domain=${domain}`, { headers: { authorization: `Bearer ${TOKEN}` } });
    expect(res.status).toBe(200);
    return ((await res.json()) as { mta_sts: Record<string, unknown> }).mta_sts;
  };

  it('for a domain with a policy, and for one without', async () => {
    expect(await explain('enforce.tern.test')).toMatchObject({ mode: 'enforce', id: 'p1', mx: [MX.good], max_age: 86400, effect: expect.stringMatching(/^enforce: only MX hosts matching/) });
    expect(await explain('nopolicy.tern.test')).toMatchObject({ mode: null, id: null, note: 'no _mta-sts TXT record' });
  });
});

describe('policy cache', () => {
  it('does not refetch while the id is unchanged, refetches when it changes, and keeps enforcing a cached policy it cannot refresh', async () => {
    const domain = 'cached.tern.test';
    const txtQueries = () => dns.queries.filter((q) => q.name === `_mta-sts.${domain}` && q.type === 'TXT').length;
    const waitTxtTtl = () => new Promise((r) => setTimeout(r, 1_200));

    await send(`a@${domain}`, '<cached-1@x>');
    expect((await resultOf(`a@${domain}`, '<cached-1@x>')).type).toBe('delivered');
    expect(fetches.get(domain)).toBe(1);

    // the TXT record is looked up again after its TTL; same id: the cached policy is used
    const queriesBefore = txtQueries();
    await waitTxtTtl();
    await send(`a@${domain}`, '<cached-2@x>');
    expect((await resultOf(`a@${domain}`, '<cached-2@x>')).type).toBe('delivered');
    expect(txtQueries()).toBeGreaterThan(queriesBefore);
    expect(fetches.get(domain)).toBe(1);

    // a new id: the new policy (which no longer lists the MX host) is fetched and applies
    DOMAINS[domain]!.policy = policyText('enforce', '*.elsewhere.tern.test');
    dns.set(dns.records.map((r) => (r.type === 'TXT' && r.name === `_mta-sts.${domain}` ? txt(domain, 'two') : r)));
    await waitTxtTtl();
    await send(`a@${domain}`, '<cached-3@x>');
    const third = await resultOf(`a@${domain}`, '<cached-3@x>');
    expect(third.type).toBe('deferred');
    expect(String(third.response)).toMatch(/^451 4\.7\.5 MTA-STS policy of cached\.tern\.test: MX host mx\.good\.tern\.test does not match/);
    expect(fetches.get(domain)).toBe(2);

    // a restarted node, a newer id, and the policy host failing: the persisted policy "two" still applies
    await node.stop();
    DOMAINS[domain]!.status = 503;
    dns.set(dns.records.map((r) => (r.type === 'TXT' && r.name === `_mta-sts.${domain}` ? txt(domain, 'three') : r)));
    node = await startTestNode(overrides, { dataDir });
    await send(`a@${domain}`, '<cached-4@x>');
    const fourth = await resultOf(`a@${domain}`, '<cached-4@x>');
    expect(fourth.type).toBe('deferred');
    expect(String(fourth.response)).toMatch(/MX host mx\.good\.tern\.test does not match the policy's mx patterns \(\*\.elsewhere\.tern\.test\)/);
    expect(fetches.get(domain)).toBe(3);
    expect(received(sinks.good, '<cached-3@x>')).toEqual([]);
    expect(received(sinks.good, '<cached-4@x>')).toEqual([]);
  });
});

describe('policy fetch over HTTPS (RFC 8461 §3.3)', () => {
  const get = (domain: string, opts: { ca?: string[]; timeoutMs?: number } = {}) =>
    fetchPolicyText(domain, { addresses: ['127.0.0.1'], port: httpsPort, timeoutMs: opts.timeoutMs ?? 5_000, ca: 'ca' in opts ? opts.ca : [caPem] });

  it('takes a text/plain policy from a host whose certificate is valid for mta-sts.<domain>', async () => {
    expect(await get('enforce.tern.test')).toBe(policyText('enforce', MX.good));
    expect(await get('charset.tern.test')).toBe(policyText('enforce', MX.good));
  });

  it.each([
    ['redirect.tern.test', /HTTP 301 \(redirects are not followed\)/],
    ['html.tern.test', /content type "text\/html" is not text\/plain/],
    ['huge.tern.test', /larger than 65536 bytes/],
    ['unfetchable.tern.test', /HTTP 404/],
  ])('refuses %s', async (domain, error) => {
    await expect(get(domain)).rejects.toThrow(error);
  });

  it('gives up at the deadline', async () => {
    await expect(get('slow.tern.test', { timeoutMs: 300 })).rejects.toThrow(/did not answer within 300 ms/);
  });

  it('refuses a certificate that does not chain to a trusted CA', async () => {
    await expect(get('enforce.tern.test', { ca: undefined })).rejects.toThrow(/certificate/i);
  });

  it('tries the next address when one refuses connections', async () => {
    const text = await fetchPolicyText('enforce.tern.test', { addresses: ['127.0.0.9', '127.0.0.1'], port: httpsPort, timeoutMs: 5_000, ca: [caPem] });
    expect(text).toMatch(/^version: STSv1/);
  });
});
