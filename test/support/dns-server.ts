/**
 * A small, real, authoritative DNS server for tests (UDP + TCP on loopback).
 *
 * The MTA resolves MX/A/AAAA/TXT through `node:dns` `Resolver` objects; in tests
 * they are pointed at this server with `resolver.setServers([server.address])`.
 *
 * Behaviour:
 *  - names are case-insensitive and stored without a trailing dot;
 *  - NOERROR + answers when the name has records of the queried type;
 *  - NOERROR + no answers (NODATA, synthetic SOA in authority) when the name
 *    exists (has other records, is a zone apex, or is an empty non-terminal);
 *  - NXDOMAIN (+ SOA) when the name does not exist inside a served zone;
 *  - REFUSED for names outside every served zone;
 *  - CNAMEs are followed (inside served zones) for other query types;
 *  - AA is set on authoritative answers; default TTL is 60;
 *  - UDP answers larger than 512 bytes (or the EDNS0 OPT payload size the
 *    client advertised) are replaced by a TC (truncated) answer so that the
 *    client retries over TCP; TCP uses the usual 2-byte length prefix.
 *
 * The DNS wire format is hand-written (RFC 1035, 3596, 6891, 7505).
 */
import dgram from 'node:dgram';
import net from 'node:net';
import { getDomain } from 'tldts';

export type ZoneRecord =
  | { type: 'MX'; name: string; priority: number; exchange: string; ttl?: number } // exchange '.' with priority 0 = null MX (RFC 7505)
  | { type: 'A'; name: string; address: string; ttl?: number }
  | { type: 'AAAA'; name: string; address: string; ttl?: number }
  | { type: 'TXT'; name: string; data: string | string[]; ttl?: number } // long strings split into 255-byte chunks
  | { type: 'CNAME'; name: string; target: string; ttl?: number }
  | { type: 'PTR'; name: string; target: string; ttl?: number }; // name may also be given as an IP address

export interface DnsQueryLogEntry {
  name: string;
  type: string;
  /** Transport the query arrived on. */
  transport: 'udp' | 'tcp';
  /** Response code sent ('NOERROR', 'NXDOMAIN', 'REFUSED', ...). */
  rcode: string;
  /** True if the UDP answer was truncated (TC set) because it did not fit. */
  truncated: boolean;
}

export interface DnsServer {
  host: string;
  port: number;
  /** 'host:port' (IPv6 as '[::1]:port') for Resolver.setServers */
  address: string;
  /** Current records (prefer set()/add(); a push() onto this array is picked up as well). */
  records: ZoneRecord[];
  set(records: ZoneRecord[]): void;
  add(r: ZoneRecord): void;
  /** Every query received, in order. */
  queries: DnsQueryLogEntry[];
  /** Served zones (explicit `zones`, or derived from the records). */
  readonly zones: string[];
  close(): Promise<void>;
}

export interface StartDnsServerOptions {
  /** Default '127.0.0.1'. */
  host?: string;
  /** Default 0 (ephemeral; UDP and TCP share the same port). */
  port?: number;
  records?: ZoneRecord[];
  /**
   * Zones this server is authoritative for. Default: derived from the records
   * (the registrable domain of every record name, e.g. 'mx.tern.test' →
   * 'tern.test'), recomputed on set()/add().
   */
  zones?: string[];
  /** Default TTL for records without one. Default 60. */
  defaultTtl?: number;
  /**
   * Largest UDP answer we send to EDNS0 clients (their advertised size is
   * honoured up to this). Default 4096. Set 512 to force TC + TCP retry for
   * anything larger than 512 bytes even when the client uses EDNS0.
   */
  maxUdpPayload?: number;
}

// ---------------------------------------------------------------------------
// constants

const TYPE: Record<string, number> = {
  A: 1,
  NS: 2,
  CNAME: 5,
  SOA: 6,
  PTR: 12,
  MX: 15,
  TXT: 16,
  AAAA: 28,
  SRV: 33,
  OPT: 41,
  DS: 43,
  RRSIG: 46,
  DNSKEY: 48,
  HTTPS: 65,
  ANY: 255,
  CAA: 257,
};
const TYPE_NAME = new Map<number, string>(Object.entries(TYPE).map(([k, v]) => [v, k]));
const typeName = (t: number): string => TYPE_NAME.get(t) ?? `TYPE${t}`;

const RCODE = { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3, NOTIMP: 4, REFUSED: 5 } as const;
type RcodeName = keyof typeof RCODE;

const CLASS_IN = 1;
const CLASS_ANY = 255;
const MAX_CNAME_CHAIN = 8;

// ---------------------------------------------------------------------------
// name helpers

function normName(name: string): string {
  let n = name.trim().toLowerCase();
  while (n.endsWith('.')) n = n.slice(0, -1);
  return n;
}

function reverseName(ip: string): string {
  if (net.isIPv4(ip)) return ip.split('.').reverse().join('.') + '.in-addr.arpa';
  const bytes = ipv6Bytes(ip);
  const nibbles: string[] = [];
  for (const b of bytes) nibbles.push((b >> 4).toString(16), (b & 15).toString(16));
  return nibbles.reverse().join('.') + '.ip6.arpa';
}

function ipv4Bytes(addr: string): Buffer {
  if (!net.isIPv4(addr)) throw new Error(`dns-server: invalid IPv4 address ${JSON.stringify(addr)}`);
  return Buffer.from(addr.split('.').map((p) => Number(p)));
}

function ipv6Bytes(addr: string): Buffer {
  if (!net.isIPv6(addr)) throw new Error(`dns-server: invalid IPv6 address ${JSON.stringify(addr)}`);
  let a = addr;
  const zone = a.indexOf('%');
  if (zone >= 0) a = a.slice(0, zone);
  // embedded IPv4 tail (::ffff:1.2.3.4)
  const tail: number[] = [];
  const lastColon = a.lastIndexOf(':');
  const last = a.slice(lastColon + 1);
  if (last.includes('.')) {
    const v4 = ipv4Bytes(last);
    tail.push((v4[0]! << 8) | v4[1]!, (v4[2]! << 8) | v4[3]!);
    a = a.slice(0, lastColon + 1) + '0'; // placeholder group, removed below
  }
  const parseGroups = (s: string): number[] => (s === '' ? [] : s.split(':').map((g) => parseInt(g, 16)));
  let groups: number[];
  const dbl = a.indexOf('::');
  if (dbl >= 0) {
    const head = parseGroups(a.slice(0, dbl));
    const rest = parseGroups(a.slice(dbl + 2));
    if (tail.length) rest.pop();
    const fill = 8 - tail.length - head.length - rest.length;
    groups = [...head, ...new Array<number>(fill).fill(0), ...rest, ...tail];
  } else {
    groups = parseGroups(a);
    if (tail.length) groups.pop();
    groups.push(...tail);
  }
  const buf = Buffer.alloc(16);
  groups.forEach((g, i) => buf.writeUInt16BE(g, i * 2));
  return buf;
}

/** Splits into ≤255-byte chunks on UTF-8 byte boundaries (never mid-character). */
function txtChunks(s: string): Buffer[] {
  const bytes = Buffer.from(s, 'utf8');
  if (bytes.length === 0) return [Buffer.alloc(0)];
  const out: Buffer[] = [];
  let i = 0;
  while (i < bytes.length) {
    let end = Math.min(i + 255, bytes.length);
    // do not split a multi-byte character: back off continuation bytes
    while (end < bytes.length && end > i && (bytes[end]! & 0xc0) === 0x80) end--;
    if (end === i) end = Math.min(i + 255, bytes.length);
    out.push(bytes.subarray(i, end));
    i = end;
  }
  return out;
}

// ---------------------------------------------------------------------------
// wire format: reading

interface ParsedQuery {
  id: number;
  flags: number;
  opcode: number;
  qname: string; // as received (case preserved), no trailing dot
  qtype: number;
  qclass: number;
  qdcount: number;
  edns: { payload: number; version: number } | null;
}

class FormatError extends Error {}

function readName(msg: Buffer, offset: number): { name: string; next: number } {
  const labels: string[] = [];
  let pos = offset;
  let next = -1;
  let jumps = 0;
  for (;;) {
    if (pos >= msg.length) throw new FormatError('name past end');
    const len = msg[pos]!;
    if ((len & 0xc0) === 0xc0) {
      if (pos + 1 >= msg.length) throw new FormatError('bad pointer');
      if (next < 0) next = pos + 2;
      pos = ((len & 0x3f) << 8) | msg[pos + 1]!;
      if (++jumps > 32) throw new FormatError('pointer loop');
      continue;
    }
    if (len & 0xc0) throw new FormatError('bad label type');
    pos++;
    if (len === 0) break;
    if (pos + len > msg.length) throw new FormatError('label past end');
    labels.push(msg.toString('latin1', pos, pos + len));
    pos += len;
  }
  return { name: labels.join('.'), next: next < 0 ? pos : next };
}

function parseQuery(msg: Buffer): ParsedQuery {
  if (msg.length < 12) throw new FormatError('short header');
  const id = msg.readUInt16BE(0);
  const flags = msg.readUInt16BE(2);
  const qdcount = msg.readUInt16BE(4);
  const ancount = msg.readUInt16BE(6);
  const nscount = msg.readUInt16BE(8);
  const arcount = msg.readUInt16BE(10);
  const opcode = (flags >> 11) & 0xf;
  if (flags & 0x8000) throw new FormatError('not a query');
  if (qdcount !== 1) {
    return { id, flags, opcode, qname: '', qtype: 0, qclass: 0, qdcount, edns: null };
  }
  const q = readName(msg, 12);
  let pos = q.next;
  if (pos + 4 > msg.length) throw new FormatError('short question');
  const qtype = msg.readUInt16BE(pos);
  const qclass = msg.readUInt16BE(pos + 2);
  pos += 4;
  let edns: ParsedQuery['edns'] = null;
  // skip answer/authority, look for OPT in additional
  const total = ancount + nscount + arcount;
  for (let i = 0; i < total && pos < msg.length; i++) {
    const rr = readName(msg, pos);
    pos = rr.next;
    if (pos + 10 > msg.length) break;
    const type = msg.readUInt16BE(pos);
    const klass = msg.readUInt16BE(pos + 2);
    const ttl = msg.readUInt32BE(pos + 4);
    const rdlen = msg.readUInt16BE(pos + 8);
    pos += 10 + rdlen;
    if (type === TYPE.OPT && i >= ancount + nscount) {
      edns = { payload: klass, version: (ttl >>> 16) & 0xff };
    }
  }
  return { id, flags, opcode, qname: q.name, qtype, qclass, qdcount, edns };
}

// ---------------------------------------------------------------------------
// wire format: writing

class Writer {
  private buf = Buffer.alloc(512);
  length = 0;
  private names = new Map<string, number>();

  private ensure(n: number): void {
    if (this.length + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.length + n) size *= 2;
    const b = Buffer.alloc(size);
    this.buf.copy(b, 0, 0, this.length);
    this.buf = b;
  }
  u8(v: number): void {
    this.ensure(1);
    this.buf.writeUInt8(v, this.length);
    this.length += 1;
  }
  u16(v: number): void {
    this.ensure(2);
    this.buf.writeUInt16BE(v, this.length);
    this.length += 2;
  }
  u32(v: number): void {
    this.ensure(4);
    this.buf.writeUInt32BE(v >>> 0, this.length);
    this.length += 4;
  }
  bytes(b: Buffer): void {
    this.ensure(b.length);
    b.copy(this.buf, this.length);
    this.length += b.length;
  }
  setU16(at: number, v: number): void {
    this.buf.writeUInt16BE(v, at);
  }
  /** Writes a domain name with message compression. */
  name(name: string): void {
    const n = name.endsWith('.') ? name.slice(0, -1) : name;
    const labels = n === '' ? [] : n.split('.');
    for (let i = 0; i < labels.length; i++) {
      const key = labels.slice(i).join('.').toLowerCase();
      const ptr = this.names.get(key);
      if (ptr !== undefined) {
        this.u16(0xc000 | ptr);
        return;
      }
      if (this.length < 0x3fff) this.names.set(key, this.length);
      const lb = Buffer.from(labels[i]!, 'latin1');
      if (lb.length === 0 || lb.length > 63) throw new Error(`dns-server: bad label in ${JSON.stringify(name)}`);
      this.u8(lb.length);
      this.bytes(lb);
    }
    this.u8(0);
  }
  result(): Buffer {
    return Buffer.from(this.buf.subarray(0, this.length));
  }
}

interface Rr {
  name: string; // owner, as it should appear
  type: number;
  ttl: number;
  write(w: Writer): void; // rdata
}

function writeRr(w: Writer, rr: Rr): void {
  w.name(rr.name);
  w.u16(rr.type);
  w.u16(CLASS_IN);
  w.u32(rr.ttl);
  const lenAt = w.length;
  w.u16(0);
  const start = w.length;
  rr.write(w);
  w.setU16(lenAt, w.length - start);
}

// ---------------------------------------------------------------------------
// zone data

interface StoredRecord {
  rec: ZoneRecord;
  name: string; // normalised owner
  type: number;
  ttl: number;
  rdata: (w: Writer) => void;
}

function compile(rec: ZoneRecord, defaultTtl: number): StoredRecord {
  const ttl = rec.ttl ?? defaultTtl;
  let name = normName(rec.name);
  switch (rec.type) {
    case 'A': {
      const b = ipv4Bytes(rec.address);
      return { rec, name, type: TYPE.A!, ttl, rdata: (w) => w.bytes(b) };
    }
    case 'AAAA': {
      const b = ipv6Bytes(rec.address);
      return { rec, name, type: TYPE.AAAA!, ttl, rdata: (w) => w.bytes(b) };
    }
    case 'MX': {
      const exch = rec.exchange === '.' ? '' : normName(rec.exchange);
      return {
        rec,
        name,
        type: TYPE.MX!,
        ttl,
        rdata: (w) => {
          w.u16(rec.priority);
          w.name(exch);
        },
      };
    }
    case 'TXT': {
      const parts = (Array.isArray(rec.data) ? rec.data : [rec.data]).flatMap(txtChunks);
      return {
        rec,
        name,
        type: TYPE.TXT!,
        ttl,
        rdata: (w) => {
          for (const p of parts) {
            w.u8(p.length);
            w.bytes(p);
          }
        },
      };
    }
    case 'CNAME': {
      const target = normName(rec.target);
      return { rec, name, type: TYPE.CNAME!, ttl, rdata: (w) => w.name(target) };
    }
    case 'PTR': {
      if (net.isIP(rec.name)) name = reverseName(rec.name);
      const target = normName(rec.target);
      return { rec, name, type: TYPE.PTR!, ttl, rdata: (w) => w.name(target) };
    }
    default: {
      const never: never = rec;
      throw new Error(`dns-server: unsupported record ${JSON.stringify(never)}`);
    }
  }
}

function deriveZone(name: string): string {
  return getDomain(name, { validateHostname: false, allowPrivateDomains: false }) ?? name;
}

class Zone {
  byName = new Map<string, StoredRecord[]>();
  /** every proper ancestor of an owner name (for empty non-terminals) */
  ancestors = new Set<string>();
  zones: string[] = [];

  constructor(
    records: ZoneRecord[],
    explicitZones: string[] | undefined,
    private defaultTtl: number,
  ) {
    for (const r of records) {
      const s = compile(r, defaultTtl);
      let list = this.byName.get(s.name);
      if (!list) this.byName.set(s.name, (list = []));
      list.push(s);
      const labels = s.name.split('.');
      for (let i = 1; i < labels.length; i++) this.ancestors.add(labels.slice(i).join('.'));
    }
    const zs = explicitZones
      ? explicitZones.map(normName)
      : [...new Set([...this.byName.keys()].map(deriveZone))];
    // longest first so that findZone picks the most specific one
    this.zones = zs.sort((a, b) => b.length - a.length);
  }

  findZone(name: string): string | undefined {
    return this.zones.find((z) => z === '' || name === z || name.endsWith('.' + z));
  }

  exists(name: string, zone: string): boolean {
    return name === zone || this.byName.has(name) || this.ancestors.has(name);
  }

  soa(zone: string, owner: string = zone): Rr {
    const apex = zone;
    const ttl = this.defaultTtl;
    return {
      name: owner,
      type: TYPE.SOA!,
      ttl,
      write: (w) => {
        w.name(apex ? `ns1.${apex}` : 'ns1');
        w.name(apex ? `hostmaster.${apex}` : 'hostmaster');
        w.u32(1); // serial
        w.u32(3600); // refresh
        w.u32(600); // retry
        w.u32(86400); // expire
        w.u32(ttl); // minimum / negative TTL
      },
    };
  }

  ns(zone: string, owner: string): Rr {
    return { name: owner, type: TYPE.NS!, ttl: this.defaultTtl, write: (w) => w.name(zone ? `ns1.${zone}` : 'ns1') };
  }
}

interface Answer {
  rcode: RcodeName;
  aa: boolean;
  answers: Rr[];
  authority: Rr[];
}

function lookup(zone: Zone, qnameRaw: string, qtype: number): Answer {
  const qname = normName(qnameRaw);
  const z = zone.findZone(qname);
  if (z === undefined) return { rcode: 'REFUSED', aa: false, answers: [], authority: [] };

  const answers: Rr[] = [];
  const seen = new Set<string>();
  let cur = qname;
  let owner = qnameRaw; // owner name as it should appear (query case for the first)
  let curZone = z;
  for (let depth = 0; ; depth++) {
    const recs = zone.byName.get(cur) ?? [];
    const toRr = (s: StoredRecord): Rr => ({ name: owner, type: s.type, ttl: s.ttl, write: s.rdata });
    const isApex = cur === curZone;

    let matching: Rr[];
    if (qtype === TYPE.ANY) matching = recs.map(toRr);
    else matching = recs.filter((s) => s.type === qtype).map(toRr);
    if (isApex && (qtype === TYPE.SOA || qtype === TYPE.ANY)) matching.push(zone.soa(curZone, owner));
    if (isApex && (qtype === TYPE.NS || qtype === TYPE.ANY)) matching.push(zone.ns(curZone, owner));
    if (matching.length) {
      answers.push(...matching);
      return { rcode: 'NOERROR', aa: true, answers, authority: [] };
    }

    const cname = qtype !== TYPE.CNAME ? recs.find((s) => s.type === TYPE.CNAME) : undefined;
    if (cname) {
      answers.push(toRr(cname));
      seen.add(cur);
      const target = normName((cname.rec as { target: string }).target);
      const tz = zone.findZone(target);
      // out-of-zone target: the resolver has to chase it; loop / too long: stop
      if (tz === undefined || seen.has(target) || depth >= MAX_CNAME_CHAIN) {
        return { rcode: 'NOERROR', aa: true, answers, authority: [] };
      }
      cur = target;
      owner = target;
      curZone = tz;
      continue;
    }

    const exists = zone.exists(cur, curZone);
    return {
      rcode: exists ? 'NOERROR' : 'NXDOMAIN',
      aa: true,
      answers,
      authority: [zone.soa(curZone)],
    };
  }
}

function buildResponse(
  q: ParsedQuery,
  a: Answer,
  opts: { truncate: boolean; ednsPayload: number | null },
): Buffer {
  const w = new Writer();
  w.u16(q.id);
  let flags = 0x8000; // QR
  flags |= q.opcode << 11;
  if (a.aa) flags |= 0x0400;
  if (opts.truncate) flags |= 0x0200;
  flags |= q.flags & 0x0100; // RD copied
  flags |= q.flags & 0x0010; // CD copied
  flags |= RCODE[a.rcode];
  w.u16(flags);
  const hasQ = q.qdcount === 1;
  const answers = opts.truncate ? [] : a.answers;
  const authority = opts.truncate ? [] : a.authority;
  w.u16(hasQ ? 1 : 0);
  w.u16(answers.length);
  w.u16(authority.length);
  w.u16(opts.ednsPayload !== null ? 1 : 0);
  if (hasQ) {
    w.name(q.qname);
    w.u16(q.qtype);
    w.u16(q.qclass);
  }
  for (const rr of answers) writeRr(w, rr);
  for (const rr of authority) writeRr(w, rr);
  if (opts.ednsPayload !== null) {
    w.u8(0); // root
    w.u16(TYPE.OPT!);
    w.u16(opts.ednsPayload);
    w.u32(0); // extended rcode 0, version 0, no flags
    w.u16(0);
  }
  return w.result();
}

function errorResponse(msg: Buffer, rcode: RcodeName): Buffer | null {
  if (msg.length < 2) return null;
  const w = new Writer();
  w.u16(msg.readUInt16BE(0));
  const flags = msg.length >= 4 ? msg.readUInt16BE(2) : 0;
  w.u16(0x8000 | (flags & 0x7900) | RCODE[rcode]);
  w.u16(0);
  w.u16(0);
  w.u16(0);
  w.u16(0);
  return w.result();
}

// ---------------------------------------------------------------------------
// server

export async function startDnsServer(opts: StartDnsServerOptions = {}): Promise<DnsServer> {
  const host = opts.host ?? '127.0.0.1';
  const defaultTtl = opts.defaultTtl ?? 60;
  const maxUdp = Math.max(512, Math.min(opts.maxUdpPayload ?? 4096, 65535));
  const explicitZones = opts.zones;
  let records: ZoneRecord[] = [...(opts.records ?? [])];
  let zone = new Zone(records, explicitZones, defaultTtl);
  let builtLen = records.length;
  // Records pushed straight into `server.records` (instead of add()) are
  // picked up too: the zone is rebuilt when the array's length changed.
  const currentZone = (): Zone => {
    if (records.length !== builtLen) {
      zone = new Zone(records, explicitZones, defaultTtl);
      builtLen = records.length;
    }
    return zone;
  };
  const queries: DnsQueryLogEntry[] = [];

  const handle = (msg: Buffer, transport: 'udp' | 'tcp'): Buffer | null => {
    let q: ParsedQuery;
    try {
      q = parseQuery(msg);
    } catch {
      return errorResponse(msg, 'FORMERR');
    }
    let ans: Answer;
    if (q.opcode !== 0) ans = { rcode: 'NOTIMP', aa: false, answers: [], authority: [] };
    else if (q.qdcount !== 1) ans = { rcode: 'FORMERR', aa: false, answers: [], authority: [] };
    else if (q.qclass !== CLASS_IN && q.qclass !== CLASS_ANY)
      ans = { rcode: 'REFUSED', aa: false, answers: [], authority: [] };
    else {
      try {
        ans = lookup(currentZone(), q.qname, q.qtype);
      } catch {
        ans = { rcode: 'SERVFAIL', aa: false, answers: [], authority: [] };
      }
    }
    const ednsPayload = q.edns ? maxUdp : null;
    let out = buildResponse(q, ans, { truncate: false, ednsPayload });
    let truncated = false;
    if (transport === 'udp') {
      const limit = q.edns ? Math.max(512, Math.min(q.edns.payload, maxUdp)) : 512;
      if (out.length > limit) {
        out = buildResponse(q, ans, { truncate: true, ednsPayload });
        truncated = true;
      }
    } else if (out.length > 65535) {
      out = buildResponse(q, { ...ans, rcode: 'SERVFAIL', answers: [], authority: [] }, { truncate: false, ednsPayload });
    }
    if (q.qdcount === 1) {
      queries.push({ name: normName(q.qname), type: typeName(q.qtype), transport, rcode: ans.rcode, truncated });
    }
    return out;
  };

  // --- UDP
  const createUdp = (): dgram.Socket => {
    const sock = dgram.createSocket(net.isIPv6(host) ? 'udp6' : 'udp4');
    sock.on('message', (msg, rinfo) => {
      const out = handle(msg, 'udp');
      if (out) sock.send(out, rinfo.port, rinfo.address);
    });
    return sock;
  };
  let udp = createUdp();

  // --- TCP
  const sockets = new Set<net.Socket>();
  const tcp = net.createServer((sock) => {
    sockets.add(sock);
    sock.on('close', () => sockets.delete(sock));
    sock.on('error', () => sock.destroy());
    sock.setTimeout(30_000, () => sock.destroy());
    let buf = Buffer.alloc(0);
    sock.on('data', (chunk) => {
      buf = buf.length ? Buffer.concat([buf, chunk]) : chunk;
      while (buf.length >= 2) {
        const len = buf.readUInt16BE(0);
        if (buf.length < 2 + len) break;
        const msg = buf.subarray(2, 2 + len);
        buf = buf.subarray(2 + len);
        const out = handle(Buffer.from(msg), 'tcp');
        if (!out) {
          sock.destroy();
          return;
        }
        const frame = Buffer.alloc(2 + out.length);
        frame.writeUInt16BE(out.length, 0);
        out.copy(frame, 2);
        sock.write(frame);
      }
    });
  });

  const bindUdp = (sock: dgram.Socket, port: number) =>
    new Promise<number>((resolve, reject) => {
      const onErr = (e: Error) => reject(e);
      sock.once('error', onErr);
      sock.bind(port, host, () => {
        sock.off('error', onErr);
        sock.on('error', () => {
          /* ignore late errors (e.g. ICMP unreachable) */
        });
        resolve(sock.address().port);
      });
    });
  const listenTcp = (port: number) =>
    new Promise<void>((resolve, reject) => {
      const onErr = (e: Error) => {
        tcp.off('listening', onListen);
        reject(e);
      };
      const onListen = () => {
        tcp.off('error', onErr);
        resolve();
      };
      tcp.once('error', onErr);
      tcp.once('listening', onListen);
      tcp.listen(port, host);
    });

  let port: number;
  if (opts.port) {
    port = await bindUdp(udp, opts.port);
    try {
      await listenTcp(port);
    } catch (e) {
      udp.close();
      throw e;
    }
  } else {
    // UDP gets an ephemeral port; TCP must get the same one. Retry on a clash.
    for (let attempt = 0; ; attempt++) {
      const p = await bindUdp(udp, 0);
      try {
        await listenTcp(p);
        port = p;
        break;
      } catch (e) {
        udp.close();
        if ((e as NodeJS.ErrnoException).code !== 'EADDRINUSE' || attempt >= 20) throw e;
        udp = createUdp();
      }
    }
  }

  const address = net.isIPv6(host) ? `[${host}]:${port}` : `${host}:${port}`;
  let closed = false;

  const server: DnsServer = {
    host,
    port,
    address,
    get records() {
      return records;
    },
    set records(rs: ZoneRecord[]) {
      server.set(rs);
    },
    set(rs: ZoneRecord[]) {
      const next = [...rs];
      zone = new Zone(next, explicitZones, defaultTtl); // throws on bad records, before replacing
      records = next;
      builtLen = next.length;
    },
    add(r: ZoneRecord) {
      server.set([...records, r]);
    },
    queries,
    get zones() {
      return [...currentZone().zones];
    },
    async close() {
      if (closed) return;
      closed = true;
      for (const s of sockets) s.destroy();
      await Promise.all([
        new Promise<void>((r) => udp.close(() => r())),
        new Promise<void>((r) => tcp.close(() => r())),
      ]);
    },
  };
  return server;
}
