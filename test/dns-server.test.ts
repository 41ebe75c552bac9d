import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import net from 'node:net';
import { startDnsServer, type DnsServer, type ZoneRecord } from './support/dns-server.js';

// A 2048-bit RSA DKIM key record is ~410 bytes; make it 600 to be sure it does
// not fit a plain 512-byte UDP answer.
const LONG_TXT = 'v=DKIM1; k=rsa; p=' + 'MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA'.repeat(20).slice(0, 582);

const RECORDS: ZoneRecord[] = [
  { type: 'MX', name: 'tern.test', priority: 10, exchange: 'mx1.tern.test' },
  { type: 'MX', name: 'tern.test', priority: 20, exchange: 'mx2.tern.test.' },
  { type: 'A', name: 'mx1.tern.test', address: '127.0.0.2' },
  { type: 'A', name: 'mx1.tern.test', address: '127.0.0.3', ttl: 300 },
  { type: 'AAAA', name: 'mx1.tern.test', address: '::1' },
  { type: 'AAAA', name: 'mx2.tern.test', address: '2001:db8::ffff:1.2.3.4' },
  { type: 'TXT', name: 'tern.test', data: 'v=spf1 ip4:127.0.0.0/8 -all' },
  { type: 'TXT', name: 'sel._domainkey.tern.test', data: LONG_TXT },
  { type: 'TXT', name: 'multi.tern.test', data: ['a', 'b'] },
  { type: 'MX', name: 'nullmx.test', priority: 0, exchange: '.' },
  { type: 'CNAME', name: 'alias.tern.test', target: 'mx1.tern.test' },
  { type: 'PTR', name: '127.0.0.2', target: 'mx1.tern.test' },
  { type: 'A', name: 'deep.sub.tern.test', address: '127.0.0.9' },
];

let server: DnsServer;

async function resolver(address = server.address) {
  const { Resolver } = (await import('node:dns')).promises;
  const r = new Resolver({ timeout: 5000, tries: 1 });
  r.setServers([address]);
  return r;
}

async function code(p: Promise<unknown>): Promise<string | undefined> {
  try {
    await p;
    return undefined;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code;
  }
}

beforeAll(async () => {
  server = await startDnsServer({ records: RECORDS });
});
afterAll(async () => {
  await server?.close();
});

describe('test DNS server', () => {
  it('listens on loopback UDP and TCP on the same port', async () => {
    expect(server.host).toBe('127.0.0.1');
    expect(server.address).toBe(`127.0.0.1:${server.port}`);
    expect(server.zones.sort()).toEqual(['nullmx.test', 'tern.test', '127.in-addr.arpa'].sort());
    await new Promise<void>((resolve, reject) => {
      const s = net.connect(server.port, '127.0.0.1', () => {
        s.destroy();
        resolve();
      });
      s.on('error', reject);
    });
  });

  it('resolves MX (case-insensitively, trailing dots ignored)', async () => {
    const r = await resolver();
    const mx = await r.resolveMx('TERN.Test.');
    expect(mx.sort((a, b) => a.priority - b.priority)).toEqual([
      { priority: 10, exchange: 'mx1.tern.test' },
      { priority: 20, exchange: 'mx2.tern.test' },
    ]);
    expect(server.queries.at(-1)).toMatchObject({ name: 'tern.test', type: 'MX', rcode: 'NOERROR' });
  });

  it('resolves A with TTLs (default 60)', async () => {
    const r = await resolver();
    const a = await r.resolve4('mx1.tern.test', { ttl: true });
    expect(a.sort((x, y) => x.address.localeCompare(y.address))).toEqual([
      { address: '127.0.0.2', ttl: 60 },
      { address: '127.0.0.3', ttl: 300 },
    ]);
  });

  it('resolves AAAA', async () => {
    const r = await resolver();
    expect(await r.resolve6('mx1.tern.test')).toEqual(['::1']);
    expect(await r.resolve6('mx2.tern.test')).toEqual(['2001:db8::ffff:102:304']);
  });

  it('resolves short and multi-string TXT', async () => {
    const r = await resolver();
    expect(await r.resolveTxt('tern.test')).toEqual([['v=spf1 ip4:127.0.0.0/8 -all']]);
    expect(await r.resolveTxt('multi.tern.test')).toEqual([['a', 'b']]);
  });

  it('serves a 600-byte TXT (DKIM key) split into 255-byte strings, via EDNS0 or TCP', async () => {
    expect(LONG_TXT.length).toBe(600);
    const r = await resolver();
    const txt = await r.resolveTxt('sel._domainkey.tern.test');
    expect(txt).toHaveLength(1);
    expect(txt[0]!.map((s) => s.length)).toEqual([255, 255, 90]);
    expect(txt[0]!.join('')).toBe(LONG_TXT);
    const qs = server.queries.filter((q) => q.name === 'sel._domainkey.tern.test');
    // Either the client advertised a big enough EDNS0 payload (one UDP answer),
    // or it got a truncated UDP answer and retried over TCP.
    const last = qs.at(-1)!;
    expect(last.truncated).toBe(false);
    if (last.transport === 'tcp') expect(qs.some((q) => q.transport === 'udp' && q.truncated)).toBe(true);
  });

  it('sets TC on big UDP answers and the client retries over TCP', async () => {
    // maxUdpPayload 512: ignore EDNS0 sizes, so anything > 512 bytes is truncated.
    const small = await startDnsServer({ records: RECORDS, maxUdpPayload: 512 });
    try {
      const r = await resolver(small.address);
      const txt = await r.resolveTxt('sel._domainkey.tern.test');
      expect(txt[0]!.join('')).toBe(LONG_TXT);
      expect(small.queries.map((q) => [q.transport, q.truncated])).toEqual([
        ['udp', true],
        ['tcp', false],
      ]);
      // small answers still go over UDP
      await r.resolveMx('tern.test');
      expect(small.queries.at(-1)).toMatchObject({ transport: 'udp', truncated: false });
    } finally {
      await small.close();
    }
  });

  it('serves a null MX (RFC 7505)', async () => {
    const r = await resolver();
    expect(await r.resolveMx('nullmx.test')).toEqual([{ priority: 0, exchange: '' }]);
  });

  it('NXDOMAIN → ENOTFOUND', async () => {
    const r = await resolver();
    expect(await code(r.resolveMx('nope.tern.test'))).toBe('ENOTFOUND');
    expect(await code(r.resolve4('nope.tern.test'))).toBe('ENOTFOUND');
    expect(server.queries.at(-1)).toMatchObject({ name: 'nope.tern.test', rcode: 'NXDOMAIN' });
  });

  it('NODATA → ENODATA (name exists with other types, apex, empty non-terminal)', async () => {
    const r = await resolver();
    expect(await code(r.resolveMx('mx1.tern.test'))).toBe('ENODATA');
    expect(await code(r.resolve4('tern.test'))).toBe('ENODATA');
    expect(await code(r.resolve4('sub.tern.test'))).toBe('ENODATA');
    expect(await code(r.resolve6('nullmx.test'))).toBe('ENODATA');
  });

  it('REFUSED for names outside the zones', async () => {
    const r = await resolver();
    expect(await code(r.resolve4('example.com'))).toBe('EREFUSED');
    expect(server.queries.at(-1)).toMatchObject({ name: 'example.com', rcode: 'REFUSED' });
  });

  it('follows CNAMEs', async () => {
    const r = await resolver();
    expect((await r.resolve4('alias.tern.test')).sort()).toEqual(['127.0.0.2', '127.0.0.3']);
    expect(await r.resolveCname('alias.tern.test')).toEqual(['mx1.tern.test']);
  });

  it('answers PTR (name given as an IP)', async () => {
    const r = await resolver();
    expect(await r.reverse('127.0.0.2')).toEqual(['mx1.tern.test']);
  });

  it('set() and add() replace / extend the records; explicit zones', async () => {
    const s = await startDnsServer({ zones: ['other.test'] });
    try {
      const r = await resolver(s.address);
      expect(await code(r.resolve4('a.other.test'))).toBe('ENOTFOUND');
      s.add({ type: 'A', name: 'a.other.test', address: '127.0.0.5' });
      expect(await r.resolve4('a.other.test')).toEqual(['127.0.0.5']);
      s.set([{ type: 'A', name: 'b.other.test', address: '127.0.0.6' }]);
      expect(s.records).toHaveLength(1);
      expect(await code(r.resolve4('a.other.test'))).toBe('ENOTFOUND');
      expect(await r.resolve4('B.other.test')).toEqual(['127.0.0.6']);
      expect(await code(r.resolve4('tern.test'))).toBe('EREFUSED');
      s.records.push({ type: 'TXT', name: 'b.other.test', data: 'pushed' });
      expect(await r.resolveTxt('b.other.test')).toEqual([['pushed']]);
      expect(s.queries.map((q) => q.type)).toEqual(['A', 'A', 'A', 'A', 'A', 'TXT']);
    } finally {
      await s.close();
    }
  });
});
