import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { buildConfig, ConfigError, loadConfig } from '../../src/core/config.js';
import { nextAttempt } from '../../src/mta/retry.js';
import { matchRoute } from '../../src/mta/destination.js';
import { mayAuthenticate } from '../../src/mta/submission.js';
import { NetworkList, parseCidr } from '../../src/core/net.js';
import { ROOT } from '../support/node.js';

const problems = (doc: unknown): string[] => {
  try {
    buildConfig(doc);
  } catch (err) {
    if (err instanceof ConfigError) return err.problems;
    throw err;
  }
  return [];
};

describe('config validation', () => {
  it('loads the shipped default config', () => {
    const c = loadConfig(path.join(ROOT, 'config/tern.yaml'));
    expect(c.submission.port).toBe(2587);
    expect(c.control.port).toBe(8025);
    expect(c.dataDir).toBe(path.resolve('./data'));
    expect(c.retry.maxAgeMs).toBe(3 * 86_400_000);
    expect(c.pools.default!.sources[0]!.name).toBe('default');
  });

  it.each([
    [{ listeners: { submission: { port: 'x' } } }, /^listeners\.submission\.port: "x" is invalid/],
    [{ listeners: { submission: { prot: 25 } } }, /^listeners\.submission\.prot: unknown key; the keys allowed here are host, port/],
    [{ retry: { max_age: '3 dayz' } }, /^retry\.max_age: "3 dayz" is not a duration; write it like "30s"/],
    [{ relay: { trusted_networks: ['10.0.0.0/33'] } }, /^relay\.trusted_networks\[0\]: "10\.0\.0\.0\/33" has an invalid prefix length/],
    [{ dns: { servers: ['resolver.example'] } }, /^dns\.servers\[0\]: "resolver\.example" is not an IP address/],
    [{ tenants: { t1: { pool: 'missing' } } }, /^tenants\.t1\.pool: pool "missing" is not defined/],
    [{ smtp_users: [{ username: 'u', password: 'p', tenant: 'ghost' }] }, /^smtp_users\[0\]\.tenant: tenant "ghost" is not defined/],
    [{ routes: [{ domain: 'bad domain!', host: 'h' }] }, /^routes\[0\]\.domain: /],
    [{ pools: { p: { sources: [{ name: 'a', address: 'not-ip', ehlo: 'x' }] } } }, /^pools\.p\.sources\[0\]\.address: "not-ip" is not an IP address/],
    [{ dkim: { keys: [{ domain: 'example.com', selector: 's', key_file: '/nonexistent.pem' }] } }, /^dkim\.keys\[0\]\.key_file: \/nonexistent\.pem does not exist/],
    [{ listeners: { submission: { max_message_size: '10 parsecs' } } }, /^listeners\.submission\.max_message_size: /],
  ])('names the key path and the reason: %j', (doc, expected) => {
    const list = problems(doc);
    expect(list.length).toBeGreaterThan(0);
    expect(list.some((p) => expected.test(p))).toBe(true);
  });

  it('keeps a default tenant and pool when the file defines others', () => {
    const c = buildConfig({ pools: { eu: { sources: [{ name: 'eu1', address: '127.0.0.2', ehlo: 'eu1.example' }] } }, tenants: { acme: { pool: 'eu' } } });
    expect(c.tenants.default!.pool).toBe('default');
    expect(c.pools.default!.sources[0]!.address).toBe('0.0.0.0');
    expect(c.tenants.acme!.pool).toBe('eu');
  });

  it('reports every problem at once', () => {
    expect(problems({ listeners: { submission: { port: -1 }, control: { port: 'y' } } }).length).toBe(2);
  });
});

describe('retry schedule', () => {
  const policy = { scheduleMs: [300_000, 600_000, 1_200_000], jitter: 0, maxAgeMs: 3 * 86_400_000 };
  it('walks the schedule and repeats its last step', () => {
    expect(nextAttempt(policy, 1, 0, 1000)).toEqual({ expire: false, at: 301_000 });
    expect(nextAttempt(policy, 2, 0, 1000)).toEqual({ expire: false, at: 601_000 });
    expect(nextAttempt(policy, 9, 0, 1000)).toEqual({ expire: false, at: 1_201_000 });
  });
  it('spreads retries by the jitter fraction', () => {
    const j = { ...policy, jitter: 0.1 };
    expect(nextAttempt(j, 1, 0, 0, () => 0)).toEqual({ expire: false, at: 270_000 });
    expect(nextAttempt(j, 1, 0, 0, () => 1)).toEqual({ expire: false, at: 330_000 });
  });
  it('lands the last retry on the deadline, then expires', () => {
    const deadline = policy.maxAgeMs;
    expect(nextAttempt(policy, 5, 0, deadline - 1000)).toEqual({ expire: false, at: deadline });
    expect(nextAttempt(policy, 6, 0, deadline)).toEqual({ expire: true });
  });
});

describe('routes', () => {
  const routes = [
    { domain: '*.example.com', host: 'a', port: 25 },
    { domain: '*.eu.example.com', host: 'b', port: 25 },
    { domain: 'exact.example.com', host: 'c', port: 25 },
  ];
  it('prefers an exact match, then the longest suffix', () => {
    expect(matchRoute(routes, 'exact.example.com')?.host).toBe('c');
    expect(matchRoute(routes, 'x.eu.example.com')?.host).toBe('b');
    expect(matchRoute(routes, 'x.example.com')?.host).toBe('a');
    expect(matchRoute(routes, 'example.com')?.host).toBe('a');
    expect(matchRoute(routes, 'notexample.com')).toBeUndefined();
  });
});

describe('submission policy', () => {
  it('allows AUTH only over TLS or from loopback', () => {
    expect(mayAuthenticate(false, '127.0.0.1')).toBe(true);
    expect(mayAuthenticate(false, '::1')).toBe(true);
    expect(mayAuthenticate(false, '::ffff:127.0.0.5')).toBe(true);
    expect(mayAuthenticate(false, '192.0.2.10')).toBe(false);
    expect(mayAuthenticate(false, '2001:db8::1')).toBe(false);
    expect(mayAuthenticate(true, '192.0.2.10')).toBe(true);
  });
  it('matches trusted networks for IPv4, IPv6 and IPv4-mapped addresses', () => {
    const list = new NetworkList([parseCidr('10.0.0.0/8'), parseCidr('2001:db8::/32'), parseCidr('192.0.2.7')]);
    expect(list.contains('10.1.2.3')).toBe(true);
    expect(list.contains('::ffff:10.1.2.3')).toBe(true);
    expect(list.contains('2001:db8:1::5')).toBe(true);
    expect(list.contains('192.0.2.7')).toBe(true);
    expect(list.contains('192.0.2.8')).toBe(false);
    expect(list.contains('11.0.0.1')).toBe(false);
    expect(new NetworkList([]).contains('127.0.0.1')).toBe(false);
  });
});
