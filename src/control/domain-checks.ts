/**
 * The live DNS check of a sending domain: each record Tern asked the tenant to publish is looked up and
 * compared, and each comes back with what was expected, what was found, a status and one sentence saying how
 * to fix it. Also the PTR and forward-confirmed reverse DNS of every egress source of the tenant's pool.
 *
 * Everything asks through `resolve` (the `dns.promises.resolve` contract, as mailauth takes it): the node
 * passes its own DnsClient (resolverFor), unit tests a fake. SPF is evaluated by mailauth (with its limit of
 * 10 DNS lookups), DMARC fetched by mailauth (with the organisational-domain fallback).
 */
import net from 'node:net';
import getDmarcRecord from 'mailauth/lib/dmarc/get-dmarc-record.js';
import { spf } from 'mailauth/lib/spf/index.js';
import { getDomain } from 'tldts';
import { reverseName } from '../mta/dns.js';

export type Resolve = (name: string, rrtype: string) => Promise<unknown[]>;

export type RecordKey = 'spf' | 'dkim_rsa' | 'dkim_ed25519' | 'dmarc' | 'bounce_mx' | 'bounce_spf' | 'tracking_cname' | 'ptr';

/** A record the tenant publishes. */
export interface DnsRecordSpec {
  key: RecordKey;
  name: string;
  type: 'TXT' | 'MX' | 'CNAME';
  value: string;
  /** MX only */
  priority?: number;
  /** needed for the domain to be verified (the others give warnings) */
  required: boolean;
}

export type CheckStatus = 'ok' | 'missing' | 'wrong' | 'warning' | 'not_applicable';

export interface RecordCheck {
  key: RecordKey;
  name: string;
  type: string;
  expected: string;
  found: string | null;
  status: CheckStatus;
  /** what to do about it (on ok: what was confirmed) */
  fix: string;
  /** the lookup failed for a reason other than "no such record": the result says nothing either way */
  inconclusive?: boolean;
}

export interface CheckResult {
  checked_at: number;
  /** SPF, at least one DKIM key and the bounce MX are ok */
  verified: boolean;
  /** a required record could not be looked up (DNS failure): the status should not change on it */
  inconclusive: boolean;
  records: RecordCheck[];
}

export interface EgressSourceInfo {
  name: string;
  address: string;
  ehlo: string;
}

export interface CheckInput {
  domain: string;
  records: DnsRecordSpec[];
  /** the egress sources of the tenant's pool */
  sources: EgressSourceInfo[];
  /** the domain of the tenant's VERP envelope senders (for SPF alignment) */
  envelopeDomain: string;
  /** the SPF include the node's records name, if any */
  spfInclude: string | null;
  /** the host a 0.0.0.0 pool is named by in SPF (a:<host>) */
  mta: string;
}

type Lookup = { ok: true; values: unknown[] } | { ok: false; missing: true } | { ok: false; missing: false; error: string };

async function lookup(resolve: Resolve, name: string, type: string): Promise<Lookup> {
  try {
    return { ok: true, values: await resolve(name, type) };
  } catch (err) {
    const code = (err as { code?: string }).code;
    if (code === 'ENOTFOUND' || code === 'ENODATA') return { ok: false, missing: true };
    return { ok: false, missing: false, error: (err as Error).message };
  }
}

const txtRows = (values: unknown[]) => values.map((v) => (Array.isArray(v) ? v.join('') : String(v)));
const isWildcard = (ip: string) => ip === '0.0.0.0' || ip === '::';
const failed = (base: Omit<RecordCheck, 'status' | 'fix' | 'found'>, error: string): RecordCheck => ({ ...base, found: null, status: 'warning', inconclusive: true, fix: `The lookup failed (${error}); check again in a few minutes` });

/** SPF at `spec.name`: one record, within 10 DNS lookups, permitting every source address of the pool. */
export async function checkSpf(spec: DnsRecordSpec, input: CheckInput, resolve: Resolve): Promise<RecordCheck> {
  const base = { key: spec.key, name: spec.name, type: 'TXT', expected: spec.value };
  const missingStatus = spec.required ? 'missing' : 'warning';
  const found = await lookup(resolve, spec.name, 'TXT');
  if (!found.ok && !found.missing) return failed(base, found.error);
  const rows = found.ok ? txtRows(found.values).filter((r) => /^v=spf1(\s|$)/i.test(r.trim())) : [];
  if (!rows.length) return { ...base, found: null, status: missingStatus, fix: `Publish a TXT record at ${spec.name} with the value "${spec.value}"` };
  if (rows.length > 1)
    return { ...base, found: rows.join(' | '), status: 'wrong', fix: `${spec.name} has ${rows.length} SPF records, and receivers then ignore them all; merge them into one, e.g. "${spec.value}"` };
  const record = rows[0]!.trim();
  const addresses = input.sources.map((s) => s.address).filter((a) => !isWildcard(a));
  // with no fixed source address, still evaluate the record (syntax, lookup count) against a documentation address
  const probes = addresses.length ? addresses : ['192.0.2.1'];
  for (const ip of probes) {
    const result = (await spf({ sender: `postmaster@${spec.name}`, ip, helo: input.mta, mta: input.mta, resolver: resolve as never })) as unknown as {
      status: { result: string; comment?: string };
      lookups?: { count: number; limit: number };
    };
    const count = result.lookups?.count ?? 0;
    if (result.status.result === 'permerror' && /Too many DNS requests/i.test(result.status.comment ?? ''))
      return { ...base, found: record, status: 'wrong', fix: `The SPF record of ${spec.name} needs more than 10 DNS lookups, so receivers treat it as an error (permerror); remove includes you no longer use or replace them with ip4:/ip6: ranges` };
    if (result.status.result === 'permerror')
      return { ...base, found: record, status: 'wrong', fix: `The SPF record of ${spec.name} is invalid (${result.status.comment ?? 'permerror'}); replace it with "${spec.value}"` };
    if (result.status.result === 'temperror') return failed(base, result.status.comment ?? 'temporary DNS error');
    if (addresses.length && result.status.result !== 'pass') {
      const add = input.spfInclude ? `include:${input.spfInclude}` : `ip${net.isIPv6(ip) ? 6 : 4}:${ip}`;
      return { ...base, found: record, status: 'wrong', fix: `The SPF record of ${spec.name} does not permit ${ip}, an address Tern sends your mail from (SPF ${result.status.result}); add ${add} before the "all", as in "${spec.value}"` };
    }
    if (!addresses.length) {
      const needed = input.spfInclude ? `include:${input.spfInclude}` : `a:${input.mta}`;
      if (!record.toLowerCase().split(/\s+/).includes(needed.toLowerCase()))
        return { ...base, found: record, status: 'wrong', fix: `The SPF record of ${spec.name} does not name ${needed}, which covers the addresses Tern sends from; add it before the "all", as in "${spec.value}"` };
    }
    if (ip === probes.at(-1))
      return { ...base, found: record, status: 'ok', fix: addresses.length ? `Permits ${addresses.join(', ')} with ${count} of 10 DNS lookups` : `Names ${input.spfInclude ? `include:${input.spfInclude}` : `a:${input.mta}`} with ${count} of 10 DNS lookups` };
  }
  throw new Error('unreachable');
}

const publicKeyOf = (txt: string) => /(?:^|;)\s*p=([^;]*)/i.exec(txt)?.[1]?.replace(/\s+/g, '') ?? null;

/** A DKIM key record: published, and its p= is the public half of the key Tern signs with. */
export async function checkDkim(spec: DnsRecordSpec, resolve: Resolve): Promise<RecordCheck> {
  const base = { key: spec.key, name: spec.name, type: 'TXT', expected: spec.value };
  const found = await lookup(resolve, spec.name, 'TXT');
  if (!found.ok && !found.missing) return failed(base, found.error);
  const rows = found.ok ? txtRows(found.values).filter((r) => /(?:^|;)\s*p=/i.test(r)) : [];
  if (!rows.length) return { ...base, found: null, status: 'missing', fix: `Publish a TXT record at ${spec.name} with the value "${spec.value}"` };
  const ours = publicKeyOf(spec.value);
  const record = rows.join(' | ');
  if (rows.length > 1) return { ...base, found: record, status: 'wrong', fix: `${spec.name} has ${rows.length} DKIM key records; keep only "${spec.value}"` };
  const theirs = publicKeyOf(rows[0]!);
  if (!theirs) return { ...base, found: record, status: 'wrong', fix: `The key at ${spec.name} is revoked (empty p=); publish "${spec.value}"` };
  if (theirs !== ours) return { ...base, found: record, status: 'wrong', fix: `The key published at ${spec.name} is not the one Tern signs with (copied incompletely, or from another key); replace the value with "${spec.value}"` };
  return { ...base, found: record, status: 'ok', fix: 'The published key matches the key Tern signs with' };
}

const orgDomain = (d: string) => getDomain(d, { allowPrivateDomains: true }) ?? d;

/** DMARC: a policy exists, and whether mail from Tern will pass it by SPF and by DKIM alignment. */
export async function checkDmarc(spec: DnsRecordSpec, input: CheckInput, resolve: Resolve): Promise<RecordCheck> {
  const base = { key: spec.key, name: spec.name, type: 'TXT', expected: spec.value };
  let record;
  try {
    record = await getDmarcRecord(input.domain, resolve);
  } catch (err) {
    return failed(base, (err as Error).message);
  }
  if (!record) return { ...base, found: null, status: 'warning', fix: `No DMARC policy: Gmail and Yahoo require one of bulk senders; publish a TXT record at ${spec.name} with the value "${spec.value}" (p=none only reports; tighten it once the reports are clean)` };
  const policy = String(record.p ?? '').toLowerCase();
  if (!['none', 'quarantine', 'reject'].includes(policy))
    return { ...base, found: record.rr, status: 'wrong', fix: `The DMARC record has no valid policy (p=none, quarantine or reject); publish "${spec.value}"` };
  const strictSpf = String(record.aspf ?? 'r').toLowerCase() === 's';
  const env = input.envelopeDomain;
  const spfAligned = strictSpf ? env === input.domain : orgDomain(env) === orgDomain(input.domain);
  const where = record.isOrgRecord ? ` (found at the organisational domain ${orgDomain(input.domain)})` : '';
  if (!spfAligned)
    return {
      ...base,
      found: record.rr,
      status: 'warning',
      fix: `Policy p=${policy}${where}. DKIM aligns (d=${input.domain}), so DMARC passes; SPF will not align, because the envelope sender domain is ${env}: ask the operator to set your bounce domain to the bounce subdomain of ${input.domain}${strictSpf ? ', and relax aspf=s to aspf=r' : ''}`,
    };
  return { ...base, found: record.rr, status: 'ok', fix: `Policy p=${policy}${where}; both SPF (envelope ${env}) and DKIM (d=${input.domain}) align with the From domain` };
}

/** The bounce subdomain's MX points to the inbound listener's host. */
export async function checkMx(spec: DnsRecordSpec, resolve: Resolve): Promise<RecordCheck> {
  const base = { key: spec.key, name: spec.name, type: 'MX', expected: `${spec.priority ?? 10} ${spec.value}` };
  const found = await lookup(resolve, spec.name, 'MX');
  if (!found.ok && !found.missing) return failed(base, found.error);
  const mx = found.ok ? (found.values as Array<{ exchange: string; priority: number }>) : [];
  if (!mx.length) return { ...base, found: null, status: 'missing', fix: `Publish an MX record at ${spec.name} pointing to ${spec.value} (priority ${spec.priority ?? 10}), so that bounces and complaints come back to Tern` };
  const text = mx.map((m) => `${m.priority} ${m.exchange}`).join(', ');
  if (!mx.some((m) => m.exchange.toLowerCase() === spec.value)) return { ...base, found: text, status: 'wrong', fix: `The MX of ${spec.name} points elsewhere; make it ${spec.value} (and remove the others), or bounces will not reach Tern` };
  if (mx.length > 1) return { ...base, found: text, status: 'warning', fix: `${spec.name} has other MX hosts besides ${spec.value}; bounces sent to them will not reach Tern, so remove them` };
  return { ...base, found: text, status: 'ok', fix: `Bounces to ${spec.name} reach ${spec.value}` };
}

/** The tracking subdomain is a CNAME of the tracking host (a warning when not: tracking is optional). */
export async function checkCname(spec: DnsRecordSpec, resolve: Resolve): Promise<RecordCheck> {
  const base = { key: spec.key, name: spec.name, type: 'CNAME', expected: spec.value };
  const found = await lookup(resolve, spec.name, 'CNAME');
  if (!found.ok && !found.missing) return failed(base, found.error);
  const targets = found.ok ? found.values.map(String) : [];
  if (!targets.length) return { ...base, found: null, status: 'warning', fix: `Publish a CNAME record at ${spec.name} pointing to ${spec.value} to have open and click links use your own domain` };
  if (targets[0]!.toLowerCase() !== spec.value) return { ...base, found: targets.join(', '), status: 'warning', fix: `${spec.name} is a CNAME of ${targets[0]}; point it to ${spec.value}` };
  return { ...base, found: targets[0]!, status: 'ok', fix: `Tracking links on ${spec.name} reach ${spec.value}` };
}

/** PTR of a source address, and that the PTR name resolves back to it (forward-confirmed reverse DNS). */
export async function checkPtr(source: EgressSourceInfo, resolve: Resolve): Promise<RecordCheck> {
  const name = isWildcard(source.address) ? source.address : reverseName(source.address);
  const base = { key: 'ptr' as const, name, type: 'PTR', expected: source.ehlo };
  if (isWildcard(source.address))
    return { ...base, found: null, status: 'not_applicable', fix: `Source ${source.name} sends from whatever address the system picks (${source.address}); give it its own address in the pool to have its reverse DNS checked` };
  const found = await lookup(resolve, name, 'PTR');
  if (!found.ok && !found.missing) return failed(base, found.error);
  const names = found.ok ? found.values.map((v) => String(v).toLowerCase()) : [];
  if (!names.length) return { ...base, found: null, status: 'warning', fix: `${source.address} (source ${source.name}) has no reverse DNS; ask whoever runs the address (the operator or hosting provider) to set its PTR to ${source.ehlo}: Gmail and Yahoo refuse or junk mail from addresses without one` };
  const family = net.isIPv6(source.address) ? 'AAAA' : 'A';
  for (const host of names) {
    const fwd = await lookup(resolve, host, family);
    const addrs = fwd.ok ? fwd.values.map(String) : [];
    if (addrs.some((a) => net.isIPv6(a) ? a.toLowerCase() === source.address.toLowerCase() : a === source.address)) {
      if (host !== source.ehlo.toLowerCase())
        return { ...base, found: host, status: 'warning', fix: `${source.address} has forward-confirmed reverse DNS ${host}, but source ${source.name} greets with ${source.ehlo}; make the EHLO name and the PTR the same` };
      return { ...base, found: host, status: 'ok', fix: `${source.address} ↔ ${host} (forward-confirmed)` };
    }
  }
  return { ...base, found: names.join(', '), status: 'warning', fix: `The PTR of ${source.address} is ${names.join(', ')}, which does not resolve back to ${source.address}; publish an ${family} record for ${source.ehlo} with ${source.address} and set the PTR to it` };
}

const REQUIRED_OK = (c: RecordCheck | undefined) => c?.status === 'ok';

/** Checks every record of a domain and the PTR of its pool's sources. */
export async function checkDomain(input: CheckInput, resolve: Resolve, now = Date.now()): Promise<CheckResult> {
  const checks = await Promise.all(
    input.records.map((spec) => {
      switch (spec.key) {
        case 'spf':
        case 'bounce_spf':
          return checkSpf(spec, input, resolve);
        case 'dkim_rsa':
        case 'dkim_ed25519':
          return checkDkim(spec, resolve);
        case 'dmarc':
          return checkDmarc(spec, input, resolve);
        case 'bounce_mx':
          return checkMx(spec, resolve);
        default:
          return checkCname(spec, resolve);
      }
    }),
  );
  const ptrs = await Promise.all(input.sources.map((s) => checkPtr(s, resolve)));
  const records = [...checks, ...ptrs];
  const by = (k: RecordKey) => records.find((r) => r.key === k);
  const verified = REQUIRED_OK(by('spf')) && (REQUIRED_OK(by('dkim_rsa')) || REQUIRED_OK(by('dkim_ed25519'))) && REQUIRED_OK(by('bounce_mx'));
  const required = input.records.filter((r) => r.required).map((r) => by(r.key));
  return { checked_at: now, verified, inconclusive: required.some((c) => c?.inconclusive), records };
}
