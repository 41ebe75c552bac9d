/**
 * Where a recipient domain's mail goes: a configured route, or its MX set (RFC 5321 §5.1, RFC 7505 null MX).
 * Domains with the same MX set share one *site* and its limits. Answers are cached for their DNS TTL.
 */
import net from 'node:net';
import type { Answer } from 'dns-packet';
import { DnsClient, DnsError } from './dns.js';

export interface RouteConfig {
  domain: string;
  host: string;
  port: number;
  auth?: { user: string; pass: string };
  tls?: 'required' | 'opportunistic' | 'none';
}

export interface MxHost {
  name: string;
  preference: number;
  port: number;
}

export interface Site {
  /** identity used for ready queues and limits: `mx:<sorted hosts>` or `route:<host>:<port>` */
  key: string;
  hosts: MxHost[];
  route?: RouteConfig;
}

export type Destination = { ok: true; site: Site } | { ok: false; permanent: boolean; response: string };

interface Cached<T> {
  value: T;
  expires: number;
}

const MIN_TTL_MS = 5_000;
const MAX_TTL_MS = 3_600_000;
const clampTtl = (seconds: number) => Math.min(MAX_TTL_MS, Math.max(MIN_TTL_MS, seconds * 1000));

export function matchRoute(routes: RouteConfig[], domain: string): RouteConfig | undefined {
  const d = domain.toLowerCase();
  let best: RouteConfig | undefined;
  for (const r of routes) {
    if (r.domain === d) return r;
    if (r.domain.startsWith('*.')) {
      const suffix = r.domain.slice(1); // ".example.com"
      if ((d.endsWith(suffix) || d === suffix.slice(1)) && (!best || r.domain.length > best.domain.length)) best = r;
    }
  }
  return best;
}

export class DestinationResolver {
  private readonly domains = new Map<string, Cached<Destination>>();
  private readonly addresses = new Map<string, Cached<string[]>>();
  private readonly inflight = new Map<string, Promise<Destination>>();
  private readonly down = new Map<string, number>();

  constructor(
    private readonly dns: DnsClient,
    private readonly routes: RouteConfig[],
    private readonly mxDownMs: number,
    private readonly smtpPort = 25,
  ) {}

  async resolve(domain: string): Promise<Destination> {
    const cached = this.domains.get(domain);
    if (cached && cached.expires > Date.now()) return cached.value;
    let p = this.inflight.get(domain);
    if (!p) {
      p = this.lookup(domain).finally(() => this.inflight.delete(domain));
      this.inflight.set(domain, p);
    }
    return p;
  }

  /** Cached destination without a lookup (for the hot path once resolved). */
  peek(domain: string): Destination | undefined {
    const cached = this.domains.get(domain);
    return cached && cached.expires > Date.now() ? cached.value : undefined;
  }

  private remember(domain: string, value: Destination, ttlMs: number): Destination {
    this.domains.set(domain, { value, expires: Date.now() + ttlMs });
    return value;
  }

  private async lookup(domain: string): Promise<Destination> {
    const route = matchRoute(this.routes, domain);
    if (route) {
      const hosts = [{ name: route.host, preference: 0, port: route.port }];
      return this.remember(domain, { ok: true, site: { key: `route:${route.host}:${route.port}`, hosts, route } }, MAX_TTL_MS);
    }
    const literal = /^\[(?:ipv6:)?([^\]]+)\]$/i.exec(domain);
    if (literal && net.isIP(literal[1]!)) {
      return this.remember(domain, { ok: true, site: { key: `mx:${literal[1]}`, hosts: [{ name: literal[1]!, preference: 0, port: this.smtpPort }] } }, MAX_TTL_MS);
    }
    try {
      const mx = await this.dns.query(domain, 'MX');
      if (mx.status === 'nxdomain')
        return this.remember(domain, { ok: false, permanent: true, response: `550 5.1.2 Domain ${domain} does not exist (NXDOMAIN)` }, clampTtl(mx.ttl));
      if (mx.status === 'nodata') {
        // no MX: the domain itself is the implicit MX (RFC 5321 §5.1) if it has an address
        const addrs = await this.hostAddresses(domain);
        if (!addrs.length)
          return this.remember(domain, { ok: false, permanent: true, response: `550 5.1.2 Domain ${domain} has no MX and no address record` }, clampTtl(mx.ttl));
        return this.remember(domain, { ok: true, site: { key: `mx:${domain}`, hosts: [{ name: domain, preference: 0, port: this.smtpPort }] } }, clampTtl(mx.ttl));
      }
      const records = mx.records.map((r) => (r as Answer & { data: { preference: number; exchange: string } }).data);
      if (records.length === 1 && (records[0]!.exchange === '' || records[0]!.exchange === '.'))
        return this.remember(domain, { ok: false, permanent: true, response: `556 5.1.10 Domain ${domain} does not accept mail (null MX, RFC 7505)` }, clampTtl(mx.ttl));
      const hosts = shuffleEqualPreference(
        records.filter((r) => r.exchange && r.exchange !== '.').map((r) => ({ name: r.exchange.toLowerCase().replace(/\.$/, ''), preference: r.preference, port: this.smtpPort })),
      );
      const key = `mx:${[...new Set(hosts.map((h) => h.name))].sort().join(',')}`;
      return this.remember(domain, { ok: true, site: { key, hosts } }, clampTtl(mx.ttl));
    } catch (err) {
      const msg = err instanceof DnsError ? err.message : `DNS lookup failed: ${(err as Error).message}`;
      return this.remember(domain, { ok: false, permanent: false, response: `451 4.4.3 ${msg}` }, MIN_TTL_MS);
    }
  }

  /** A and AAAA addresses of a host (IPv4 first), cached by TTL. */
  async hostAddresses(host: string): Promise<string[]> {
    if (net.isIP(host)) return [host];
    const cached = this.addresses.get(host);
    if (cached && cached.expires > Date.now()) return cached.value;
    const [a, aaaa] = await Promise.all([this.dns.query(host, 'A'), this.dns.query(host, 'AAAA').catch(() => null)]);
    const list = [...a.records, ...(aaaa?.records ?? [])].map((r) => String((r as Answer & { data: string }).data));
    const ttl = Math.min(a.ttl, aaaa?.ttl ?? a.ttl);
    this.addresses.set(host, { value: list, expires: Date.now() + clampTtl(ttl) });
    return list;
  }

  markDown(address: string, port: number): void {
    this.down.set(`${address}:${port}`, Date.now() + this.mxDownMs);
  }

  isDown(address: string, port: number): boolean {
    const until = this.down.get(`${address}:${port}`);
    if (until === undefined) return false;
    if (until > Date.now()) return true;
    this.down.delete(`${address}:${port}`);
    return false;
  }
}

function shuffleEqualPreference(hosts: MxHost[]): MxHost[] {
  const shuffled = hosts.map((h) => ({ h, r: Math.random() }));
  shuffled.sort((a, b) => a.h.preference - b.h.preference || a.r - b.r);
  return shuffled.map((x) => x.h);
}
