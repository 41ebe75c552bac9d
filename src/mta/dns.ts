/**
 * A small stub resolver that keeps TTLs (node's resolveMx drops them), over UDP with TCP fallback on
 * truncation, asking the configured servers in turn. dns-packet does the wire format.
 */
import dgram from 'node:dgram';
import dns from 'node:dns';
import net from 'node:net';
import crypto from 'node:crypto';
import * as packet from 'dns-packet';

export type RrType = 'MX' | 'A' | 'AAAA' | 'TXT' | 'PTR' | 'CNAME';

export interface DnsAnswer {
  /** NOERROR with data, NODATA (name exists, no such record), NXDOMAIN (no such name) */
  status: 'ok' | 'nodata' | 'nxdomain';
  records: packet.Answer[];
  /** seconds the answer may be cached (the smallest TTL, or the SOA minimum for negative answers) */
  ttl: number;
}

export class DnsError extends Error {
  constructor(message: string, public readonly temporary: boolean) {
    super(message);
    this.name = 'DnsError';
  }
}

function parseServer(s: string): { host: string; port: number } {
  const bracketed = /^\[(.+)\](?::(\d+))?$/.exec(s);
  if (bracketed) return { host: bracketed[1]!, port: Number(bracketed[2] ?? 53) };
  if (net.isIPv6(s)) return { host: s, port: 53 };
  const [host = s, port] = s.split(':');
  return { host, port: Number(port ?? 53) };
}

export class DnsClient {
  private readonly servers: { host: string; port: number }[];

  constructor(servers: string[], private readonly timeoutMs = 5000) {
    const list = servers.length ? servers : dns.getServers();
    this.servers = list.map(parseServer);
    if (!this.servers.length) throw new Error('dns: no DNS servers configured and none found in the system configuration');
  }

  async query(name: string, type: RrType): Promise<DnsAnswer> {
    let lastError: Error | null = null;
    for (const server of this.servers) {
      try {
        let response = await this.udp(server, name, type);
        if (response.flags !== undefined && response.flags & packet.TRUNCATED_RESPONSE) response = await this.tcp(server, name, type);
        return this.interpret(response, name, type);
      } catch (err) {
        lastError = err as Error;
        if (err instanceof DnsError && !err.temporary) throw err;
      }
    }
    throw new DnsError(`DNS lookup of ${type} ${name} failed: ${lastError?.message ?? 'no server answered'}`, true);
  }

  private interpret(response: packet.Packet, name: string, type: RrType): DnsAnswer {
    const rcode = (response as { rcode?: string }).rcode ?? 'NOERROR';
    const negativeTtl = () => {
      const soa = (response.authorities ?? []).find((a) => a.type === 'SOA') as { ttl?: number; data?: { minimum?: number } } | undefined;
      return Math.min(soa?.ttl ?? 60, soa?.data?.minimum ?? 60, 3600);
    };
    if (rcode === 'NXDOMAIN') return { status: 'nxdomain', records: [], ttl: negativeTtl() };
    if (rcode !== 'NOERROR') throw new DnsError(`DNS server answered ${rcode} for ${type} ${name}`, true);
    const records = (response.answers ?? []).filter((a) => a.type === type);
    if (!records.length) return { status: 'nodata', records: [], ttl: negativeTtl() };
    return { status: 'ok', records, ttl: Math.min(...records.map((r) => (r as { ttl?: number }).ttl ?? 300)) };
  }

  private request(name: string, type: RrType): Buffer {
    return packet.encode({
      type: 'query',
      id: crypto.randomInt(1, 65535),
      flags: packet.RECURSION_DESIRED,
      questions: [{ type, name, class: 'IN' }],
      additionals: [{ type: 'OPT', name: '.', udpPayloadSize: 1232 } as packet.Answer],
    });
  }

  private udp(server: { host: string; port: number }, name: string, type: RrType): Promise<packet.Packet> {
    const req = this.request(name, type);
    const id = req.readUInt16BE(0);
    return new Promise((resolve, reject) => {
      const socket = dgram.createSocket(net.isIPv6(server.host) ? 'udp6' : 'udp4');
      const timer = setTimeout(() => finish(new DnsError(`no answer from ${server.host}:${server.port} within ${this.timeoutMs} ms`, true)), this.timeoutMs);
      const finish = (err: Error | null, res?: packet.Packet) => {
        clearTimeout(timer);
        socket.close();
        if (err) reject(err);
        else resolve(res!);
      };
      socket.on('error', (err) => finish(err));
      socket.on('message', (msg) => {
        if (msg.length < 2 || msg.readUInt16BE(0) !== id) return; // not ours: keep waiting
        try {
          finish(null, packet.decode(msg));
        } catch (err) {
          finish(new DnsError(`undecodable DNS answer: ${(err as Error).message}`, true));
        }
      });
      socket.send(req, server.port, server.host);
    });
  }

  private tcp(server: { host: string; port: number }, name: string, type: RrType): Promise<packet.Packet> {
    return new Promise((resolve, reject) => {
      const socket = net.connect(server.port, server.host);
      const chunks: Buffer[] = [];
      const timer = setTimeout(() => socket.destroy(new DnsError(`no TCP answer from ${server.host}:${server.port}`, true)), this.timeoutMs);
      socket.on('connect', () => socket.write(packet.streamEncode(packet.decode(this.request(name, type)))));
      socket.on('data', (d) => {
        chunks.push(d);
        const all = Buffer.concat(chunks);
        if (all.length >= 2 && all.length >= 2 + all.readUInt16BE(0)) {
          clearTimeout(timer);
          socket.destroy();
          try {
            resolve(packet.streamDecode(all));
          } catch (err) {
            reject(new DnsError(`undecodable DNS answer: ${(err as Error).message}`, true));
          }
        }
      });
      socket.on('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
    });
  }
}

/** An error shaped like node:dns's, which mailauth tells apart by `code` (ENOTFOUND, ENODATA: void lookups). */
function resolveError(code: string, name: string, type: string): Error {
  return Object.assign(new Error(`${code} ${type} ${name}`), { code, hostname: name });
}

/**
 * `resolve(name, rrtype)` with the contract of `dns.promises.resolve` (TXT as string[][], MX as {exchange,
 * priority}[], A/AAAA/PTR/CNAME as string[]), answered by our DnsClient: what mailauth takes as `resolver`,
 * so its checks ask the node's configured servers (in tests, the local DNS server).
 */
export function resolverFor(client: DnsClient): (name: string, rrtype: string) => Promise<unknown[]> {
  return async (name, rrtype) => {
    const type = rrtype.toUpperCase() as RrType;
    if (!['MX', 'A', 'AAAA', 'TXT', 'PTR', 'CNAME'].includes(type)) throw resolveError('ENOTIMP', name, rrtype);
    let answer: DnsAnswer;
    try {
      answer = await client.query(name.replace(/\.$/, ''), type);
    } catch (err) {
      throw Object.assign(err as Error, { code: 'ESERVFAIL' });
    }
    if (answer.status === 'nxdomain') throw resolveError('ENOTFOUND', name, type);
    if (answer.status === 'nodata') throw resolveError('ENODATA', name, type);
    return answer.records.map((r) => {
      const data = (r as { data: unknown }).data;
      if (type === 'TXT') return (Array.isArray(data) ? data : [data]).map((c) => (Buffer.isBuffer(c) ? c.toString('utf8') : String(c)));
      if (type === 'MX') return { exchange: String((data as { exchange: string }).exchange).replace(/\.$/, ''), priority: (data as { preference: number }).preference };
      return String(data).replace(/\.$/, '');
    });
  };
}

/** The PTR name of an address: 4.3.2.1.in-addr.arpa, or the nibble form under ip6.arpa. */
export function reverseName(ip: string): string {
  if (net.isIPv4(ip)) return `${ip.split('.').reverse().join('.')}.in-addr.arpa`;
  const halves = ip.split('::');
  const groups = (s: string | undefined) => (s ? s.split(':') : []);
  const head = groups(halves[0]);
  const tail = groups(halves[1]);
  const full = [...head, ...Array(8 - head.length - tail.length).fill('0'), ...tail];
  return `${full.map((g) => g.padStart(4, '0')).join('').split('').reverse().join('.')}.ip6.arpa`;
}
