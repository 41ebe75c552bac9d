import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { Store } from '../../src/core/store.js';
import { ConfigError } from '../../src/core/config.js';
import { Warmup, loadWarmupPlans, parsePlans } from '../../src/mta/warmup.js';
import { ROOT, tempDir } from '../support/node.js';

const DAY = 86_400_000;
const shipped = loadWarmupPlans(path.join(ROOT, 'config/warmup.yaml'));

describe('plans', () => {
  it('ships a standard plan growing about ×1.4 a day from 50 to full volume in about 30 days', () => {
    const plan = shipped.get('standard')!;
    expect(plan.cap(1)).toBe(50);
    expect(plan.cap(2)).toBe(70);
    for (let d = 2; d < 25; d++) expect(plan.cap(d) / plan.cap(d - 1)).toBeCloseTo(1.4, 1);
    const warmDay = Array.from({ length: 60 }, (_, i) => i + 1).find((d) => plan.warm(d))!;
    expect(warmDay).toBeGreaterThanOrEqual(25);
    expect(warmDay).toBeLessThanOrEqual(35);
    expect(plan.cap(warmDay)).toBe(Infinity);
  });

  it('caps providers on top of the total where the plan says so', () => {
    const plan = shipped.get('conservative')!;
    expect(plan.cap(1)).toBe(50);
    expect(plan.cap(1, 'google')).toBe(20);
    expect(plan.cap(1, 'apple')).toBe(50); // no curve of its own: the total applies
    expect(plan.warm(40)).toBe(true);
  });

  it('reads a table of days, warm after the last', () => {
    const plan = parsePlans({ t: { days: [10, 0, 30] } }).get('t')!;
    expect([plan.cap(0), plan.cap(1), plan.cap(2), plan.cap(3), plan.cap(4)]).toEqual([0, 10, 0, 30, Infinity]);
  });

  it('refuses a malformed plan with the plan named', () => {
    expect(() => parsePlans({ bad: { start: 50, factor: 0.5, full: 100 } })).toThrow(/plans\.bad: write a plan as/);
    expect(() => parsePlans({ bad: { days: [] } })).toThrow(ConfigError);
    expect(() => parsePlans({ bad: { start: 50, factor: 1.4, full: 100, extra: 1 } })).toThrow(/plans\.bad/);
  });
});

describe('the warmup calendar', () => {
  const stores: Store[] = [];
  afterEach(async () => {
    for (const s of stores.splice(0)) await s.close();
  });
  const plans = parsePlans({ p: { days: [3, 6, 9, 12] }, prov: { days: [10, 20], providers: { google: { days: [2, 4] } } } });
  const setup = (start = '2026-03-01', dir = tempDir()) => {
    let now = Date.parse('2026-03-01T12:00:00Z');
    const store = new Store(dir);
    stores.push(store);
    const clock = () => now;
    const make = () => new Warmup(store, plans, [{ name: 's', pool: 'default', plan: 'p', start }, { name: 'g', pool: 'default', plan: 'prov', start }], 30, clock);
    return { warmup: make(), make, store, dir, advance: (days: number) => (now += days * DAY) };
  };
  const send = (w: Warmup, source: string, n: number, provider: string | null = null) => {
    for (let i = 0; i < n; i++) {
      if (!w.fits(source, [{ provider, n: 1 }])) return i;
      w.reserve(source, provider, 1);
      w.record(source, provider, 1);
    }
    return n;
  };
  const day = (w: Warmup, source = 's') => w.status(source)[0]!;

  it('takes exactly the day cap, counting reserved room', () => {
    const { warmup } = setup();
    warmup.reserve('s', null, 2);
    expect(warmup.fits('s', [{ provider: null, n: 1 }])).toBe(true);
    expect(warmup.fits('s', [{ provider: null, n: 2 }])).toBe(false);
    warmup.unreserve('s', null, 2);
    expect(send(warmup, 's', 10)).toBe(3);
    expect(day(warmup)).toMatchObject({ day: 1, cap: 3, sent_today: 3, state: 'warming' });
    expect(warmup.fits('unplanned-source', [{ provider: null, n: 1_000_000 }])).toBe(true);
  });

  it('lets one message larger than the whole cap take a day of its own, and nothing else that day', () => {
    const { warmup } = setup();
    expect(warmup.fits('s', [{ provider: null, n: 50 }])).toBe(true);
    warmup.reserve('s', null, 50);
    warmup.record('s', null, 50);
    expect(warmup.fits('s', [{ provider: null, n: 1 }])).toBe(false);
  });

  it('sends nothing on a day whose cap is 0', () => {
    const { store } = setup();
    const w = new Warmup(store, parsePlans({ z: { days: [0, 5] } }), [{ name: 'z', pool: 'default', plan: 'z', start: '2026-03-01' }], 30, () => Date.parse('2026-03-01T12:00:00Z'));
    expect(w.fits('z', [{ provider: null, n: 1 }])).toBe(false);
    expect(w.fits('z', [{ provider: null, n: 10 }])).toBe(false);
  });

  it('advances only after a day that sent, and holds on idle days', () => {
    const { warmup, advance } = setup();
    send(warmup, 's', 3);
    advance(1);
    expect(day(warmup)).toMatchObject({ day: 2, cap: 6, sent_today: 0 });
    advance(1); // nothing sent on day 2
    expect(day(warmup).day).toBe(2);
    advance(1);
    expect(day(warmup).day).toBe(2);
    send(warmup, 's', 1);
    advance(1);
    expect(day(warmup).day).toBe(3);
  });

  it('starts over after 30 idle days, and is warm after its last day', () => {
    const { warmup, advance } = setup();
    for (let d = 0; d < 4; d++) {
      send(warmup, 's', 100);
      advance(1);
    }
    expect(day(warmup)).toMatchObject({ day: 5, cap: null, state: 'warm' });
    expect(send(warmup, 's', 1000)).toBe(1000);
    advance(30);
    expect(day(warmup).day).toBe(5); // 29 idle days
    advance(2);
    expect(day(warmup)).toMatchObject({ day: 1, cap: 3, state: 'warming' });
  });

  it('takes no mail before its start date', () => {
    const { warmup, advance } = setup('2026-03-03');
    expect(day(warmup)).toMatchObject({ state: 'not_started', day: 0, cap: 0 });
    expect(warmup.fits('s', [{ provider: null, n: 1 }])).toBe(false);
    advance(2);
    expect(day(warmup)).toMatchObject({ state: 'warming', day: 1, cap: 3 });
  });

  it('caps a provider inside the total', () => {
    const { warmup } = setup();
    expect(send(warmup, 'g', 5, 'google')).toBe(2);
    expect(send(warmup, 'g', 20, 'microsoft')).toBe(8); // the total (10) minus google's 2
    expect(warmup.fits('g', [{ provider: 'google', n: 1 }, { provider: null, n: 0 }])).toBe(false);
    expect(day(warmup, 'g').providers.google).toEqual({ cap: 2, sent_today: 2, reserved: 0 });
  });

  it('keeps counters across a restart, and restarts the plan when the source is given a new one', async () => {
    const { warmup, make, store } = setup();
    send(warmup, 's', 2);
    await store.root.flushed;
    const again = make();
    expect(day(again)).toMatchObject({ day: 1, sent_today: 2 });
    expect(send(again, 's', 5)).toBe(1);
    const moved = new Warmup(store, plans, [{ name: 's', pool: 'default', plan: 'prov', start: '2026-03-01' }], 30, again.clock);
    expect(moved.status('s')[0]).toMatchObject({ plan: 'prov', day: 1, sent_today: 0, cap: 10 });
  });

  it('records each new day as events', async () => {
    const { warmup, advance, store } = setup();
    send(warmup, 's', 1);
    advance(1);
    warmup.roll();
    await store.root.flushed;
    const events = store.events(0, 100).filter((e) => e.type.startsWith('warmup_'));
    expect(events).toContainEqual(expect.objectContaining({ type: 'warmup_advanced', source: 's', day: 2, cap: 6 }));
    expect(events).toContainEqual(expect.objectContaining({ type: 'warmup_held', source: 'g', day: 1 }));
  });
});
