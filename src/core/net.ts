/** Address helpers on top of node:net (BlockList does the CIDR matching). */
import net from 'node:net';

export interface Cidr {
  address: string;
  prefix: number;
  family: 'ipv4' | 'ipv6';
}

export function parseCidr(text: string): Cidr {
  const [address = '', prefixText] = text.trim().split('/');
  const version = net.isIP(address);
  if (!version) throw new Error(`"${text}" is not a CIDR network; write it like "10.0.0.0/8" or "2001:db8::/32"`);
  const max = version === 4 ? 32 : 128;
  const prefix = prefixText === undefined ? max : Number(prefixText);
  if (!Number.isInteger(prefix) || prefix < 0 || prefix > max)
    throw new Error(`"${text}" has an invalid prefix length; it must be 0 to ${max}`);
  return { address, prefix, family: version === 4 ? 'ipv4' : 'ipv6' };
}

/** Strips the IPv4-mapped IPv6 prefix that dual-stack sockets report. */
export function normalizeAddress(address: string | undefined): string {
  if (!address) return '';
  return address.startsWith('::ffff:') && net.isIPv4(address.slice(7)) ? address.slice(7) : address;
}

export function isLoopback(address: string): boolean {
  const a = normalizeAddress(address);
  return a === '::1' || (net.isIPv4(a) && a.startsWith('127.'));
}

export class NetworkList {
  private readonly list = new net.BlockList();
  readonly size: number;
  constructor(cidrs: Cidr[]) {
    for (const c of cidrs) this.list.addSubnet(c.address, c.prefix, c.family);
    this.size = cidrs.length;
  }
  contains(address: string): boolean {
    if (!this.size) return false;
    const a = normalizeAddress(address);
    const family = net.isIPv4(a) ? 'ipv4' : net.isIPv6(a) ? 'ipv6' : null;
    return family !== null && this.list.check(a, family);
  }
}
