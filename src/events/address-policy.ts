/**
 * Where webhooks may go. A webhook URL is written by a tenant, so it must not reach into the operator's
 * network (SSRF): every address its host resolves to is checked against the special-purpose ranges
 * (loopback, private, link-local, unique-local, CGNAT, multicast, documentation, unspecified, IPv4 in IPv6
 * forms), and refused there unless the operator lists the network in `webhook_delivery.allow_networks`.
 * The connection then goes to the checked address (see webhooks.ts), so DNS cannot change its answer
 * between the check and the connection.
 */
import net from 'node:net';
import { normalizeAddress, parseCidr, type Cidr } from '../core/net.js';

/** Special-purpose ranges (IANA registries), most specific first: the first match names the refusal. */
const SPECIAL_RANGES: Array<[cidr: string, what: string]> = [
  ['0.0.0.0/8', 'an unspecified ("this network") address'],
  ['10.0.0.0/8', 'a private address (RFC 1918)'],
  ['100.64.0.0/10', 'a carrier-grade NAT address (RFC 6598)'],
  ['127.0.0.0/8', 'a loopback address'],
  ['169.254.0.0/16', 'a link-local address'],
  ['172.16.0.0/12', 'a private address (RFC 1918)'],
  ['192.0.0.0/24', 'an IETF protocol address'],
  ['192.0.2.0/24', 'a documentation address'],
  ['192.88.99.0/24', 'a 6to4 relay address'],
  ['192.168.0.0/16', 'a private address (RFC 1918)'],
  ['198.18.0.0/15', 'a benchmarking address'],
  ['198.51.100.0/24', 'a documentation address'],
  ['203.0.113.0/24', 'a documentation address'],
  ['224.0.0.0/4', 'a multicast address'],
  ['240.0.0.0/4', 'a reserved address'],
  ['::/128', 'an unspecified address'],
  ['::1/128', 'a loopback address'],
  ['::/96', 'an IPv4-compatible address'],
  ['64:ff9b:1::/48', 'a local NAT64 address'],
  ['100::/64', 'a discard-only address'],
  ['2001:db8::/32', 'a documentation address'],
  ['2001::/23', 'an IETF protocol address (Teredo and others)'],
  ['2002::/16', 'a 6to4 address'],
  ['fc00::/7', 'a unique local address'],
  ['fe80::/10', 'a link-local address'],
  ['fec0::/10', 'a site-local address'],
  ['ff00::/8', 'a multicast address'],
];

const RANGES = SPECIAL_RANGES.map(([cidr, what]) => {
  const c = parseCidr(cidr);
  const list = new net.BlockList();
  list.addSubnet(c.address, c.prefix, c.family);
  return { cidr, what, list, family: c.family };
});

const v6List = (address: string, prefix: number) => {
  const list = new net.BlockList();
  list.addSubnet(address, prefix, 'ipv6');
  return list;
};
/** NAT64 (RFC 6052 well-known prefix): the address stands for the IPv4 address in its last 32 bits. */
const NAT64 = v6List('64:ff9b::', 96);
const IPV4_MAPPED = v6List('::ffff:0:0', 96);

function familyOf(address: string): 'ipv4' | 'ipv6' | null {
  return net.isIPv4(address) ? 'ipv4' : net.isIPv6(address) ? 'ipv6' : null;
}

/** The IPv4 address in the last 32 bits of an IPv6 address. */
function embeddedIpv4(address: string): string {
  const groups = expandIpv6(address);
  const hi = groups[6]!;
  const lo = groups[7]!;
  return [hi >> 8, hi & 255, lo >> 8, lo & 255].join('.');
}

function expandIpv6(address: string): number[] {
  let a = address.split('%')[0]!;
  // a dotted IPv4 tail (::ffff:1.2.3.4) becomes two groups
  const dotted = /^(.*:)(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(a);
  if (dotted) {
    const [b0, b1, b2, b3] = dotted.slice(2).map(Number) as [number, number, number, number];
    a = `${dotted[1]}${((b0 << 8) | b1).toString(16)}:${((b2 << 8) | b3).toString(16)}`;
  }
  const groups = (s: string) => (s ? s.split(':').map((g) => parseInt(g, 16)) : []);
  const [head = '', rest] = a.split('::');
  if (rest === undefined) return groups(head);
  const h = groups(head);
  const r = groups(rest);
  return [...h, ...Array<number>(8 - h.length - r.length).fill(0), ...r];
}

/** The address to judge: an IPv4-mapped IPv6 address (`::ffff:10.0.0.1`, `::ffff:a00:1`) is its IPv4 address. */
function canonical(address: string): string {
  const a = normalizeAddress(address);
  return net.isIPv6(a) && IPV4_MAPPED.check(a, 'ipv6') ? embeddedIpv4(a) : a;
}

/**
 * What kind of special-purpose address this is ("a loopback address"), or null for an ordinary public one.
 * IPv4-mapped IPv6 addresses are judged as the IPv4 address, NAT64 ones by the IPv4 address they embed.
 */
export function specialRange(address: string): string | null {
  const a = canonical(address);
  const family = familyOf(a);
  if (!family) return 'not an IP address';
  if (family === 'ipv6' && NAT64.check(a, 'ipv6')) {
    const inner = specialRange(embeddedIpv4(a));
    return inner ? `a NAT64 address for ${inner}` : null;
  }
  for (const r of RANGES) if (r.family === family && r.list.check(a, family)) return r.what;
  return null;
}

/** `range`: what kind of address was refused ("a loopback address"). */
export type AddressVerdict = { allowed: true; listed: boolean } | { allowed: false; range: string };

/** The sentence that says why an address was refused and what to do about it. */
export const REFUSAL_ADVICE = 'webhooks go only to public addresses unless webhook_delivery.allow_networks lists the network';

/** The operator's exceptions (`webhook_delivery.allow_networks`) on top of the special-purpose ranges. */
export class AddressPolicy {
  private readonly allow = new net.BlockList();

  constructor(readonly allowNetworks: Cidr[] = []) {
    for (const c of allowNetworks) this.allow.addSubnet(c.address, c.prefix, c.family);
  }

  /** `listed`: the address is in allow_networks (so plain http may go there). */
  check(address: string): AddressVerdict {
    const a = canonical(address);
    const family = familyOf(a);
    if (!family) return { allowed: false, range: 'not an IP address' };
    if (this.allowNetworks.length && this.allow.check(a, family)) return { allowed: true, listed: true };
    const range = specialRange(a);
    if (range) return { allowed: false, range };
    return { allowed: true, listed: false };
  }
}

/** The host of a URL as an IP address when it is written as one (`[::1]` → `::1`), else null. */
export function literalAddress(hostname: string): string | null {
  const h = hostname.startsWith('[') && hostname.endsWith(']') ? hostname.slice(1, -1) : hostname;
  return net.isIP(h) ? h : null;
}
