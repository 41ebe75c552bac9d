/**
 * Sending domains: the domains a tenant sends From, added through the control API. Adding one generates its
 * DKIM keys (RSA-2048 and Ed25519, selectors `t<yyyymm>r` and `t<yyyymm>e`) and names its bounce subdomain
 * (`bounces.<domain>`, whose MX is the inbound listener) and tracking subdomain (`track.<domain>`); the
 * records to publish follow from those and the node's settings. A live DNS check (domain-checks.ts), asked
 * for or on the recheck schedule, moves the domain between pending, verified and failing; each move of a
 * domain that was verified writes a `domain_verified` / `domain_failing` event with the status change.
 *
 * What depends on it: the preparer signs a tenant's mail with the keys of its verified (or failing) domains
 * (`onSigningKeys`); acceptance refuses mail From a domain the tenant has not verified (`refusal`, unless
 * the operator allowed it); the inbound listener takes bounces at their bounce subdomains (`isBounceDomain`).
 *
 * Private keys are sealed with the master key (secrets.ts), bound to tenant, domain and selector; they are
 * opened only to hand them to the signing threads and never leave through the API.
 *
 *   control.domains          [tenant, domain] → DomainRecord
 *   control.domain_owners    domain → tenant     (a domain is one tenant's at a time)
 */
import crypto from 'node:crypto';
import { promisify } from 'node:util';
import type { Database } from 'lmdb';
import type { Config } from '../core/config.js';
import type { Store, Tx } from '../core/store.js';
import { dnsRecordFor } from '../mta/dkim.js';
import type { TenantKeyMaterial } from '../mta/signing-keys.js';
import { checkDomain, type CheckResult, type DnsRecordSpec, type EgressSourceInfo, type Resolve } from './domain-checks.js';
import type { Secrets } from './secrets.js';
import type { SendingRefusal, TenantDirectory } from './tenants.js';

export type DomainStatus = 'pending' | 'verified' | 'failing';

export interface DomainKey {
  selector: string;
  algorithm: 'rsa' | 'ed25519';
  /** the private key (PKCS#8 PEM), sealed for `dkim:<tenant>:<domain>:<selector>` */
  sealed: string;
  /** the TXT record value that publishes its public half */
  txt: string;
}

export interface DomainRecord {
  tenant: string;
  domain: string;
  status: DomainStatus;
  keys: DomainKey[];
  bounce_domain: string;
  tracking_domain: string;
  created_at: number;
  /** when it last became verified (null: never) */
  verified_at: number | null;
  last_check: CheckResult | null;
}

/** What acceptance (SMTP now, HTTP sending too) asks about the From domain of a tenant's message. */
export interface SenderDomainPolicy {
  /** Why `tenant` may not send From `fromDomain`, or null when it may. */
  refusal(tenant: string, fromDomain: string): SendingRefusal | null;
}

export interface DomainSettings {
  inboundMx: string;
  trackingCname: string;
  spfInclude: string | null;
  dmarcRua: string | null;
  bounceLabel: string;
  trackingLabel: string;
  recheckMs: number;
}

const generateKeyPair = promisify(crypto.generateKeyPair);
const sealContext = (tenant: string, domain: string, selector: string) => `dkim:${tenant}:${domain}:${selector}`;
const isWildcard = (ip: string) => ip === '0.0.0.0' || ip === '::';

/** Selectors of keys made in a month: `t202611r` (RSA) and `t202611e` (Ed25519). */
export function selectorsFor(now: number): { rsa: string; ed25519: string } {
  const d = new Date(now);
  const ym = `${d.getUTCFullYear()}${String(d.getUTCMonth() + 1).padStart(2, '0')}`;
  return { rsa: `t${ym}r`, ed25519: `t${ym}e` };
}

/** The SPF value for a pool: the node's include when configured, else the pool's addresses (a:<mta> when it has none). */
export function spfValue(settings: Pick<DomainSettings, 'spfInclude' | 'inboundMx'>, sources: EgressSourceInfo[]): string {
  if (settings.spfInclude) return `v=spf1 include:${settings.spfInclude} ~all`;
  const addrs = [...new Set(sources.map((s) => s.address).filter((a) => !isWildcard(a)))];
  if (!addrs.length) return `v=spf1 a:${settings.inboundMx} ~all`;
  return `v=spf1 ${addrs.map((a) => `${a.includes(':') ? 'ip6' : 'ip4'}:${a}`).join(' ')} ~all`;
}

/** The DNS records a domain's owner publishes, in the order they are shown. Pure. */
export function recordsFor(d: Pick<DomainRecord, 'domain' | 'keys' | 'bounce_domain' | 'tracking_domain'>, settings: DomainSettings, sources: EgressSourceInfo[]): DnsRecordSpec[] {
  const spf = spfValue(settings, sources);
  const rua = settings.dmarcRua ?? `postmaster@${d.domain}`;
  const out: DnsRecordSpec[] = [{ key: 'spf', name: d.domain, type: 'TXT', value: spf, required: true }];
  for (const k of d.keys) out.push({ key: k.algorithm === 'rsa' ? 'dkim_rsa' : 'dkim_ed25519', name: `${k.selector}._domainkey.${d.domain}`, type: 'TXT', value: k.txt, required: true });
  out.push(
    { key: 'dmarc', name: `_dmarc.${d.domain}`, type: 'TXT', value: `v=DMARC1; p=none; rua=mailto:${rua}`, required: false },
    { key: 'bounce_mx', name: d.bounce_domain, type: 'MX', value: settings.inboundMx, priority: 10, required: true },
    { key: 'bounce_spf', name: d.bounce_domain, type: 'TXT', value: spf, required: false },
    { key: 'tracking_cname', name: d.tracking_domain, type: 'CNAME', value: settings.trackingCname, required: false },
  );
  return out;
}

/** The status a check moves a domain to, and the event that records the move (if any). Pure. */
export function nextStatus(current: DomainStatus, result: CheckResult): { status: DomainStatus; event: 'domain_verified' | 'domain_failing' | null } {
  if (result.verified) return { status: 'verified', event: current === 'verified' ? null : 'domain_verified' };
  // a lookup that failed says nothing: keep the status (an outage of the resolver is not a broken domain)
  if (result.inconclusive || current === 'pending') return { status: current, event: null };
  return { status: 'failing', event: current === 'failing' ? null : 'domain_failing' };
}

export interface SendingDomainsDeps {
  store: Store;
  secrets: Secrets;
  config: Config;
  tenants: TenantDirectory;
  /** pools made through the API too (without it: the config's only) */
  pools?: { sourcesOf(pool: string): Array<{ name: string; address: string; ehlo: string }> };
  resolve: Resolve;
  clock?: () => number;
}

export class SendingDomains implements SenderDomainPolicy {
  readonly settings: DomainSettings;
  private readonly records: Database<DomainRecord, [string, string]>;
  private readonly owners: Database<string, string>;
  /** tenant → domains it may send From and signs for (verified or failing) */
  private sendable = new Map<string, Set<string>>();
  /** bounce subdomains of those domains */
  private bounceDomains = new Set<string>();
  private readonly clock: () => number;
  /** told the whole set of signing keys whenever it changes (the preparer's setTenantKeys) */
  onSigningKeys: ((keys: TenantKeyMaterial[]) => void) | null = null;

  constructor(private readonly deps: SendingDomainsDeps) {
    this.settings = deps.config.domains;
    this.records = deps.store.db('control.domains');
    this.owners = deps.store.db('control.domain_owners');
    this.clock = deps.clock ?? Date.now;
    this.reindex();
  }

  private all(): DomainRecord[] {
    const out: DomainRecord[] = [];
    for (const { key, value } of this.records.getRange({ snapshot: false })) if (Array.isArray(key)) out.push(value);
    return out;
  }

  /** Rebuilds the in-memory view after a change commits, and hands the signing threads their keys when they changed. */
  private reindex(): void {
    const before = JSON.stringify([...this.sendable].map(([t, s]) => [t, [...s]]));
    const sendable = new Map<string, Set<string>>();
    const bounce = new Set<string>();
    for (const r of this.all()) {
      if (r.status === 'pending') continue;
      if (!sendable.has(r.tenant)) sendable.set(r.tenant, new Set());
      sendable.get(r.tenant)!.add(r.domain);
      bounce.add(r.bounce_domain);
    }
    this.sendable = sendable;
    this.bounceDomains = bounce;
    if (this.onSigningKeys && JSON.stringify([...sendable].map(([t, s]) => [t, [...s]])) !== before) this.onSigningKeys(this.signingKeys());
  }

  /** The private keys of every verified or failing domain, opened. */
  signingKeys(): TenantKeyMaterial[] {
    const out: TenantKeyMaterial[] = [];
    for (const r of this.all()) {
      if (r.status === 'pending') continue;
      for (const k of r.keys) out.push({ tenant: r.tenant, domain: r.domain, selector: k.selector, pem: this.deps.secrets.open(k.sealed, sealContext(r.tenant, r.domain, k.selector)).toString('utf8') });
    }
    return out;
  }

  /** The egress sources of the tenant's pool. */
  sourcesOf(tenant: string): EgressSourceInfo[] {
    const pool = this.deps.tenants.routing(tenant)?.pool || 'default';
    return (this.deps.pools?.sourcesOf(pool) ?? this.deps.config.pools[pool]?.sources ?? []).map((s) => ({ name: s.name, address: s.address, ehlo: s.ehlo }));
  }

  /** The records to publish for a domain of `tenant`. */
  recordsOf(r: DomainRecord): DnsRecordSpec[] {
    return recordsFor(r, this.settings, this.sourcesOf(r.tenant));
  }

  get(tenant: string, domain: string): DomainRecord | undefined {
    return this.records.get([tenant, domain.toLowerCase()]);
  }

  /** The tenant a domain belongs to, if any. */
  ownerOf(domain: string): string | undefined {
    return this.owners.get(domain.toLowerCase());
  }

  list(tenant: string, after: string | null, limit: number): DomainRecord[] {
    const out: DomainRecord[] = [];
    for (const { key, value } of this.records.getRange({ start: [tenant, after ?? ''], end: [tenant, '\uffff'], snapshot: false })) {
      if (!Array.isArray(key) || key[1] === after) continue;
      out.push(value);
      if (out.length >= limit) break;
    }
    return out;
  }

  /** Generates the keys of a new domain (off the event loop); write the result with createIn. */
  async prepare(tenant: string, domain: string): Promise<DomainRecord> {
    const d = domain.toLowerCase();
    const now = this.clock();
    const sel = selectorsFor(now);
    const pair = async (algorithm: 'rsa' | 'ed25519', selector: string): Promise<DomainKey> => {
      const { privateKey } = algorithm === 'rsa' ? await generateKeyPair('rsa', { modulusLength: 2048 }) : await generateKeyPair('ed25519');
      const pem = privateKey.export({ type: 'pkcs8', format: 'pem' }) as string;
      return { selector, algorithm, sealed: this.deps.secrets.seal(pem, sealContext(tenant, d, selector)), txt: dnsRecordFor(pem).txt };
    };
    return {
      tenant,
      domain: d,
      status: 'pending',
      keys: await Promise.all([pair('rsa', sel.rsa), pair('ed25519', sel.ed25519)]),
      bounce_domain: `${this.settings.bounceLabel}.${d}`,
      tracking_domain: `${this.settings.trackingLabel}.${d}`,
      created_at: now,
      verified_at: null,
      last_check: null,
    };
  }

  /** Writes a prepared domain inside a transaction; false when the domain is taken (by this tenant or another). */
  createIn(record: DomainRecord): boolean {
    if (this.owners.get(record.domain) !== undefined) return false;
    this.owners.put(record.domain, record.tenant);
    this.records.put([record.tenant, record.domain], record);
    return true;
  }

  /** Call after a transaction that changed domains committed. */
  refresh(): void {
    this.reindex();
  }

  /** Removes a domain inside a transaction (its keys go with it); false when the tenant has no such domain. */
  removeIn(tenant: string, domain: string): boolean {
    const r = this.get(tenant, domain);
    if (!r) return false;
    this.records.remove([tenant, r.domain]);
    this.owners.remove(r.domain);
    return true;
  }

  removeAllIn(tenant: string): number {
    let n = 0;
    for (const r of this.list(tenant, null, Number.MAX_SAFE_INTEGER)) n += Number(this.removeIn(tenant, r.domain));
    return n;
  }

  /** Checks a domain's DNS now and stores the result, moving its status (with an event when a verified domain turns bad or good). */
  async check(tenant: string, domain: string): Promise<DomainRecord | undefined> {
    const r = this.get(tenant, domain);
    if (!r) return undefined;
    const routing = this.deps.tenants.routing(tenant);
    const result = await checkDomain(
      {
        domain: r.domain,
        records: this.recordsOf(r),
        sources: this.sourcesOf(tenant),
        envelopeDomain: routing?.bounce_domain ?? this.deps.config.bounce.domain,
        spfInclude: this.settings.spfInclude,
        mta: this.settings.inboundMx,
      },
      this.deps.resolve,
      this.clock(),
    );
    const updated = await this.deps.store.transact((tx: Tx) => {
      const current = this.get(tenant, r.domain);
      if (!current || current.created_at !== r.created_at) return undefined; // removed (or replaced) meanwhile
      const move = nextStatus(current.status, result);
      const next: DomainRecord = { ...current, status: move.status, last_check: result, verified_at: move.event === 'domain_verified' ? result.checked_at : current.verified_at };
      this.records.put([tenant, r.domain], next);
      if (move.event) {
        const problems = result.records.filter((c) => c.status !== 'ok' && c.status !== 'not_applicable').map((c) => ({ record: c.key, name: c.name, status: c.status, fix: c.fix }));
        tx.event(move.event, { tenant, domain: r.domain, previous: current.status, ...(move.event === 'domain_failing' ? { problems } : {}) });
      }
      return next;
    });
    await this.deps.store.durable();
    this.reindex();
    return updated;
  }

  /** Checks every domain whose last check is older than the recheck interval (the node's schedule calls it). */
  async recheckDue(): Promise<number> {
    const due = this.clock() - this.settings.recheckMs;
    let n = 0;
    for (const r of this.all()) {
      if ((r.last_check?.checked_at ?? 0) > due) continue;
      await this.check(r.tenant, r.domain);
      n++;
    }
    return n;
  }

  /** True when `domain` is the bounce subdomain of a verified (or failing) sending domain. */
  isBounceDomain(domain: string): boolean {
    return this.bounceDomains.has(domain.toLowerCase());
  }

  /** True when `tenant` may send From `fromDomain` by its domains: it or a parent domain is verified (or failing). */
  isSendable(tenant: string, fromDomain: string): boolean {
    const own = this.sendable.get(tenant);
    if (!own) return false;
    for (let d = fromDomain.toLowerCase(); d.includes('.'); d = d.slice(d.indexOf('.') + 1)) if (own.has(d)) return true;
    return false;
  }

  refusal(tenant: string, fromDomain: string): SendingRefusal | null {
    const t = this.deps.tenants.get(tenant);
    if (!t || t.allow_unverified_domains || this.isSendable(tenant, fromDomain)) return null;
    const text = `Sending From ${fromDomain} is refused: it is not a verified sending domain of this account; add it with POST /api/v1/domains, publish its DNS records and check it`;
    return { reason: 'unverified_domain', smtp: { code: 550, status: '5.7.1', text }, http: { status: 403, code: 'domain_not_verified', message: text } };
  }
}
