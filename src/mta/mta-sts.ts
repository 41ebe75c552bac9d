/**
 * MTA-STS (RFC 8461): a recipient domain's published promise that its MX hosts speak TLS with a valid
 * certificate. `MtaStsPolicies` discovers policies (the `_mta-sts` TXT record, then the policy file over
 * HTTPS), caches them in memory and in LMDB for their `max_age`, and `MtaStsCheck` applies one to the
 * connection attempts of a ready queue.
 *
 * mailauth's `lib/mta-sts` is not used: it resolves through node:dns and fetches from port 443 with the
 * default CA store (our DnsClient, test port and operator CAs cannot be injected), sets no size limit and
 * no content-type check, matches `*.example.com` as a plain suffix (so `a.b.example.com` passes, against
 * §4.1), and its `getPolicy` renews an expired policy without fetching while refetching a fresh one.
 */
import https from 'node:https';
import { domainToASCII } from 'node:url';
import type { Database } from 'lmdb';
import type { Logger } from '../core/log.js';
import type { Store } from '../core/store.js';
import type { DnsClient } from './dns.js';
import { DeliveryError, type OutboundConnection, type TlsPolicy } from './smtp-client.js';

export type StsMode = 'enforce' | 'testing' | 'none';

export interface StsPolicy {
  mode: StsMode;
  /** MX host patterns, lower case: `mx.example.com` or `*.example.com` */
  mx: string[];
  /** seconds, at most 31557600 */
  maxAge: number;
}

/** A fetched policy as cached and persisted. */
export interface CachedPolicy extends StsPolicy {
  /** the TXT record's `id` the policy was fetched under */
  id: string;
  fetchedAt: number;
  expiresAt: number;
}

/** What is known about a domain's policy after the last TXT check. */
export interface PolicyView {
  /** the policy in force (possibly cached from an earlier fetch), or null */
  policy: CachedPolicy | null;
  checkedAt: number;
  /** the view is recomputed (TXT looked up again) after this */
  checkedUntil: number;
  /** why there is no (new) policy, when something went wrong or nothing is published */
  note: string | null;
}

/** TLSRPT (RFC 8460 §4.3) result types, so a later TLS report can use the events as they are. */
export type StsFailureType =
  | 'starttls-not-supported'
  | 'certificate-host-mismatch'
  | 'certificate-expired'
  | 'certificate-not-trusted'
  | 'validation-failure';

export interface StsFailure {
  domain: string;
  mode: 'enforce' | 'testing';
  policy_id: string;
  /** the MX host, with `[address]:port` when a connection was made */
  mx: string;
  result_type: StsFailureType;
  reason: string;
}

/** A domain's policy as `explain` shows it. */
export interface PolicyDescription {
  mode: StsMode | null;
  id: string | null;
  mx: string[];
  max_age: number | null;
  fetched_at: string | null;
  expires_at: string | null;
  checked_at: string;
  effect: string;
  note: string | null;
}

export const MAX_POLICY_BYTES = 64 * 1024;
const MAX_AGE_LIMIT = 31_557_600;
/** a TXT view is kept for its DNS TTL within these bounds */
const MIN_VIEW_MS = 1_000;
const MAX_VIEW_MS = 3_600_000;
/** after a DNS failure, try the TXT lookup again this soon */
const DNS_FAILURE_VIEW_MS = 60_000;
/** a failed fetch of one policy id is not retried before this (RFC 8461 §3.3 suggests 5 minutes) */
const FETCH_RETRY_MS = 5 * 60_000;
/** a cached policy whose id is unchanged is refetched in the background once this old (or half its max_age) */
const REFRESH_AFTER_MS = 86_400_000;

// ---------------------------------------------------------------- pure parts

const LABEL = '[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?';
const DOMAIN_RE = new RegExp(`^${LABEL}(?:\\.${LABEL})+$`);

/**
 * The policy id of a `_mta-sts` TXT record set (RFC 8461 §3.1): records not starting with `v=STSv1` are
 * ignored; exactly one must remain, with an `id` of 1–32 letters and digits.
 */
export function parseStsRecords(records: string[]): { id: string } | { id: null; problem: string } {
  const sts = records.filter((r) => /^v=STSv1(;|$)/.test(r.trim()));
  if (!sts.length) return { id: null, problem: 'no _mta-sts TXT record' };
  if (sts.length > 1) return { id: null, problem: `${sts.length} _mta-sts TXT records (there must be one)` };
  const fields = new Map<string, string>();
  for (const part of sts[0]!.trim().split(';')) {
    const f = part.trim();
    if (!f) continue;
    const eq = f.indexOf('=');
    if (eq <= 0) return { id: null, problem: `_mta-sts TXT record has a malformed field "${f}"` };
    const name = f.slice(0, eq).trim();
    if (!fields.has(name)) fields.set(name, f.slice(eq + 1).trim());
  }
  const id = fields.get('id');
  if (id === undefined) return { id: null, problem: '_mta-sts TXT record has no id' };
  if (!/^[A-Za-z0-9]{1,32}$/.test(id)) return { id: null, problem: `_mta-sts TXT record id "${id}" is not 1-32 letters and digits` };
  return { id };
}

/** Whether an `mx` pattern is well formed: a domain, or `*.` and a domain (the wildcard is a whole label). */
export function isMxPattern(pattern: string): boolean {
  const p = pattern.toLowerCase();
  return DOMAIN_RE.test(p.startsWith('*.') ? p.slice(2) : p);
}

/**
 * Parses a policy file (RFC 8461 §3.2): `key: value` lines ending in LF or CRLF. `version: STSv1`, a `mode`
 * and `max_age` are required, and at least one `mx` unless the mode is `none`. Unknown keys are ignored,
 * the first of a repeated key wins (except `mx`), a `max_age` above a year counts as a year, and malformed
 * `mx` patterns are dropped with a warning.
 */
export function parsePolicy(text: string): { ok: true; policy: StsPolicy; warnings: string[] } | { ok: false; error: string } {
  const warnings: string[] = [];
  const single = new Map<string, string>();
  const mx: string[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
    if (!line.trim()) continue;
    const colon = line.indexOf(':');
    if (colon <= 0) {
      warnings.push(`ignored a line that is not "key: value": ${JSON.stringify(line.slice(0, 80))}`);
      continue;
    }
    const key = line.slice(0, colon);
    const value = line.slice(colon + 1).trim();
    if (key === 'mx') {
      const pattern = value.toLowerCase().replace(/\.$/, '');
      if (!isMxPattern(pattern)) warnings.push(`ignored the mx pattern ${JSON.stringify(value)}`);
      else if (!mx.includes(pattern)) mx.push(pattern);
    } else if (!single.has(key)) single.set(key, value);
  }
  const version = single.get('version');
  if (version !== 'STSv1') return { ok: false, error: version === undefined ? 'the policy has no version' : `the policy version ${JSON.stringify(version)} is not STSv1` };
  const mode = single.get('mode');
  if (mode !== 'enforce' && mode !== 'testing' && mode !== 'none')
    return { ok: false, error: mode === undefined ? 'the policy has no mode' : `the policy mode ${JSON.stringify(mode)} is not enforce, testing or none` };
  const age = single.get('max_age');
  if (age === undefined || !/^\d{1,10}$/.test(age)) return { ok: false, error: age === undefined ? 'the policy has no max_age' : `the policy max_age ${JSON.stringify(age)} is not a number of seconds` };
  if (mode !== 'none' && !mx.length) return { ok: false, error: `the policy mode is ${mode} but it names no valid mx pattern` };
  return { ok: true, policy: { mode, mx, maxAge: Math.min(Number(age), MAX_AGE_LIMIT) }, warnings };
}

/** RFC 8461 §4.1: exact match, or `*.example.com` matching exactly one more label (`mx1.example.com`, not `example.com` or `a.mx1.example.com`). */
export function mxMatches(pattern: string, host: string): boolean {
  const h = host.toLowerCase().replace(/\.$/, '');
  const p = pattern.toLowerCase();
  if (!p.startsWith('*.')) return h === p;
  const dot = h.indexOf('.');
  return dot > 0 && h.slice(dot + 1) === p.slice(2);
}

export function policyAllowsMx(policy: Pick<StsPolicy, 'mx'>, host: string): boolean {
  return policy.mx.some((p) => mxMatches(p, host));
}

/** The TLSRPT result type of a TLS failure, from Node's (or OpenSSL's) error code. */
export function failureType(code: string | undefined): StsFailureType {
  if (code === 'ERR_TLS_CERT_ALTNAME_INVALID') return 'certificate-host-mismatch';
  if (code === 'CERT_HAS_EXPIRED' || code === 'CERT_NOT_YET_VALID') return 'certificate-expired';
  if (code && /SELF_SIGNED|UNABLE_TO_(GET_ISSUER|VERIFY_LEAF)|CERT_UNTRUSTED|CERT_CHAIN_TOO_LONG|INVALID_CA|CERT_REJECTED/.test(code)) return 'certificate-not-trusted';
  return 'validation-failure';
}

const describeFailure: Record<StsFailureType, string> = {
  'starttls-not-supported': 'STARTTLS was not available',
  'certificate-host-mismatch': 'the certificate is not valid for the MX host name',
  'certificate-expired': 'the certificate has expired or is not yet valid',
  'certificate-not-trusted': 'the certificate does not chain to a trusted CA',
  'validation-failure': 'TLS could not be established',
};

// ---------------------------------------------------------------- policy fetch (HTTPS)

export class PolicyFetchError extends Error {
  constructor(message: string, /** true when the server answered: another address will not help */ readonly answered: boolean) {
    super(message);
    this.name = 'PolicyFetchError';
  }
}

export interface FetchOptions {
  addresses: string[];
  port: number;
  timeoutMs: number;
  /** trusted CAs; undefined = Node's default list */
  ca?: string[];
  maxBytes?: number;
}

/**
 * GET https://mta-sts.<domain>/.well-known/mta-sts.txt from the given addresses in turn (RFC 8461 §3.3): the
 * certificate must be valid for `mta-sts.<domain>`, only a 200 counts (redirects are not followed), the
 * body must be text/plain and at most 64 KB, and the whole fetch has one deadline.
 */
export async function fetchPolicyText(domain: string, opts: FetchOptions): Promise<string> {
  const host = `mta-sts.${domain}`;
  if (!opts.addresses.length) throw new PolicyFetchError(`${host} has no address`, false);
  const deadline = AbortSignal.timeout(opts.timeoutMs);
  let last: unknown;
  for (const address of opts.addresses) {
    try {
      return await fetchOnce(host, address, opts, deadline);
    } catch (err) {
      last = err;
      if ((err instanceof PolicyFetchError && err.answered) || deadline.aborted) break;
    }
  }
  if (deadline.aborted) throw new PolicyFetchError(`https://${host}/.well-known/mta-sts.txt did not answer within ${opts.timeoutMs} ms`, false);
  throw last instanceof PolicyFetchError ? last : new PolicyFetchError(`https://${host}/.well-known/mta-sts.txt: ${(last as Error).message}`, false);
}

function fetchOnce(host: string, address: string, opts: FetchOptions, signal: AbortSignal): Promise<string> {
  const maxBytes = opts.maxBytes ?? MAX_POLICY_BYTES;
  const url = `https://${host}${opts.port === 443 ? '' : `:${opts.port}`}/.well-known/mta-sts.txt`;
  return new Promise((resolve, reject) => {
    const req = https.request(
      {
        host: address,
        port: opts.port,
        servername: host,
        path: '/.well-known/mta-sts.txt',
        method: 'GET',
        headers: { host: opts.port === 443 ? host : `${host}:${opts.port}`, accept: 'text/plain' },
        ca: opts.ca,
        rejectUnauthorized: true,
        agent: false,
        signal,
      },
      (res) => {
        const fail = (message: string) => {
          res.destroy();
          reject(new PolicyFetchError(`${url}: ${message}`, true));
        };
        if (res.statusCode !== 200) return fail(`HTTP ${res.statusCode}${res.statusCode! >= 300 && res.statusCode! < 400 ? ' (redirects are not followed)' : ''}`);
        const type = String(res.headers['content-type'] ?? '');
        if (!/^text\/plain\s*(;|$)/i.test(type)) return fail(`content type ${JSON.stringify(type)} is not text/plain`);
        if (Number(res.headers['content-length'] ?? 0) > maxBytes) return fail(`the policy is larger than ${maxBytes} bytes`);
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (chunk: Buffer) => {
          size += chunk.length;
          if (size > maxBytes) return fail(`the policy is larger than ${maxBytes} bytes`);
          chunks.push(chunk);
        });
        res.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
        res.on('error', (err) => reject(new PolicyFetchError(`${url}: ${err.message}`, true)));
      },
    );
    req.on('error', (err: NodeJS.ErrnoException) => reject(new PolicyFetchError(`${url} via ${address}: ${err.code ? `${err.code} ` : ''}${err.message}`, false)));
    req.end();
  });
}

// ---------------------------------------------------------------- policies

export interface MtaStsDeps {
  dns: Pick<DnsClient, 'query'>;
  /** A/AAAA of a host name (the destination resolver's cache) */
  hostAddresses: (host: string) => Promise<string[]>;
  /** persistence and the events outbox; without it (the CLI) policies live in memory and failures are logged */
  store?: Store;
  log?: Logger;
  httpsPort?: number;
  fetchTimeoutMs?: number;
  /** trusted CAs for the policy fetch; undefined = Node's default list */
  ca?: string[];
  /** replaces the HTTPS fetch (unit tests) */
  fetchPolicy?: (domain: string) => Promise<string>;
}

export class MtaStsPolicies {
  private readonly views = new Map<string, PolicyView>();
  private readonly policies = new Map<string, CachedPolicy>();
  private readonly inflight = new Map<string, Promise<PolicyView>>();
  /** policy id whose fetch failed, and when it may be tried again */
  private readonly fetchFailures = new Map<string, { id: string; until: number; error: string }>();
  private readonly refreshing = new Set<string>();
  private readonly db: Database<CachedPolicy, string> | null;

  constructor(private readonly deps: MtaStsDeps) {
    this.db = deps.store ? deps.store.db<CachedPolicy, string>('mta_sts') : null;
  }

  /** The current view without a lookup; undefined when the TXT record must be checked first. */
  peek(domain: string): PolicyView | undefined {
    if (!isPolicyDomain(domain)) return NO_POLICY;
    const v = this.views.get(domain);
    return v && v.checkedUntil > Date.now() ? v : undefined;
  }

  /** The view, looking the domain up when the last check is older than its TTL. Never throws. */
  async get(domain: string): Promise<PolicyView> {
    const fresh = this.peek(domain);
    if (fresh) return fresh;
    let p = this.inflight.get(domain);
    if (!p) {
      p = this.lookup(domain)
        .catch((err): PolicyView => {
          this.deps.log?.error({ err, domain }, 'MTA-STS lookup failed');
          return this.remember(domain, { policy: this.cached(domain), note: `lookup failed: ${(err as Error).message}` }, DNS_FAILURE_VIEW_MS);
        })
        .finally(() => this.inflight.delete(domain));
      this.inflight.set(domain, p);
    }
    return p;
  }

  /**
   * Whether mail for the domain is held to an enforce or testing policy, from what is already known (a
   * stale view still counts: mail is never routed around a policy because a TXT TTL ran out).
   */
  active(domain: string): boolean {
    const policy = this.views.get(domain)?.policy;
    return Boolean(policy && policy.mode !== 'none' && policy.expiresAt > Date.now());
  }

  /** The checks for a connection attempt to the domain's MX hosts, or null when no policy applies. */
  async check(domain: string | null): Promise<MtaStsCheck | null> {
    if (!domain) return null;
    const { policy } = await this.get(domain);
    if (!policy || policy.mode === 'none' || policy.expiresAt <= Date.now()) return null;
    return new MtaStsCheck(domain, policy, (f) => this.report(f));
  }

  /** Records a validation failure in the events outbox (`mta_sts_failure`), or logs it without a store. */
  report(failure: StsFailure): void {
    if (!this.deps.store) {
      this.deps.log?.warn({ event: 'mta_sts_failure', ...failure }, 'mta_sts_failure');
      return;
    }
    this.deps.store.transact((tx) => tx.event('mta_sts_failure', { ...failure })).catch((err) => this.deps.log?.error({ err }, 'could not record an MTA-STS failure'));
  }

  /** Forgets views that have run out and policies that have expired (periodic housekeeping). */
  sweep(): void {
    const now = Date.now();
    for (const [d, v] of this.views) if (v.checkedUntil <= now && !(v.policy && v.policy.expiresAt > now)) this.views.delete(d);
    for (const [d, p] of this.policies) if (p.expiresAt <= now) this.policies.delete(d);
    for (const [d, f] of this.fetchFailures) if (f.until <= now) this.fetchFailures.delete(d);
  }

  /** For `explain`: the policy that applies to the domain and what it does. */
  async describe(domain: string): Promise<PolicyDescription> {
    const d = domain.toLowerCase();
    const view = await this.get(d);
    const p = view.policy && view.policy.expiresAt > Date.now() ? view.policy : null;
    const effect = !p || p.mode === 'none'
      ? 'none: delivery as usual'
      : p.mode === 'enforce'
        ? 'enforce: only MX hosts matching the policy, over TLS with a certificate valid for the MX host; otherwise deferred'
        : 'testing: delivery as usual; what enforce would refuse is recorded as mta_sts_failure events';
    return {
      mode: p?.mode ?? null,
      id: p?.id ?? null,
      mx: p?.mx ?? [],
      max_age: p?.maxAge ?? null,
      fetched_at: p ? new Date(p.fetchedAt).toISOString() : null,
      expires_at: p ? new Date(p.expiresAt).toISOString() : null,
      checked_at: new Date(view.checkedAt).toISOString(),
      effect,
      note: view.note,
    };
  }

  private async lookup(domain: string): Promise<PolicyView> {
    const cached = this.cached(domain);
    const ascii = domainToASCII(domain) || domain;
    let txt;
    try {
      txt = await this.deps.dns.query(`_mta-sts.${ascii}`, 'TXT');
    } catch (err) {
      // no live answer: a cached policy still applies (RFC 8461 §5.1), otherwise there is none
      return this.remember(domain, { policy: cached, note: `TXT lookup failed: ${(err as Error).message}` }, DNS_FAILURE_VIEW_MS);
    }
    const ttl = Math.min(MAX_VIEW_MS, Math.max(MIN_VIEW_MS, txt.ttl * 1000));
    const records = txt.records.map((r) => txtString((r as { data?: unknown }).data));
    const record = parseStsRecords(records);
    if (record.id === null) return this.remember(domain, { policy: cached, note: cached ? `${record.problem}; the cached policy applies until it expires` : record.problem }, ttl);
    if (cached && cached.id === record.id) {
      if (Date.now() - cached.fetchedAt > Math.min(REFRESH_AFTER_MS, (cached.maxAge * 1000) / 2)) this.refresh(domain, ascii, record.id);
      return this.remember(domain, { policy: cached, note: null }, ttl);
    }
    const failed = this.fetchFailures.get(domain);
    if (failed && failed.id === record.id && failed.until > Date.now()) return this.remember(domain, { policy: cached, note: failed.error }, ttl);
    try {
      return this.remember(domain, { policy: await this.fetchAndStore(domain, ascii, record.id), note: null }, ttl);
    } catch (err) {
      const error = `policy ${record.id} could not be fetched: ${(err as Error).message}${cached ? `; the cached policy ${cached.id} applies until it expires` : ''}`;
      this.fetchFailures.set(domain, { id: record.id, until: Date.now() + FETCH_RETRY_MS, error });
      this.deps.log?.warn({ domain, id: record.id, err: (err as Error).message, cached: cached?.id ?? null }, 'MTA-STS policy fetch failed');
      return this.remember(domain, { policy: cached, note: error }, ttl);
    }
  }

  /** Refetches a policy whose id is unchanged, in the background; the cached one stays if that fails. */
  private refresh(domain: string, ascii: string, id: string): void {
    const failed = this.fetchFailures.get(domain);
    if (this.refreshing.has(domain) || (failed && failed.until > Date.now())) return;
    this.refreshing.add(domain);
    this.fetchAndStore(domain, ascii, id)
      .then((policy) => {
        const v = this.views.get(domain);
        if (v) v.policy = policy;
      })
      .catch((err) => {
        this.fetchFailures.set(domain, { id, until: Date.now() + FETCH_RETRY_MS, error: (err as Error).message });
        this.deps.log?.warn({ domain, id, err: (err as Error).message }, 'MTA-STS policy refresh failed; the cached policy stays');
      })
      .finally(() => this.refreshing.delete(domain));
  }

  private async fetchAndStore(domain: string, ascii: string, id: string): Promise<CachedPolicy> {
    const text = this.deps.fetchPolicy
      ? await this.deps.fetchPolicy(ascii)
      : await fetchPolicyText(ascii, {
          addresses: await this.deps.hostAddresses(`mta-sts.${ascii}`),
          port: this.deps.httpsPort ?? 443,
          timeoutMs: this.deps.fetchTimeoutMs ?? 10_000,
          ca: this.deps.ca,
        });
    const parsed = parsePolicy(text);
    if (!parsed.ok) throw new Error(parsed.error);
    const now = Date.now();
    const policy: CachedPolicy = { ...parsed.policy, id, fetchedAt: now, expiresAt: now + parsed.policy.maxAge * 1000 };
    this.policies.set(domain, policy);
    this.fetchFailures.delete(domain);
    this.db?.put(domain, policy).catch((err) => this.deps.log?.error({ err, domain }, 'could not persist an MTA-STS policy'));
    this.deps.log?.info({ domain, id, mode: policy.mode, mx: policy.mx, max_age: policy.maxAge, warnings: parsed.warnings.length ? parsed.warnings : undefined }, 'MTA-STS policy fetched');
    return policy;
  }

  /** The unexpired cached policy: memory first, then LMDB (after a restart). */
  private cached(domain: string): CachedPolicy | null {
    let p = this.policies.get(domain) ?? null;
    if (!p && this.db) {
      p = this.db.get(domain) ?? null;
      if (p) this.policies.set(domain, p);
    }
    return p && p.expiresAt > Date.now() ? p : null;
  }

  private remember(domain: string, v: { policy: CachedPolicy | null; note: string | null }, ttlMs: number): PolicyView {
    const now = Date.now();
    const view: PolicyView = { ...v, checkedAt: now, checkedUntil: now + ttlMs };
    this.views.set(domain, view);
    return view;
  }
}

const NO_POLICY: PolicyView = { policy: null, checkedAt: 0, checkedUntil: Number.MAX_SAFE_INTEGER, note: 'not a domain name' };

/** Address literals (`[192.0.2.1]`) have no policy. */
function isPolicyDomain(domain: string): boolean {
  return !domain.startsWith('[');
}

function txtString(data: unknown): string {
  const parts = Array.isArray(data) ? data : [data];
  return parts.map((p) => (Buffer.isBuffer(p) ? p.toString('utf8') : String(p ?? ''))).join('');
}

// ---------------------------------------------------------------- applying a policy to connections

/**
 * A policy applied to the connection attempts for one domain (RFC 8461 §4, §5): MX hosts must match a
 * pattern, STARTTLS must succeed and the certificate must be valid for the MX host name. `enforce` turns a
 * failure into a deferral of that host (`451 4.7.x MTA-STS: …`, never a bounce); `testing` delivers as
 * usual. Both record the failure as an `mta_sts_failure` event.
 */
export class MtaStsCheck {
  constructor(
    readonly domain: string,
    readonly policy: CachedPolicy,
    private readonly report: (f: StsFailure) => void,
  ) {}

  get enforce(): boolean {
    return this.policy.mode === 'enforce';
  }

  /** The TLS policy for the connection: enforce requires verified TLS whatever shaping says. */
  tls(base: TlsPolicy): TlsPolicy {
    return this.enforce ? 'required' : base;
  }

  /** Before connecting: an MX host outside the policy is refused under enforce (the error), reported under testing (null). */
  refuseHost(host: string): DeliveryError | null {
    if (policyAllowsMx(this.policy, host)) return null;
    const reason = `MX host ${host} does not match the policy's mx patterns (${this.policy.mx.join(', ')})`;
    this.fail(host, 'validation-failure', reason);
    return this.enforce ? this.error('4.7.5', reason) : null;
  }

  /** After an opportunistic connection under testing: reports what enforce would have refused. */
  inspect(conn: OutboundConnection, mx: string): void {
    if (this.enforce) return; // the connection was made with verified TLS
    const state = conn.tlsState();
    if (!state.secure) this.fail(mx, 'starttls-not-supported', describeFailure['starttls-not-supported']);
    else if (!state.authorized) {
      const type = failureType(state.error ?? undefined);
      this.fail(mx, type, `${describeFailure[type]} (${state.error})`);
    }
  }

  /**
   * A connection that failed while setting up TLS: reported, and under enforce replaced by the MTA-STS
   * deferral (the host answered, so it is not marked down). Null for any other failure.
   */
  tlsFailure(err: DeliveryError, mx: string): DeliveryError | null {
    if (!err.tlsFailure) return null;
    const type: StsFailureType = err.tlsFailure.starttls ? 'starttls-not-supported' : failureType(err.tlsFailure.code);
    const reason = err.tlsFailure.starttls ? `${describeFailure[type]} (${err.response})` : `${describeFailure[type]} (${err.tlsFailure.code}: ${err.message})`;
    this.fail(mx, type, reason);
    return this.enforce ? this.error(type === 'starttls-not-supported' ? '4.7.4' : '4.7.5', `${mx}: ${reason}`) : null;
  }

  private fail(mx: string, type: StsFailureType, reason: string): void {
    this.report({ domain: this.domain, mode: this.policy.mode as 'enforce' | 'testing', policy_id: this.policy.id, mx, result_type: type, reason });
  }

  private error(status: string, reason: string): DeliveryError {
    // a local decision, not a remote reply: no code, so backoff rules do not count it
    return new DeliveryError(`MTA-STS: ${reason}`, `451 ${status} MTA-STS policy of ${this.domain}: ${reason}`, null, false);
  }
}
