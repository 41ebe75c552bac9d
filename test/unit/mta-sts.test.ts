/** MTA-STS pure parts (record and policy parsing, MX matching) and the policy cache's decisions. */
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import fc from 'fast-check';
import fs from 'node:fs';
import path from 'node:path';
import { buildConfig, ConfigError } from '../../src/core/config.js';
import { Store } from '../../src/core/store.js';
import { DeliveryError } from '../../src/mta/smtp-client.js';
import type { DnsAnswer } from '../../src/mta/dns.js';
import { MtaStsCheck, MtaStsPolicies, failureType, isMxPattern, mxMatches, parsePolicy, parseStsRecords, type CachedPolicy, type StsFailure } from '../../src/mta/mta-sts.js';
import { ROOT, tempDir } from '../support/node.js';

describe('_mta-sts TXT record (RFC 8461 §3.1)', () => {
  it.each([
    [['v=STSv1; id=20160831085700Z;'], '20160831085700Z'],
    [['v=STSv1;id=abc'], 'abc'],
    [['v=STSv1; id=abc; ext=something'], 'abc'],
    [['  v=STSv1;  id=abc  ;  '], 'abc'],
    [['v=spf1 -all', 'v=STSv1; id=x1'], 'x1'],
    [['v=STSv1; id=a; id=b'], 'a'],
    [['v=STSv1; id=' + 'a'.repeat(32)], 'a'.repeat(32)],
  ])('%j has id %s', (records, id) => {
    expect(parseStsRecords(records)).toEqual({ id });
  });

  it.each([
    [[], /no _mta-sts TXT record/],
    [['v=spf1 -all'], /no _mta-sts TXT record/],
    [['v=STSv10; id=abc'], /no _mta-sts TXT record/],
    [['id=abc; v=STSv1'], /no _mta-sts TXT record/],
    [['v=STSv1; id=a', 'v=STSv1; id=b'], /2 _mta-sts TXT records/],
    [['v=STSv1'], /has no id/],
    [['v=STSv1; version=2'], /has no id/],
    [['v=STSv1; id='], /is not 1-32 letters and digits/],
    [['v=STSv1; id=' + 'a'.repeat(33)], /is not 1-32/],
    [['v=STSv1; id=2016-08-31'], /is not 1-32/],
    [['v=STSv1; junk; id=a'], /malformed field/],
  ])('%j has no usable id', (records, problem) => {
    const r = parseStsRecords(records);
    expect(r.id).toBeNull();
    expect((r as { problem: string }).problem).toMatch(problem);
  });

  it('reads any 1-32 character id, whatever the spacing (property)', () => {
    const id = fc.stringMatching(/^[A-Za-z0-9]{1,32}$/);
    const ws = fc.constantFrom('', ' ', '\t', '  ');
    fc.assert(
      fc.property(id, ws, ws, fc.boolean(), (i, a, b, trailing) => {
        expect(parseStsRecords([`v=STSv1;${a}id=${i}${b}${trailing ? ';' : ''}`])).toEqual({ id: i });
      }),
    );
  });
});

const RFC_EXAMPLE = 'version: STSv1\nmode: enforce\nmx: mail.example.com\nmx: *.example.net\nmx: backupmx.example.com\nmax_age: 604800\n';

describe('policy file (RFC 8461 §3.2)', () => {
  it('parses the RFC example', () => {
    expect(parsePolicy(RFC_EXAMPLE)).toEqual({
      ok: true,
      policy: { mode: 'enforce', mx: ['mail.example.com', '*.example.net', 'backupmx.example.com'], maxAge: 604800 },
      warnings: [],
    });
  });

  it.each([
    ['CRLF line ends', RFC_EXAMPLE.replace(/\n/g, '\r\n'), { mode: 'enforce', maxAge: 604800 }],
    ['no final line end, no space after the colon', 'version:STSv1\nmode:testing\nmx:mx.example.com\nmax_age:86400', { mode: 'testing', mx: ['mx.example.com'] }],
    ['trailing whitespace', 'version: STSv1  \nmode: enforce\t\nmx: mx.example.com \nmax_age: 60 ', { mode: 'enforce', maxAge: 60 }],
    ['version not first', 'mode: enforce\nmx: mx.example.com\nmax_age: 60\nversion: STSv1', { mode: 'enforce' }],
    ['mode none needs no mx', 'version: STSv1\nmode: none\nmax_age: 86400', { mode: 'none', mx: [] }],
    ['unknown keys are ignored', 'version: STSv1\nmode: enforce\nfoo: bar\nmx: mx.example.com\nmax_age: 60', { mode: 'enforce' }],
    ['blank lines are tolerated', 'version: STSv1\n\nmode: enforce\n\nmx: mx.example.com\nmax_age: 60\n\n', { mode: 'enforce' }],
    ['mx patterns are lower-cased, deduplicated, without a final dot', 'version: STSv1\nmode: enforce\nmx: MX.Example.COM\nmx: mx.example.com.\nmx: *.Example.NET\nmax_age: 60', { mx: ['mx.example.com', '*.example.net'] }],
    ['max_age of 0', 'version: STSv1\nmode: enforce\nmx: mx.example.com\nmax_age: 0', { maxAge: 0 }],
    ['max_age above a year counts as a year', 'version: STSv1\nmode: enforce\nmx: mx.example.com\nmax_age: 99999999', { maxAge: 31_557_600 }],
    ['the first of a repeated key wins', 'version: STSv1\nmode: testing\nmode: enforce\nmx: mx.example.com\nmax_age: 60\nmax_age: 120', { mode: 'testing', maxAge: 60 }],
  ])('accepts: %s', (_name, text, expected) => {
    const r = parsePolicy(text);
    expect(r.ok, JSON.stringify(r)).toBe(true);
    expect((r as { policy: object }).policy).toMatchObject(expected);
  });

  it('drops malformed mx patterns with a warning, keeping the rest', () => {
    const r = parsePolicy('version: STSv1\nmode: enforce\nmx: mx*.example.com\nmx: foo.*.example.com\nmx: *\nmx: good.example.com\nmax_age: 60');
    expect(r).toMatchObject({ ok: true, policy: { mx: ['good.example.com'] } });
    expect((r as { warnings: string[] }).warnings).toHaveLength(3);
  });

  it.each([
    ['empty', '', /no version/],
    ['no version', 'mode: enforce\nmx: mx.example.com\nmax_age: 60', /no version/],
    ['another version', 'version: STSv2\nmode: enforce\nmx: mx.example.com\nmax_age: 60', /version "STSv2" is not STSv1/],
    ['version in another case', 'version: stsv1\nmode: enforce\nmx: mx.example.com\nmax_age: 60', /not STSv1/],
    ['keys are case-sensitive', 'Version: STSv1\nMode: enforce\nmx: mx.example.com\nmax_age: 60', /no version/],
    ['no mode', 'version: STSv1\nmx: mx.example.com\nmax_age: 60', /no mode/],
    ['mode in another case', 'version: STSv1\nmode: Enforce\nmx: mx.example.com\nmax_age: 60', /mode "Enforce"/],
    ['mode report (a draft name)', 'version: STSv1\nmode: report\nmx: mx.example.com\nmax_age: 60', /mode "report"/],
    ['no max_age', 'version: STSv1\nmode: enforce\nmx: mx.example.com', /no max_age/],
    ['negative max_age', 'version: STSv1\nmode: enforce\nmx: mx.example.com\nmax_age: -1', /max_age "-1"/],
    ['max_age with a unit', 'version: STSv1\nmode: enforce\nmx: mx.example.com\nmax_age: 1d', /max_age "1d"/],
    ['max_age of 11 digits', 'version: STSv1\nmode: enforce\nmx: mx.example.com\nmax_age: 12345678901', /max_age/],
    ['enforce without mx', 'version: STSv1\nmode: enforce\nmax_age: 60', /names no valid mx/],
    ['testing with only bad mx', 'version: STSv1\nmode: testing\nmx: *.*.example.com\nmax_age: 60', /names no valid mx/],
    ['an HTML page', '<html><body>version: STSv1</body></html>', /no version/],
  ])('refuses: %s', (_name, text, error) => {
    const r = parsePolicy(text);
    expect(r.ok).toBe(false);
    expect((r as { error: string }).error).toMatch(error);
  });

  it('never throws, whatever the input (property)', () => {
    const line = fc.oneof(fc.string(), fc.constantFrom('version: STSv1', 'mode: enforce', 'mode: none', 'mx: a.example', 'max_age: 5', 'mx: *.', ':', 'mx:'));
    fc.assert(
      fc.property(fc.array(line), fc.constantFrom('\n', '\r\n', '\r'), (lines, eol) => {
        const r = parsePolicy(lines.join(eol));
        expect(typeof r.ok).toBe('boolean');
      }),
    );
  });

  it('reads back any valid policy, in any line order and line ending (property)', () => {
    const label = fc.stringMatching(/^[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?$/);
    const domain = fc.array(label, { minLength: 2, maxLength: 4 }).map((l) => l.join('.'));
    const pattern = fc.tuple(fc.boolean(), domain).map(([wild, d]) => (wild ? `*.${d}` : d));
    const policy = fc.record({
      mode: fc.constantFrom('enforce' as const, 'testing' as const, 'none' as const),
      mx: fc.uniqueArray(pattern, { minLength: 1, maxLength: 5 }),
      maxAge: fc.integer({ min: 0, max: 31_557_600 }),
    });
    fc.assert(
      fc.property(policy, fc.constantFrom('\n', '\r\n'), fc.constantFrom('', ' ', '  ', '\t'), fc.integer(), fc.boolean(), (p, eol, sp, seed, extension) => {
        const lines = [`version:${sp}STSv1`, `mode:${sp}${p.mode}`, `max_age:${sp}${p.maxAge}`, ...p.mx.map((m) => `mx:${sp}${m}`), ...(extension ? ['ext_field: anything at all'] : [])];
        // shuffle the non-mx lines among the mx lines; mx order is kept
        const rotated = lines.map((l, i) => ({ l, k: l.startsWith('mx:') ? i : ((seed >>> (i % 16)) & 0xff) / 10 }));
        rotated.sort((a, b) => a.k - b.k);
        const r = parsePolicy(rotated.map((x) => x.l).join(eol) + (seed % 2 ? eol : ''));
        expect(r).toEqual({ ok: true, policy: p, warnings: [] });
      }),
    );
  });
});

describe('MX pattern matching (RFC 8461 §4.1)', () => {
  it.each([
    ['mx.example.com', 'mx.example.com', true],
    ['mx.example.com', 'MX.Example.Com', true],
    ['mx.example.com', 'mx.example.com.', true],
    ['mx.example.com', 'mx2.example.com', false],
    ['mx.example.com', 'example.com', false],
    ['*.example.com', 'mx1.example.com', true],
    ['*.example.com', 'MX1.EXAMPLE.COM', true],
    ['*.example.com', 'example.com', false],
    ['*.example.com', '1234.dhcp.example.com', false],
    ['*.example.com', 'mx1.example.com.evil.test', false],
    ['*.example.com', 'mx1example.com', false],
    ['*.example.com', '.example.com', false],
    ['*.mail.example.com', 'a.mail.example.com', true],
    ['*.mail.example.com', 'mail.example.com', false],
  ])('%s matches %s: %s', (pattern, host, expected) => {
    expect(mxMatches(pattern, host)).toBe(expected);
  });

  it.each([
    ['mx.example.com', true],
    ['*.example.com', true],
    ['*.com', false],
    ['mx*.example.com', false],
    ['foo.*.example.com', false],
    ['*', false],
    ['example', false],
    ['-mx.example.com', false],
    ['mx_1.example.com', false],
  ])('%s is a valid pattern: %s', (pattern, valid) => {
    expect(isMxPattern(pattern)).toBe(valid);
  });

  it('a wildcard stands for exactly one label (property)', () => {
    const label = fc.stringMatching(/^[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?$/);
    const domain = fc.array(label, { minLength: 2, maxLength: 4 }).map((l) => l.join('.'));
    fc.assert(
      fc.property(label, label, domain, (a, b, d) => {
        expect(mxMatches(`*.${d}`, `${a}.${d}`)).toBe(true);
        expect(mxMatches(`*.${d}`, `${a}.${d}`.toUpperCase())).toBe(true);
        expect(mxMatches(`*.${d}`, d)).toBe(false);
        expect(mxMatches(`*.${d}`, `${a}.${b}.${d}`)).toBe(false);
        expect(mxMatches(d, `${a}.${d}`)).toBe(false);
        expect(mxMatches(d, d.toUpperCase())).toBe(true);
      }),
    );
  });
});

describe('TLS failure types (TLSRPT names)', () => {
  it.each([
    ['ERR_TLS_CERT_ALTNAME_INVALID', 'certificate-host-mismatch'],
    ['CERT_HAS_EXPIRED', 'certificate-expired'],
    ['DEPTH_ZERO_SELF_SIGNED_CERT', 'certificate-not-trusted'],
    ['SELF_SIGNED_CERT_IN_CHAIN', 'certificate-not-trusted'],
    ['UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'certificate-not-trusted'],
    ['UNABLE_TO_GET_ISSUER_CERT_LOCALLY', 'certificate-not-trusted'],
    ['ECONNRESET', 'validation-failure'],
    [undefined, 'validation-failure'],
  ])('%s → %s', (code, type) => {
    expect(failureType(code)).toBe(type);
  });
});

// ---------------------------------------------------------------- the cache's decisions

const POLICY = (mode = 'enforce', mx = 'mx.example.com', maxAge = 86400) => `version: STSv1\nmode: ${mode}\nmx: ${mx}\nmax_age: ${maxAge}\n`;

/** A zone with one `_mta-sts` TXT record (or none, or a failing server) and a policy host. */
function fakeDomain() {
  const state = { txt: 'v=STSv1; id=one' as string | null, dnsDown: false, ttl: 60, policy: POLICY() as string | Error, queries: 0, fetches: 0 };
  const dns = {
    query: async (name: string): Promise<DnsAnswer> => {
      state.queries++;
      if (state.dnsDown) throw new Error('SERVFAIL');
      if (state.txt === null) return { status: 'nxdomain', records: [], ttl: state.ttl };
      return { status: 'ok', records: [{ type: 'TXT', name, data: [Buffer.from(state.txt)] } as never], ttl: state.ttl };
    },
  };
  const fetchPolicy = async () => {
    state.fetches++;
    if (state.policy instanceof Error) throw state.policy;
    return state.policy;
  };
  return { state, deps: { dns, hostAddresses: async () => ['192.0.2.1'], fetchPolicy } };
}

describe('policy cache', () => {
  beforeEach(() => {
    vi.useFakeTimers({ toFake: ['Date'] });
    vi.setSystemTime(new Date('2026-11-01T00:00:00Z'));
  });
  afterEach(() => vi.useRealTimers());
  const later = (ms: number) => vi.setSystemTime(Date.now() + ms);

  it('fetches once, keeps the view for the TXT TTL, and refetches only when the id changes', async () => {
    const { state, deps } = fakeDomain();
    const p = new MtaStsPolicies(deps);
    expect(p.peek('example.com')).toBeUndefined();
    expect((await p.get('example.com')).policy).toMatchObject({ id: 'one', mode: 'enforce', mx: ['mx.example.com'] });
    expect(p.active('example.com')).toBe(true);
    await p.get('example.com');
    expect(p.peek('example.com')).toBeDefined();
    expect([state.queries, state.fetches]).toEqual([1, 1]);
    later(61_000); // TXT TTL over: looked up again, same id, no fetch
    expect(p.peek('example.com')).toBeUndefined();
    await p.get('example.com');
    expect([state.queries, state.fetches]).toEqual([2, 1]);
    state.txt = 'v=STSv1; id=two';
    state.policy = POLICY('testing', '*.example.com');
    later(61_000);
    expect((await p.get('example.com')).policy).toMatchObject({ id: 'two', mode: 'testing', mx: ['*.example.com'] });
    expect(state.fetches).toBe(2);
  });

  it('shares one lookup between concurrent callers', async () => {
    const { state, deps } = fakeDomain();
    const p = new MtaStsPolicies(deps);
    await Promise.all([p.get('example.com'), p.get('example.com'), p.get('example.com')]);
    expect([state.queries, state.fetches]).toEqual([1, 1]);
  });

  it('keeps applying the cached policy when the new one cannot be fetched, and waits 5 minutes before trying that id again', async () => {
    const { state, deps } = fakeDomain();
    const p = new MtaStsPolicies(deps);
    await p.get('example.com');
    state.txt = 'v=STSv1; id=two';
    state.policy = new Error('HTTP 503');
    later(61_000);
    const v = await p.get('example.com');
    expect(v.policy?.id).toBe('one');
    expect(v.note).toMatch(/policy two could not be fetched: HTTP 503; the cached policy one applies/);
    later(61_000);
    await p.get('example.com');
    expect(state.fetches).toBe(2); // not retried within 5 minutes
    state.policy = POLICY('none');
    later(5 * 60_000);
    expect((await p.get('example.com')).policy).toMatchObject({ id: 'two', mode: 'none' });
    expect(p.active('example.com')).toBe(false); // mode none withdraws the policy
  });

  it('keeps applying the cached policy when the TXT record disappears or DNS fails, until max_age', async () => {
    const { state, deps } = fakeDomain();
    state.policy = POLICY('enforce', 'mx.example.com', 3600);
    const p = new MtaStsPolicies(deps);
    await p.get('example.com');
    state.txt = null;
    later(61_000);
    expect((await p.get('example.com')).policy?.id).toBe('one');
    state.dnsDown = true;
    later(61_000);
    const v = await p.get('example.com');
    expect(v.policy?.id).toBe('one');
    expect(v.note).toMatch(/TXT lookup failed/);
    later(3600_000);
    expect((await p.get('example.com')).policy).toBeNull(); // expired: no policy
    expect(p.active('example.com')).toBe(false);
  });

  it('treats a domain whose policy cannot be fetched, with nothing cached, as having none', async () => {
    const { state, deps } = fakeDomain();
    state.policy = 'version: STSv1\nmode: enforce\nmax_age: 60';
    const p = new MtaStsPolicies(deps);
    const v = await p.get('example.com');
    expect(v.policy).toBeNull();
    expect(v.note).toMatch(/names no valid mx/);
    expect(p.active('example.com')).toBe(false);
    expect(await p.check('example.com')).toBeNull();
  });

  it('has no policy for a domain without a TXT record, and looks again after the TTL', async () => {
    const { state, deps } = fakeDomain();
    state.txt = null;
    state.ttl = 300;
    const p = new MtaStsPolicies(deps);
    expect(await p.get('example.com')).toMatchObject({ policy: null, note: 'no _mta-sts TXT record' });
    later(299_000);
    expect(p.peek('example.com')).toBeDefined();
    later(2_000);
    expect(p.peek('example.com')).toBeUndefined();
    expect(state.fetches).toBe(0);
  });

  it('refreshes a policy with an unchanged id in the background once it is half its max_age old', async () => {
    const { state, deps } = fakeDomain();
    state.policy = POLICY('enforce', 'mx.example.com', 7200);
    let release = () => {};
    const gate = new Promise<void>((r) => (release = r));
    const p = new MtaStsPolicies({ ...deps, fetchPolicy: async () => (state.fetches > 0 ? gate.then(() => deps.fetchPolicy()) : deps.fetchPolicy()) });
    await p.get('example.com');
    later(3601_000);
    state.policy = POLICY('enforce', 'mx2.example.com', 7200);
    expect((await p.get('example.com')).policy?.mx).toEqual(['mx.example.com']); // the cached one answers without waiting
    release();
    await vi.waitFor(() => expect(p.peek('example.com')?.policy?.mx).toEqual(['mx2.example.com']));
    expect(state.fetches).toBe(2);
  });

  it('persists policies: a restarted node applies them without fetching', async () => {
    const dir = tempDir();
    const { state, deps } = fakeDomain();
    let store = new Store(dir);
    await new MtaStsPolicies({ ...deps, store }).get('example.com');
    await store.close();
    store = new Store(dir);
    state.policy = new Error('policy host down');
    const p = new MtaStsPolicies({ ...deps, store });
    expect((await p.get('example.com')).policy).toMatchObject({ id: 'one', mode: 'enforce' });
    expect(state.fetches).toBe(1);
    state.txt = 'v=STSv1; id=two';
    later(61_000);
    expect((await p.get('example.com')).policy?.id).toBe('one'); // the new one cannot be fetched
    await store.close();
  });

  it('has no policy for an address literal', async () => {
    const { state, deps } = fakeDomain();
    const p = new MtaStsPolicies(deps);
    expect(p.peek('[192.0.2.1]')?.policy).toBeNull();
    expect((await p.get('[192.0.2.1]')).policy).toBeNull();
    expect(state.queries).toBe(0);
  });
});

describe('applying a policy to a connection attempt', () => {
  const policy = (mode: 'enforce' | 'testing'): CachedPolicy => ({ mode, mx: ['mx.example.com', '*.backup.example.com'], maxAge: 60, id: 'p1', fetchedAt: 0, expiresAt: Date.now() + 60_000 });

  it('under enforce, refuses an MX host outside the policy with a 4.7.5 deferral, and reports it', () => {
    const reports: StsFailure[] = [];
    const check = new MtaStsCheck('example.com', policy('enforce'), (f) => reports.push(f));
    expect(check.tls('opportunistic')).toBe('required');
    expect(check.tls('none')).toBe('required');
    expect(check.refuseHost('mx.example.com')).toBeNull();
    expect(check.refuseHost('b1.backup.example.com')).toBeNull();
    const err = check.refuseHost('mx.attacker.test')!;
    expect(err.response).toMatch(/^451 4\.7\.5 MTA-STS policy of example\.com: MX host mx\.attacker\.test does not match/);
    expect(err.code).toBeNull(); // ours, not the remote's: backoff rules do not see it
    expect(err.permanent).toBe(false);
    expect(reports).toEqual([expect.objectContaining({ domain: 'example.com', mode: 'enforce', policy_id: 'p1', mx: 'mx.attacker.test', result_type: 'validation-failure' })]);
  });

  it('under enforce, turns a STARTTLS refusal into 4.7.4 and a certificate failure into 4.7.5', () => {
    const check = new MtaStsCheck('example.com', policy('enforce'), () => {});
    const noTls = Object.assign(new DeliveryError('x', '502 5.5.1 STARTTLS not available', 502, false), { tlsFailure: { starttls: true } });
    expect(check.tlsFailure(noTls, 'mx.example.com[192.0.2.1]:25')!.response).toMatch(/^451 4\.7\.4 .*STARTTLS was not available \(502 5\.5\.1/);
    const badCert = Object.assign(new DeliveryError("Hostname/IP does not match certificate's altnames", 'ESOCKET', null, true), { tlsFailure: { starttls: false, code: 'ERR_TLS_CERT_ALTNAME_INVALID' } });
    expect(check.tlsFailure(badCert, 'mx.example.com[192.0.2.1]:25')!.response).toMatch(/^451 4\.7\.5 .*not valid for the MX host name/);
    expect(check.tlsFailure(new DeliveryError('refused', 'ECONNREFUSED', null, true), 'mx')).toBeNull(); // not a TLS matter
  });

  it('under testing, refuses nothing but reports what enforce would refuse', () => {
    const reports: StsFailure[] = [];
    const check = new MtaStsCheck('example.com', policy('testing'), (f) => reports.push(f));
    expect(check.tls('opportunistic')).toBe('opportunistic');
    expect(check.refuseHost('mx.attacker.test')).toBeNull();
    const badCert = Object.assign(new DeliveryError('x', 'ESOCKET', null, true), { tlsFailure: { starttls: false, code: 'CERT_HAS_EXPIRED' } });
    expect(check.tlsFailure(badCert, 'mx')).toBeNull();
    expect(reports.map((r) => [r.mode, r.result_type])).toEqual([
      ['testing', 'validation-failure'],
      ['testing', 'certificate-expired'],
    ]);
  });
});

describe('config keys', () => {
  const problems = (delivery: unknown): string[] => {
    try {
      buildConfig({ delivery });
      return [];
    } catch (err) {
      if (err instanceof ConfigError) return err.problems;
      throw err;
    }
  };

  it('has MTA-STS on by default, fetching from port 443 within 10 s, with no extra CAs', () => {
    expect(buildConfig({}).delivery).toMatchObject({ tlsCaFile: null, mtaSts: { enabled: true, httpsPort: 443, fetchTimeoutMs: 10_000 } });
  });

  it('reads the keys', () => {
    const dir = tempDir();
    const ca = path.join(dir, 'ca.pem');
    fs.writeFileSync(ca, '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n');
    const c = buildConfig({ delivery: { tls_ca_file: ca, mta_sts: { enabled: false, https_port: 8443, fetch_timeout: '3s' } } });
    expect(c.delivery).toMatchObject({ tlsCaFile: ca, mtaSts: { enabled: false, httpsPort: 8443, fetchTimeoutMs: 3000 } });
  });

  it.each([
    [{ tls_ca_file: '/nonexistent/ca.pem' }, /^delivery\.tls_ca_file: \/nonexistent\/ca\.pem does not exist/],
    [{ tls_ca_file: path.join(ROOT, 'package.json') }, /^delivery\.tls_ca_file: .* holds no PEM certificate/],
    [{ mta_sts: { https_port: 0 } }, /^delivery\.mta_sts\.https_port: 0 is invalid/],
    [{ mta_sts: { fetch_timeout: 'soon' } }, /^delivery\.mta_sts\.fetch_timeout: "soon" is not a duration/],
    [{ mta_sts: { enabled: 'yes' } }, /^delivery\.mta_sts\.enabled: "yes" is invalid/],
    [{ mta_sts: { port: 443 } }, /^delivery\.mta_sts\.port: unknown key; the keys allowed here are enabled, https_port, fetch_timeout/],
  ])('names the key path: %j', (delivery, expected) => {
    expect(problems(delivery)).toEqual([expect.stringMatching(expected)]);
  });
});
