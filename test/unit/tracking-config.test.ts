import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { buildConfig, loadConfig } from '../../src/core/config.js';
import { trackingSettingsFor, defaultStreamOf } from '../../src/tracking/settings.js';
import { ROOT } from '../support/node.js';

const problems = (doc: unknown): string[] => {
  try {
    buildConfig(doc);
    return [];
  } catch (err) {
    return (err as { problems: string[] }).problems;
  }
};

describe('tracking config', () => {
  it('the shipped config tracks, with a listener on 127.0.0.1:8080', () => {
    const c = loadConfig(path.join(ROOT, 'config/tern.yaml'));
    expect(c.tracking).toMatchObject({ enabled: true, baseUrl: 'http://127.0.0.1:8080', scannerWindowMs: 10_000, trapLink: true, keyFiles: [] });
    expect(c.tracking.listener).toMatchObject({ host: '127.0.0.1', port: 8080 });
  });

  it('is off without a base URL, and nothing is personalised then', () => {
    const c = buildConfig({});
    expect(c.tracking.baseUrl).toBeNull();
    expect(trackingSettingsFor(c, 'default', ['a@example.org'])).toBeNull();
  });

  it('names the key of every problem', () => {
    expect(problems({ tracking: { enabled: true } })).toEqual(['tracking.base_url: missing; tracking.enabled needs the public URL of the tracking listener, like "https://t.example.com"']);
    expect(problems({ tenants: { acme: { tracking: true } } })).toEqual(['tenants.acme.tracking: tracking is on but tracking.base_url is missing; set it to the public URL of the tracking listener']);
    expect(problems({ tracking: { base_url: 'ftp://t.example.com' } })[0]).toMatch(/^tracking\.base_url: "ftp:\/\/t\.example\.com" is not a URL the tracking listener can be reached at/);
    expect(problems({ tracking: { base_url: 'https://t.example.com/?x=1' } })[0]).toMatch(/^tracking\.base_url: .* \(no query or fragment\)$/);
    expect(problems({ tracking: { base_url: 'https://t.example.com', keys: ['/nonexistent/t.key'] } })[0]).toMatch(/^tracking\.keys\[0\]: \/nonexistent\/t\.key does not exist; make one with: openssl rand -hex 32/);
    expect(problems({ tracking: { scanner_window: 'soon' } })[0]).toMatch(/^tracking\.scanner_window: "soon" is not a duration/);
    expect(problems({ tenants: { acme: { stream: 'newsletter' } } })[0]).toMatch(/^tenants\.acme\.stream: /);
    expect(problems({ listeners: { tracking: { trusted_proxies: ['10.0.0.0/40'] } } })[0]).toMatch(/^listeners\.tracking\.trusted_proxies\[0\]: "10\.0\.0\.0\/40" has an invalid prefix length/);
    expect(problems({ tracking: { trak_link: false } })[0]).toMatch(/^tracking\.trak_link: unknown key/);
  });

  it('decides per tenant: tracking, List-Unsubscribe on transactional mail, default stream, mailto domain', () => {
    const c = buildConfig({
      tracking: { enabled: true, base_url: 'https://t.example.com/' },
      pools: { default: { sources: [{ name: 'a', address: '0.0.0.0', ehlo: 'h' }] } },
      tenants: { quiet: { tracking: false, list_unsubscribe: false, stream: 'transactional', bounce_domain: 'B.example.com' }, loud: {} },
    });
    expect(c.tracking.baseUrl).toBe('https://t.example.com');
    expect(trackingSettingsFor(c, 'quiet', ['x@example.org'])).toMatchObject({ baseUrl: 'https://t.example.com', track: false, unsubscribeTransactional: false, mailDomain: 'b.example.com', recipients: ['x@example.org'] });
    expect(trackingSettingsFor(c, 'loud', [])).toMatchObject({ track: true, unsubscribeTransactional: true, mailDomain: c.bounce.domain });
    expect(defaultStreamOf(c, 'quiet')).toBe('transactional');
    expect(defaultStreamOf(c, 'loud')).toBe('marketing');
  });

  it("asks the lookup about tenants the file does not name (the control API's), never about the file's", () => {
    const c = buildConfig({ tracking: { enabled: true, base_url: 'https://t.example.com' }, tenants: { filed: { tracking: false } } });
    const asked: string[] = [];
    const lookup = (id: string) => {
      asked.push(id);
      return id === 'api-on' ? { tracking: true, bounce_domain: 'bounces.api.example' } : id === 'api-off' ? { tracking: false, bounce_domain: null, stream: 'transactional' as const } : undefined;
    };
    expect(trackingSettingsFor(c, 'api-on', [], lookup)).toMatchObject({ track: true, mailDomain: 'bounces.api.example' });
    expect(trackingSettingsFor(c, 'api-off', [], lookup)).toMatchObject({ track: false, mailDomain: c.bounce.domain });
    expect(defaultStreamOf(c, 'api-off', lookup)).toBe('transactional');
    expect(trackingSettingsFor(c, 'filed', [], lookup)).toMatchObject({ track: false });
    expect(trackingSettingsFor(c, 'unknown', [], lookup)).toMatchObject({ track: true, mailDomain: c.bounce.domain });
    expect(asked).not.toContain('filed');
    // without a lookup, a tenant the file does not name gets the defaults
    expect(trackingSettingsFor(c, 'api-off', [])).toMatchObject({ track: true });
  });
});
