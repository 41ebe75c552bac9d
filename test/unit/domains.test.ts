/**
 * Sending domains without sockets: the records a domain's owner publishes, each check's verdict and sentence
 * against a fake resolver, and how a check moves a domain's status.
 */
import crypto from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { checkCname, checkDkim, checkDmarc, checkDomain, checkMx, checkPtr, checkSpf, type CheckInput, type CheckResult, type DnsRecordSpec, type Resolve } from '../../src/control/domain-checks.js';
import { nextStatus, recordsFor, selectorsFor, spfValue, type DomainSettings } from '../../src/control/domains.js';
import { reverseName } from '../../src/mta/dns.js';
import { dnsRecordFor } from '../../src/mta/dkim.js';

const SETTINGS: DomainSettings = { inboundMx: 'mx.tern.example', trackingCname: 'track.tern.example', spfInclude: null, dmarcRua: null, bounceLabel: 'bounces', trackingLabel: 'track', recheckMs: 6 * 3_600_000 };
const SOURCES = [{ name: 'a', address: '198.51.100.7', ehlo: 'out1.tern.example' }];
const pem = (type: 'rsa' | 'ed25519') => (type === 'rsa' ? crypto.generateKeyPairSync('rsa', { modulusLength: 1024 }) : crypto.generateKeyPairSync('ed25519')).privateKey.export({ type: 'pkcs8', format: 'pem' }) as string;
const RSA = dnsRecordFor(pem('rsa')).txt;
const DOMAIN = { domain: 'shop.example', keys: [{ selector: 't202611r', algorithm: 'rsa' as const, sealed: '', txt: RSA }], bounce_domain: 'bounces.shop.example', tracking_domain: 'track.shop.example' };
const RECORDS = recordsFor(DOMAIN, SETTINGS, SOURCES);
const spec = (key: string) => RECORDS.find((r) => r.key === key)!;
const input = (over: Partial<CheckInput> = {}): CheckInput => ({ domain: 'shop.example', records: RECORDS, sources: SOURCES, envelopeDomain: 'bounces.shop.example', spfInclude: null, mta: 'mx.tern.example', ...over });

/** A resolver over a little zone: name → type → answers (node:dns shapes); an unknown name is ENOTFOUND. */
function zone(records: Record<string, Record<string, unknown[]>>): Resolve {
  return async (name, type) => {
    const n = records[name.toLowerCase()];
    if (!n) throw Object.assign(new Error('ENOTFOUND'), { code: 'ENOTFOUND' });
    const a = n[type];
    if (!a?.length) throw Object.assign(new Error('ENODATA'), { code: 'ENODATA' });
    return a;
  };
}

describe('the records to publish', () => {
  it('SPF names the pool\'s addresses, or the node\'s include, or a:<mx host> for a pool without fixed addresses', () => {
    expect(spfValue(SETTINGS, SOURCES)).toBe('v=spf1 ip4:198.51.100.7 ~all');
    expect(spfValue(SETTINGS, [...SOURCES, { name: 'b', address: '2001:db8::1', ehlo: 'x' }, { name: 'c', address: '198.51.100.7', ehlo: 'y' }])).toBe('v=spf1 ip4:198.51.100.7 ip6:2001:db8::1 ~all');
    expect(spfValue({ ...SETTINGS, spfInclude: '_spf.tern.example' }, SOURCES)).toBe('v=spf1 include:_spf.tern.example ~all');
    expect(spfValue(SETTINGS, [{ name: 'd', address: '0.0.0.0', ehlo: 'z' }])).toBe('v=spf1 a:mx.tern.example ~all');
  });

  it('lists SPF, the DKIM keys, DMARC, the bounce MX and SPF, the tracking CNAME', () => {
    expect(RECORDS.map((r) => [r.key, r.name, r.type, r.required])).toEqual([
      ['spf', 'shop.example', 'TXT', true],
      ['dkim_rsa', 't202611r._domainkey.shop.example', 'TXT', true],
      ['dmarc', '_dmarc.shop.example', 'TXT', false],
      ['bounce_mx', 'bounces.shop.example', 'MX', true],
      ['bounce_spf', 'bounces.shop.example', 'TXT', false],
      ['tracking_cname', 'track.shop.example', 'CNAME', false],
    ]);
    expect(spec('dmarc').value).toBe('v=DMARC1; p=none; rua=mailto:postmaster@shop.example');
    expect(recordsFor(DOMAIN, { ...SETTINGS, dmarcRua: 'dmarc@tern.example' }, SOURCES).find((r) => r.key === 'dmarc')!.value).toBe('v=DMARC1; p=none; rua=mailto:dmarc@tern.example');
    expect(spec('bounce_mx')).toMatchObject({ value: 'mx.tern.example', priority: 10 });
  });

  it('selectors name the month they were made in', () => {
    expect(selectorsFor(Date.UTC(2026, 10, 30))).toEqual({ rsa: 't202611r', ed25519: 't202611e' });
  });

  it('reverse names', () => {
    expect(reverseName('198.51.100.7')).toBe('7.100.51.198.in-addr.arpa');
    expect(reverseName('2001:db8::1')).toBe(`1.0.0.0.${'0.'.repeat(20)}8.b.d.0.1.0.0.2.ip6.arpa`);
  });
});

describe('each check, and its sentence', () => {
  it('SPF: missing, two records, not permitting the pool, over 10 lookups, ok', async () => {
    expect(await checkSpf(spec('spf'), input(), zone({}))).toMatchObject({ status: 'missing', fix: 'Publish a TXT record at shop.example with the value "v=spf1 ip4:198.51.100.7 ~all"' });
    expect(await checkSpf(spec('bounce_spf'), input(), zone({}))).toMatchObject({ status: 'warning' });
    expect(await checkSpf(spec('spf'), input(), zone({ 'shop.example': { TXT: [['v=spf1 -all'], ['v=spf1 ~all']] } }))).toMatchObject({ status: 'wrong', fix: expect.stringMatching(/has 2 SPF records, and receivers then ignore them all; merge them/) });
    expect(await checkSpf(spec('spf'), input(), zone({ 'shop.example': { TXT: [['v=spf1 ip4:192.0.2.1 ~all']] } }))).toMatchObject({ status: 'wrong', fix: expect.stringMatching(/does not permit 198\.51\.100\.7.*\(SPF softfail\); add ip4:198\.51\.100\.7/) });
    const chain = Object.fromEntries(Array.from({ length: 12 }, (_, i) => [`i${i}.example`, { TXT: [[`v=spf1 include:i${i + 1}.example ~all`]] }]));
    expect(await checkSpf(spec('spf'), input(), zone({ ...chain, 'shop.example': { TXT: [['v=spf1 include:i0.example ~all']] } }))).toMatchObject({ status: 'wrong', fix: expect.stringMatching(/more than 10 DNS lookups/) });
    // split TXT strings are joined, as receivers do
    expect(await checkSpf(spec('spf'), input(), zone({ 'shop.example': { TXT: [['v=spf1 ip4:198.51.', '100.7 ~all']] } }))).toMatchObject({ status: 'ok', fix: 'Permits 198.51.100.7 with 0 of 10 DNS lookups' });
  });

  it('SPF of a pool without fixed addresses: the include or a: must be named', async () => {
    const wild = input({ sources: [{ name: 'd', address: '0.0.0.0', ehlo: 'z' }], spfInclude: '_spf.tern.example' });
    const s: DnsRecordSpec = { ...spec('spf'), value: 'v=spf1 include:_spf.tern.example ~all' };
    const z = { '_spf.tern.example': { TXT: [['v=spf1 ip4:192.0.2.0/24 ~all']] } };
    expect(await checkSpf(s, wild, zone({ ...z, 'shop.example': { TXT: [['v=spf1 mx ~all']] } }))).toMatchObject({ status: 'wrong', fix: expect.stringMatching(/does not name include:_spf\.tern\.example/) });
    expect(await checkSpf(s, wild, zone({ ...z, 'shop.example': { TXT: [['v=spf1 include:_spf.tern.example ~all']] } }))).toMatchObject({ status: 'ok' });
  });

  it('DKIM: missing, another key, revoked, ok', async () => {
    const s = spec('dkim_rsa');
    expect(await checkDkim(s, zone({}))).toMatchObject({ status: 'missing', fix: `Publish a TXT record at ${s.name} with the value "${RSA}"` });
    expect(await checkDkim(s, zone({ [s.name]: { TXT: [[dnsRecordFor(pem('rsa')).txt]] } }))).toMatchObject({ status: 'wrong', fix: expect.stringMatching(/is not the one Tern signs with/) });
    expect(await checkDkim(s, zone({ [s.name]: { TXT: [['v=DKIM1; k=rsa; p=']] } }))).toMatchObject({ status: 'wrong', fix: expect.stringMatching(/revoked/) });
    // published in 255-byte chunks, with spaces after the semicolons
    const chunks = RSA.replace(/; /g, ';  ').match(/.{1,255}/g)!;
    expect(await checkDkim(s, zone({ [s.name]: { TXT: [chunks] } }))).toMatchObject({ status: 'ok' });
  });

  it('DMARC: missing is a warning; no valid policy is wrong; SPF alignment follows the envelope domain (relaxed or strict)', async () => {
    const s = spec('dmarc');
    expect(await checkDmarc(s, input(), zone({}))).toMatchObject({ status: 'warning', fix: expect.stringMatching(/^No DMARC policy/) });
    expect(await checkDmarc(s, input(), zone({ '_dmarc.shop.example': { TXT: [['v=DMARC1; p=maybe']] } }))).toMatchObject({ status: 'wrong' });
    const dmarc = (rec: string) => zone({ '_dmarc.shop.example': { TXT: [[rec]] } });
    expect(await checkDmarc(s, input(), dmarc('v=DMARC1; p=reject'))).toMatchObject({ status: 'ok', fix: expect.stringMatching(/^Policy p=reject; both SPF/) });
    expect(await checkDmarc(s, input({ envelopeDomain: 'bounces.tern.example' }), dmarc('v=DMARC1; p=none'))).toMatchObject({ status: 'warning', fix: expect.stringMatching(/SPF will not align, because the envelope sender domain is bounces\.tern\.example/) });
    expect(await checkDmarc(s, input(), dmarc('v=DMARC1; p=none; aspf=s'))).toMatchObject({ status: 'warning', fix: expect.stringMatching(/relax aspf=s/) });
  });

  it('bounce MX: missing, elsewhere, with extra hosts, ok', async () => {
    const s = spec('bounce_mx');
    expect(await checkMx(s, zone({}))).toMatchObject({ status: 'missing' });
    expect(await checkMx(s, zone({ 'bounces.shop.example': { MX: [{ exchange: 'mx.other.example', priority: 10 }] } }))).toMatchObject({ status: 'wrong', found: '10 mx.other.example', fix: expect.stringMatching(/points elsewhere; make it mx\.tern\.example/) });
    expect(await checkMx(s, zone({ 'bounces.shop.example': { MX: [{ exchange: 'mx.tern.example', priority: 10 }, { exchange: 'mx.other.example', priority: 20 }] } }))).toMatchObject({ status: 'warning' });
    expect(await checkMx(s, zone({ 'bounces.shop.example': { MX: [{ exchange: 'mx.tern.example', priority: 10 }] } }))).toMatchObject({ status: 'ok' });
  });

  it('tracking CNAME: missing and elsewhere are warnings', async () => {
    const s = spec('tracking_cname');
    expect(await checkCname(s, zone({}))).toMatchObject({ status: 'warning', fix: expect.stringMatching(/^Publish a CNAME record at track\.shop\.example pointing to track\.tern\.example/) });
    expect(await checkCname(s, zone({ 'track.shop.example': { CNAME: ['track.tern.example'] } }))).toMatchObject({ status: 'ok' });
  });

  it('PTR: not applicable for 0.0.0.0, missing, not forward-confirmed, not the EHLO name, ok', async () => {
    const src = SOURCES[0]!;
    const rev = reverseName(src.address);
    expect(await checkPtr({ ...src, address: '0.0.0.0' }, zone({}))).toMatchObject({ status: 'not_applicable' });
    expect(await checkPtr(src, zone({}))).toMatchObject({ status: 'warning', fix: expect.stringMatching(/has no reverse DNS; .*set its PTR to out1\.tern\.example/) });
    expect(await checkPtr(src, zone({ [rev]: { PTR: ['host.isp.example'] }, 'host.isp.example': { A: ['192.0.2.9'] } }))).toMatchObject({ status: 'warning', fix: expect.stringMatching(/does not resolve back/) });
    expect(await checkPtr(src, zone({ [rev]: { PTR: ['host.isp.example'] }, 'host.isp.example': { A: ['198.51.100.7'] } }))).toMatchObject({ status: 'warning', fix: expect.stringMatching(/greets with out1\.tern\.example; make the EHLO name and the PTR the same/) });
    expect(await checkPtr(src, zone({ [rev]: { PTR: ['out1.tern.example'] }, 'out1.tern.example': { A: ['198.51.100.7'] } }))).toMatchObject({ status: 'ok' });
  });

  it('a DNS failure is inconclusive, not "missing"', async () => {
    const failing: Resolve = async () => { throw Object.assign(new Error('queryTxt ESERVFAIL'), { code: 'ESERVFAIL' }); };
    const r = await checkDomain(input(), failing);
    expect(r.verified).toBe(false);
    expect(r.inconclusive).toBe(true);
    expect(r.records.find((c) => c.key === 'bounce_mx')).toMatchObject({ status: 'warning', fix: expect.stringMatching(/The lookup failed .*check again in a few minutes/) });
  });
});

describe('status moves', () => {
  const result = (verified: boolean, inconclusive = false): CheckResult => ({ checked_at: 1, verified, inconclusive, records: [] });
  it('pending → verified, verified → failing → verified, with an event on each move; an inconclusive check moves nothing', () => {
    expect(nextStatus('pending', result(false))).toEqual({ status: 'pending', event: null });
    expect(nextStatus('pending', result(true))).toEqual({ status: 'verified', event: 'domain_verified' });
    expect(nextStatus('verified', result(true))).toEqual({ status: 'verified', event: null });
    expect(nextStatus('verified', result(false))).toEqual({ status: 'failing', event: 'domain_failing' });
    expect(nextStatus('verified', result(false, true))).toEqual({ status: 'verified', event: null });
    expect(nextStatus('failing', result(false))).toEqual({ status: 'failing', event: null });
    expect(nextStatus('failing', result(true))).toEqual({ status: 'verified', event: 'domain_verified' });
  });
});
