import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ConfigError } from '../../src/core/config.js';
import { Shaping, BUILT_IN } from '../../src/mta/shaping.js';
import { Gcra, parseRate } from '../../src/mta/rate.js';
import { ROOT } from '../support/node.js';

const problems = (doc: unknown) => {
  try {
    Shaping.fromDocument(doc);
    return [];
  } catch (err) {
    return (err as ConfigError).problems;
  }
};

describe('shaping rules', () => {
  const rules = Shaping.fromDocument({
    default: { connections: 10, rate: '1000/hour' },
    providers: [
      { name: 'bigmail', match: ['.mx.bigmail.test'], connections: 5, messages_per_connection: 20, sources: { fresh: { rate: '50/day' } } },
      { name: 'later', match: ['.bigmail.test'], connections: 1 },
    ],
    domains: { 'Special.Example': { connections: 2, tls: 'required', sources: { fresh: { connections: 1 } } } },
  });

  it('merges default → provider → domain, and names the origin of every value', () => {
    const e = rules.explain({ domain: 'special.example', mxHosts: ['a.mx.bigmail.test'], source: 'fresh' });
    expect(e.provider).toBe('bigmail'); // the first provider that matches wins
    expect(e.settings.connections).toBe(1);
    expect(e.origins.connections).toBe('domains.special.example sources.fresh');
    expect(e.settings.tls).toBe('required');
    expect(e.origins.tls).toBe('domains.special.example');
    expect(e.settings.messages_per_connection).toBe(20);
    expect(e.origins.messages_per_connection).toBe('provider bigmail');
    expect(e.settings.rate).toMatchObject({ count: 50, periodMs: 86_400_000, text: '50/day' });
    expect(e.origins.rate).toBe('provider bigmail sources.fresh');
    expect(e.settings.recipients_per_transaction).toBe(BUILT_IN.recipients_per_transaction);
    expect(e.origins.recipients_per_transaction).toBe('built-in');
  });

  it('applies a source block only to that source, and a provider only to its MX hosts', () => {
    const other = rules.explain({ domain: 'special.example', mxHosts: ['a.mx.bigmail.test'], source: 'warm' });
    expect(other.settings.connections).toBe(2);
    expect(other.settings.rate?.text).toBe('1000/hour');
    const elsewhere = rules.explain({ domain: 'x.example', mxHosts: ['mx.elsewhere.test'], source: 'fresh' });
    expect(elsewhere.provider).toBeNull();
    expect(elsewhere.settings.connections).toBe(10);
    expect(elsewhere.origins.connections).toBe('default');
  });

  it('knows which domains have their own block (case-insensitively)', () => {
    expect(rules.hasDomainBlock('SPECIAL.example')).toBe(true);
    expect(rules.hasDomainBlock('other.example')).toBe(false);
  });

  it.each([
    [{ providers: [{ name: 'a', match: ['.a'] }, { name: 'b', match: ['.b'] }, { name: 'c', match: ['.c'], rate: '10/minn' }] }, /^shaping: providers\[2\]\.rate: "10\/minn" is not a rate; write it like "100\/min"/],
    [{ default: { conections: 3 } }, /^shaping: default\.conections: unknown key/],
    [{ domains: { 'x.test': { tls: 'maybe' } } }, /^shaping: domains\.x\.test\.tls: "maybe" is invalid/],
    [{ default: { idle_timeout: 'forever' } }, /^shaping: default\.idle_timeout: "forever" is not a duration/],
    [{ providers: [{ name: 'nomatch' }] }, /^shaping: providers\[0\]\.match: /],
  ])('refuses an invalid file, naming the key: %j', (doc, expected) => {
    expect(problems(doc).some((p) => expected.test(p))).toBe(true);
  });

  it('loads the shipped file, whose providers match the big mailbox providers by MX host', () => {
    const shipped = Shaping.load(path.join(ROOT, 'config/shaping.yaml'));
    const providerOf = (mx: string) => shipped.explain({ domain: '', mxHosts: [mx], source: 's' }).provider;
    expect(providerOf('gmail-smtp-in.l.google.com')).toBe('google');
    expect(providerOf('aspmx.l.google.com')).toBe('google');
    expect(providerOf('hotmail-com.olc.protection.outlook.com')).toBe('microsoft');
    expect(providerOf('mta5.am0.yahoodns.net')).toBe('yahoo');
    expect(providerOf('mx01.mail.icloud.com')).toBe('apple');
    expect(providerOf('smtp-in.orange.fr')).toBe('orange');
    expect(providerOf('mx00.emig.gmx.net')).toBe('united-internet');
    expect(providerOf('mxs.mail.ru')).toBe('mailru');
    expect(providerOf('mx.yandex.ru')).toBe('yandex');
    expect(providerOf('mx1a1.comcast.net')).toBe('comcast');
    expect(providerOf('mx.example.org')).toBeNull();
  });
});

describe('rates', () => {
  it('parses rates and refuses nonsense', () => {
    expect(parseRate('100/min')).toMatchObject({ count: 100, periodMs: 60_000 });
    expect(parseRate('20000/day')).toMatchObject({ count: 20_000, periodMs: 86_400_000 });
    expect(parseRate(' 5 / s ')).toMatchObject({ count: 5, periodMs: 1000 });
    for (const bad of ['10/minn', '0/min', 'fast', '10 per minute', '-1/s']) expect(() => parseRate(bad)).toThrow(/is not a rate/);
  });

  it('GCRA: "60/min" admits exactly 60 sends in a minute, evenly spaced, per key', () => {
    const gcra = new Gcra();
    const rate = parseRate('60/min');
    let clock = 0;
    const sentAt: number[] = [];
    // 200 senders asking as fast as they can; each waits for the slot it was given
    while (clock < 60_000) {
      const wait = gcra.reserve('s1->site', rate, clock);
      clock += wait;
      if (clock < 60_000) sentAt.push(clock);
    }
    expect(sentAt).toHaveLength(60);
    expect(sentAt.slice(1).every((t, i) => t - sentAt[i]! === 1000)).toBe(true);
    expect(gcra.reserve('s2->site', rate, 5)).toBe(0); // another key has its own budget
  });

  it('GCRA: an idle key does not bank a burst', () => {
    const gcra = new Gcra();
    const rate = parseRate('10/s');
    expect(gcra.reserve('k', rate, 0)).toBe(0);
    expect(gcra.reserve('k', rate, 10_000)).toBe(0);
    expect(gcra.reserve('k', rate, 10_000)).toBe(100);
  });
});
