import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { AddressPolicy, specialRange } from '../../src/events/address-policy.js';
import { checkTarget } from '../../src/events/webhooks.js';
import { parseCidr } from '../../src/core/net.js';

describe('special-purpose addresses', () => {
  it.each([
    ['127.0.0.1', 'a loopback address'],
    ['127.255.255.254', 'a loopback address'],
    ['::1', 'a loopback address'],
    ['::ffff:127.0.0.1', 'a loopback address'],
    ['::ffff:7f00:1', 'a loopback address'],
    ['10.0.0.1', 'a private address (RFC 1918)'],
    ['172.31.255.255', 'a private address (RFC 1918)'],
    ['192.168.1.1', 'a private address (RFC 1918)'],
    ['::ffff:192.168.1.1', 'a private address (RFC 1918)'],
    ['169.254.169.254', 'a link-local address'],
    ['fe80::1', 'a link-local address'],
    ['fd00::1', 'a unique local address'],
    ['fc00::1', 'a unique local address'],
    ['100.64.0.1', 'a carrier-grade NAT address (RFC 6598)'],
    ['0.0.0.0', 'an unspecified ("this network") address'],
    ['::', 'an unspecified address'],
    ['224.0.0.251', 'a multicast address'],
    ['ff02::1', 'a multicast address'],
    ['255.255.255.255', 'a reserved address'],
    ['192.0.2.10', 'a documentation address'],
    ['2001:db8::1', 'a documentation address'],
    ['::7f00:1', 'an IPv4-compatible address'],
    ['64:ff9b::7f00:1', 'a NAT64 address for a loopback address'],
    ['64:ff9b::10.0.0.1', 'a NAT64 address for a private address (RFC 1918)'],
    ['2002:7f00:1::1', 'a 6to4 address'],
    ['2001:0:4136:e378::1', 'an IETF protocol address (Teredo and others)'],
    ['fec0::1', 'a site-local address'],
  ])('%s is %s', (address, what) => {
    expect(specialRange(address)).toBe(what);
  });

  it.each(['8.8.8.8', '1.1.1.1', '172.32.0.1', '100.128.0.1', '2606:4700:4700::1111', '2a00:1450:4001::200e', '64:ff9b::8.8.8.8', '::ffff:8.8.8.8'])('%s is public', (address) => {
    expect(specialRange(address)).toBeNull();
  });

  it('judges every IPv4 address the same way in its IPv4-mapped IPv6 forms', () => {
    fc.assert(
      fc.property(fc.ipV4(), (v4) => {
        const [a, b, c, d] = v4.split('.').map(Number) as [number, number, number, number];
        const hex = `::ffff:${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
        expect(specialRange(`::ffff:${v4}`)).toBe(specialRange(v4));
        expect(specialRange(hex)).toBe(specialRange(v4));
      }),
    );
  });

  it('refuses every loopback and RFC 1918 address', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 255 }), fc.integer({ min: 0, max: 255 }), fc.integer({ min: 0, max: 255 }), (x, y, z) => {
        const policy = new AddressPolicy();
        for (const a of [`127.${x}.${y}.${z}`, `10.${x}.${y}.${z}`, `192.168.${y}.${z}`, `172.${16 + (x % 16)}.${y}.${z}`, `169.254.${y}.${z}`])
          expect(policy.check(a).allowed).toBe(false);
      }),
    );
  });

  it('lets the operator allow networks; plain http goes only to those', () => {
    const policy = new AddressPolicy([parseCidr('10.20.0.0/16'), parseCidr('::1/128')]);
    expect(policy.check('10.20.3.4')).toEqual({ allowed: true, listed: true });
    expect(policy.check('::ffff:10.20.3.4')).toEqual({ allowed: true, listed: true });
    expect(policy.check('::1')).toEqual({ allowed: true, listed: true });
    expect(policy.check('10.21.0.1')).toEqual({ allowed: false, range: 'a private address (RFC 1918)' });
    expect(policy.check('8.8.8.8')).toEqual({ allowed: true, listed: false });
  });
});

describe('checkTarget', () => {
  const policy = new AddressPolicy([parseCidr('10.20.0.0/16')]);
  const dns = (answers: Record<string, string[]>) => async (host: string) => {
    if (!(host in answers)) throw new Error('DNS server answered SERVFAIL');
    return answers[host]!;
  };

  it('checks every address a name resolves to', async () => {
    const resolve = dns({ 'mixed.example': ['93.184.215.14', '10.0.0.5'], 'public.example': ['93.184.215.14', '2606:2800:21f:cb07:6820:80da:af6b:8b2c'], 'none.example': [] });
    expect(await checkTarget(new URL('https://public.example/x'), policy, resolve)).toEqual({ ok: true, addresses: ['93.184.215.14', '2606:2800:21f:cb07:6820:80da:af6b:8b2c'] });
    expect(await checkTarget(new URL('https://mixed.example/x'), policy, resolve)).toMatchObject({ ok: false, result: 'refused', error: expect.stringMatching(/^refused: mixed\.example resolves to 10\.0\.0\.5, a private address/) });
    expect(await checkTarget(new URL('https://none.example/x'), policy, resolve)).toMatchObject({ ok: false, result: 'dns', error: 'none.example has no address (A or AAAA record)' });
    expect(await checkTarget(new URL('https://broken.example/x'), policy, resolve)).toMatchObject({ ok: false, result: 'dns', error: 'broken.example: DNS server answered SERVFAIL' });
  });

  it('sends plain http only to allowed networks, and never asks DNS about an IP literal', async () => {
    const resolve = dns({ 'inside.example': ['10.20.0.9'], 'outside.example': ['93.184.215.14'] });
    expect(await checkTarget(new URL('http://inside.example/x'), policy, resolve)).toEqual({ ok: true, addresses: ['10.20.0.9'] });
    expect(await checkTarget(new URL('http://outside.example/x'), policy, resolve)).toMatchObject({ ok: false, result: 'refused', error: expect.stringMatching(/not in webhook_delivery\.allow_networks; plain http goes only there/) });
    expect(await checkTarget(new URL('https://[2606:4700::1111]/x'), policy, resolve)).toEqual({ ok: true, addresses: ['2606:4700::1111'] });
  });
});
