import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { Backoff, type BackoffRule } from '../../src/mta/backoff.js';
import { parseRate } from '../../src/mta/rate.js';
import { Shaping } from '../../src/mta/shaping.js';
import type { ConfigError } from '../../src/core/config.js';
import { ROOT } from '../support/node.js';

const rule = (r: Partial<BackoffRule>): BackoffRule => ({ name: 'r', reply: /^421/, threshold: null, action: 'suspend', durationMs: 60_000, rate: null, scope: 'source', ...r });

describe('backoff rules', () => {
  it('suspends a source → site once the threshold is reached within its period, and not before', () => {
    const b = new Backoff([rule({ threshold: parseRate('3/10min') })]);
    expect(b.observe('421 4.7.0 Try again later', 's1', 'site', 0)).toBeNull();
    expect(b.observe('421 4.7.0 Try again later', 's1', 'site', 1000)).toBeNull();
    // an old hit has left the window
    expect(b.observe('421 4.7.0 Try again later', 's1', 'site', 700_000)).toBeNull();
    expect(b.observe('421 4.7.0 Try again later', 's1', 'site', 700_001)).toBeNull();
    const a = b.observe('421 4.7.0 Try again later', 's1', 'site', 700_002);
    expect(a).toMatchObject({ rule: 'r', action: 'suspend', source: 's1', site: 'site', until: 760_002, cause: '421 4.7.0 Try again later' });
    expect(b.suspendedUntil('s1', 'site', 700_010)).toBe(760_002);
    expect(b.suspendedUntil('s2', 'site', 700_010)).toBeNull(); // scope source: other sources carry on
    expect(b.suspendedUntil('s1', 'other-site', 700_010)).toBeNull();
  });

  it('expires on its own and can be cleared early', () => {
    const b = new Backoff([rule({})]);
    const a = b.observe('421 busy', 's1', 'site', 0)!;
    expect(b.active(59_999)).toHaveLength(1);
    expect(b.active(60_000)).toHaveLength(0);
    expect(b.suspendedUntil('s1', 'site', 60_000)).toBeNull();
    const again = b.observe('421 busy', 's1', 'site', 70_000)!;
    expect(again.id).not.toBe(a.id);
    expect(b.clear(again.id)).toBe(true);
    expect(b.suspendedUntil('s1', 'site', 70_001)).toBeNull();
  });

  it('a site-scoped suspension holds every source; a throttle gives the strictest running rate; fail rules match deferrals', () => {
    const b = new Backoff([
      rule({ name: 'site-wide', reply: /^554/, scope: 'site' }),
      rule({ name: 'slow', reply: /4\.7\.500/, action: 'throttle', rate: parseRate('60/min') }),
      rule({ name: 'slower', reply: /4\.7\.650/, action: 'throttle', rate: parseRate('10/min') }),
      rule({ name: 'dead', reply: /mailbox disabled/, action: 'fail' }),
    ]);
    b.observe('554 5.7.1 Service unavailable', 's1', 'a', 0);
    expect(b.suspendedUntil('s9', 'a', 1)).toBe(60_000);
    b.observe('451 4.7.500 Server busy', 's1', 'b', 0);
    b.observe('451 4.7.650 IP reputation', 's1', 'b', 0);
    expect(b.throttle('s1', 'b', 1)?.text).toBe('10/min');
    expect(b.throttle('s2', 'b', 1)).toBeNull();
    expect(b.failRule('452 4.2.1 mailbox disabled for now')?.name).toBe('dead');
    expect(b.failRule('452 4.2.2 mailbox full')).toBeUndefined();
  });

  it('does not start a second action for a rule already running on the same target', () => {
    const b = new Backoff([rule({})]);
    expect(b.observe('421 x', 's1', 'site', 0)).not.toBeNull();
    expect(b.observe('421 x', 's1', 'site', 10)).toBeNull();
    expect(b.active(20)).toHaveLength(1);
  });
});

describe('rules in the shaping file', () => {
  const problems = (rules: unknown[]) => {
    try {
      Shaping.fromDocument({ rules });
      return [];
    } catch (err) {
      return (err as ConfigError).problems;
    }
  };
  it('refuses incomplete or broken rules, naming them', () => {
    expect(problems([{ name: 'a', reply: '(', action: 'suspend', duration: '1m' }])[0]).toMatch(/^shaping: rules\[0\]\.reply: /);
    expect(problems([{ name: 'a', reply: 'x', action: 'throttle', duration: '1m' }])[0]).toMatch(/^shaping: rules\[0\]\.rate: a throttle rule needs a rate/);
    expect(problems([{ name: 'a', reply: 'x', action: 'suspend' }])[0]).toMatch(/^shaping: rules\[0\]\.duration: a suspend rule needs a duration/);
    expect(problems([{ name: 'a', reply: 'x', action: 'pause', duration: '1m' }])[0]).toMatch(/^shaping: rules\[0\]\.action: "pause" is invalid/);
  });

  it('ships rules for the well-known provider deferrals', () => {
    const shipped = Shaping.load(path.join(ROOT, 'config/shaping.yaml'));
    const b = new Backoff(shipped.rules);
    const fired = (reply: string, times: number) => {
      let a = null;
      for (let i = 0; i < times && !a; i++) a = b.observe(reply, `src-${reply}`, 'site', i);
      return a?.rule ?? null;
    };
    expect(fired('421 4.7.0 Try again later, closing connection.', 3)).toBe('try-again-later');
    expect(fired('451 4.7.500 Server busy. Please try again later from [192.0.2.1]. (S77714)', 3)).toBe('microsoft-throttling');
    expect(fired('421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or user complaints', 1)).toBe('yahoo-deferral');
    expect(fired('421 4.7.28 Gmail has detected an unusual rate of unsolicited mail originating from your IP address.', 3)).toBe('google-rate-limit');
    expect(fired('450 4.2.1 The user you are trying to contact is receiving mail too quickly', 3)).toBeNull();
  });
});
