import { describe, expect, it } from 'vitest';
import { MachineAgents, judgeHit, type Hit } from '../../src/tracking/agents.js';
import { SHIPPED_TRACKING_AGENTS_FILE } from '../../src/core/config.js';

const agents = MachineAgents.load(SHIPPED_TRACKING_AGENTS_FILE);
const hit = (over: Partial<Hit>): Hit => ({ kind: 'click', userAgent: 'Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36', ip: '198.51.100.7', method: 'GET', ...over });

const PEOPLE = [
  'Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36',
  'Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148',
  'Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)',
  'Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:128.0) Gecko/20100101 Thunderbird/128.3.0',
  'Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17928; Pro)',
  'Mozilla/5.0 (Linux; Android 14; CUBOT KINGKONG 9) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Mobile Safari/537.36',
  'Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)',
];

describe('machine activity (shipped rules)', () => {
  it.each(PEOPLE)('a person: %s', (ua) => {
    expect(agents.match(hit({ kind: 'open', userAgent: ua }))).toBeNull();
    expect(agents.match(hit({ kind: 'click', userAgent: ua }))).toBeNull();
  });

  it.each([
    ['open', 'Mozilla/5.0', '203.0.113.9', 'apple_mpp'],
    ['open', 'Mozilla/5.0 (Macintosh)', '17.58.63.12', 'apple_mpp'],
    ['open', '', '203.0.113.9', 'no_user_agent'],
    ['click', 'Mozilla/5.0 (compatible; Barracuda Sentinel)', '203.0.113.9', 'link_scanner'],
    ['click', 'Mimecast URL Protect', '203.0.113.9', 'link_scanner'],
    ['click', 'Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/120.0', '40.107.22.5', 'link_scanner'],
    ['click', 'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.0.0 Safari/537.36', '203.0.113.9', 'automated_client'],
    ['click', 'python-requests/2.32.3', '203.0.113.9', 'automated_client'],
    ['click', 'curl/8.5.0', '203.0.113.9', 'automated_client'],
    ['click', 'Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)', '203.0.113.9', 'link_preview'],
    ['open', 'facebookexternalhit/1.1', '203.0.113.9', 'link_preview'],
  ] as const)('%s by %j from %s: %s', (kind, userAgent, ip, reason) => {
    expect(agents.match(hit({ kind, userAgent, ip }))).toBe(reason);
  });

  it('only opens are Apple MPP: a click from Apple\'s network is a person at Apple', () => {
    expect(agents.match(hit({ kind: 'click', ip: '17.58.63.12' }))).toBeNull();
    expect(agents.match(hit({ kind: 'click', userAgent: 'Mozilla/5.0' }))).toBeNull();
  });

  it('a HEAD request checks a link, it does not visit it', () => {
    expect(agents.match(hit({ method: 'HEAD' }))).toBe('head_request');
  });
});

describe('judging a hit', () => {
  const base = { trap: false, trapHit: false, now: 100_000, deliveredAt: 50_000, scannerWindowMs: 10_000 };
  it('flags clicks too soon after delivery, trap clicks and the clicks after them', () => {
    expect(judgeHit(agents, { ...hit({}), ...base })).toEqual({ machine: false });
    expect(judgeHit(agents, { ...hit({}), ...base, deliveredAt: 95_000 })).toEqual({ machine: true, reason: 'too_fast' });
    expect(judgeHit(agents, { ...hit({ kind: 'open' }), ...base, deliveredAt: 99_999 })).toEqual({ machine: false });
    expect(judgeHit(agents, { ...hit({}), ...base, trap: true })).toEqual({ machine: true, reason: 'trap_link' });
    expect(judgeHit(agents, { ...hit({}), ...base, trapHit: true })).toEqual({ machine: true, reason: 'after_trap_link' });
    expect(judgeHit(agents, { ...hit({}), ...base, scannerWindowMs: 0, deliveredAt: 100_000 })).toEqual({ machine: false });
  });

  it('names the rule that decided', () => {
    expect(judgeHit(agents, { ...hit({ userAgent: 'Mimecast' }), ...base, deliveredAt: 99_000 })).toEqual({ machine: true, reason: 'link_scanner' });
  });
});

describe('rules files', () => {
  it('are checked, with the key path of each problem', () => {
    expect(() => MachineAgents.from({ rules: [{ name: 'x', user_agent: '(' }] })).toThrow(/rules\[0\]\.user_agent: Invalid regular expression/);
    expect(() => MachineAgents.from({ rules: [{ name: 'x', networks: ['10.0.0.0/33'] }] })).toThrow(/rules\[0\]\.networks\[0\]: "10\.0\.0\.0\/33" has an invalid prefix length/);
    expect(() => MachineAgents.from({ rules: [{ name: 'x' }] })).toThrow(/rules\[0\]: a rule needs a condition/);
    expect(() => MachineAgents.from({ rules: [{ name: 'x', for: 'opens', user_agent: 'y' }] })).toThrow(/rules\[0\]\.for/);
    expect(() => MachineAgents.from({ rules: [{ name: 'x', agent: 'y' }] })).toThrow(/rules\[0\]\.agent: unknown key/);
  });

  it('match client networks, IPv4 (mapped or not) and IPv6', () => {
    const a = MachineAgents.from({ rules: [{ name: 'v4', networks: ['17.0.0.0/8', '192.0.2.128/25'] }, { name: 'v6', networks: ['2001:db8::/32'] }, { name: 'all', for: 'click', networks: ['0.0.0.0/0'] }] });
    const at = (ip: string, kind: 'open' | 'click' = 'open') => a.match(hit({ kind, ip }));
    expect([at('17.0.0.0'), at('17.255.255.255'), at('::ffff:17.1.2.3'), at('192.0.2.200'), at('2001:db8::1')]).toEqual(['v4', 'v4', 'v4', 'v4', 'v6']);
    expect([at('16.255.255.255'), at('18.0.0.0'), at('192.0.2.127'), at('2001:db9::1'), at('17.1.2'), at('17.1.2.3.4'), at('')]).toEqual([null, null, null, null, null, null, null]);
    expect(at('203.0.113.1', 'click')).toBe('all');
  });

  it('are tried in order, the first match deciding', () => {
    const a = MachineAgents.from({ rules: [{ name: 'first', user_agent: 'bot' }, { name: 'second', user_agent: 'robot' }] });
    expect(a.match(hit({ userAgent: 'a robot' }))).toBe('first');
  });
});
