import { describe, expect, it, vi } from 'vitest';
import { Store, type TernEvent } from '../../src/core/store.js';
import { OutboxFollower } from '../../src/events/follower.js';
import { judgeAnswer, publicEvent, retryDelay } from '../../src/events/webhooks.js';
import { filterOf, matchesFilter } from '../../src/events/types.js';
import { tempDir } from '../support/node.js';

describe('retryDelay', () => {
  it('doubles from the first wait up to the cap, ±20 %', () => {
    const mid = () => 0.5;
    expect([1, 2, 3, 4, 5, 10, 50, 1000].map((n) => retryDelay(n, 2000, 600_000, mid))).toEqual([2000, 4000, 8000, 16_000, 32_000, 600_000, 600_000, 600_000]);
    expect(retryDelay(1, 2000, 600_000, () => 0)).toBe(1600);
    expect(retryDelay(1, 2000, 600_000, () => 0.999999)).toBe(2400);
    expect(retryDelay(20, 2000, 600_000, () => 0.999999)).toBe(600_000); // never over the cap
  });
});

describe('judgeAnswer', () => {
  it('counts only a 2xx as delivered; a redirect is a failure, never followed', () => {
    expect(judgeAnswer(200, null, '')).toEqual({ ok: true, status: 200 });
    expect(judgeAnswer(204, null, '')).toEqual({ ok: true, status: 204 });
    expect(judgeAnswer(301, 'https://elsewhere.example/', '')).toEqual({ ok: false, result: 'redirect', error: 'HTTP 301 redirect to https://elsewhere.example/ (redirects are not followed; configure the final URL)' });
    expect(judgeAnswer(503, null, '  Service\n Unavailable ')).toEqual({ ok: false, result: 'http_error', error: 'HTTP 503: Service Unavailable' });
    expect(judgeAnswer(410, null, '')).toEqual({ ok: false, result: 'http_error', error: 'HTTP 410' });
    expect(judgeAnswer(100, null, '')).toMatchObject({ ok: false });
  });
});

describe('events as published', () => {
  it('have id, seq, type, at first, then the fields', () => {
    const e = publicEvent({ seq: 7, at: 1, type: 'delivered', tenant: 'acme', rcpt: 'a@b' }, 'mta1');
    expect(Object.keys(e)).toEqual(['id', 'seq', 'type', 'at', 'tenant', 'rcpt']);
    expect(e.id).toBe('mta1:7');
  });

  it('go to the tenant they name; node events only to "*"', () => {
    const acme = filterOf('acme', ['*']);
    const ops = filterOf('*', ['*']);
    expect(matchesFilter(acme, { type: 'delivered', tenant: 'acme' })).toBe(true);
    expect(matchesFilter(acme, { type: 'delivered', tenant: 'beta' })).toBe(false);
    expect(matchesFilter(acme, { type: 'warmup_advanced' })).toBe(false);
    expect(matchesFilter(ops, { type: 'warmup_advanced' })).toBe(true);
    expect(matchesFilter(filterOf('acme', ['failed']), { type: 'delivered', tenant: 'acme' })).toBe(false);
  });
});

describe('OutboxFollower', () => {
  it('reads matching events in order from its position, passes over others while caught up, and wakes on new ones', async () => {
    const store = new Store(tempDir());
    const add = (tenant: string, n: number) => store.transact((tx) => tx.event('delivered', { tenant, n }));
    await add('a', 1);
    await add('b', 2);
    await add('a', 3);
    const f = new OutboxFollower(store, 0, (e) => e.tenant === 'a');
    expect(f.read(10).events.map((e) => e.n)).toEqual([1, 3]);
    expect(f.position).toBe(3);
    expect(f.idle).toBe(true);
    // caught up: another tenant's events move the position without a read
    await add('b', 4);
    expect(f.position).toBe(4);
    expect(f.idle).toBe(true);
    // a matching one wakes the waiter
    const woken = f.wait(10_000).then(() => 'woken');
    await add('a', 5);
    expect(await woken).toBe('woken');
    expect(f.read(10).events.map((e) => e.n)).toEqual([5]);
    // limit, then rewind (a reader that took fewer)
    for (let i = 6; i < 12; i++) await add('a', i);
    const batch = f.read(3).events;
    expect(batch.map((e) => e.n)).toEqual([6, 7, 8]);
    f.rewind(batch[0]!.seq);
    expect(f.read(100).events.map((e) => e.n)).toEqual([7, 8, 9, 10, 11]);
    f.close();
    await store.close();
  });

  it('takes just-committed events from memory, and reads exactly what a follower reading the outbox reads', async () => {
    const store = new Store(tempDir());
    const isA = (e: TernEvent) => e.tenant === 'a';
    const live = new OutboxFollower(store, 0, isA);
    expect(live.read(10).events).toEqual([]);
    const reads = vi.spyOn(store, 'events');
    let liveReads = 0;
    let n = 0;
    // commits of one to four events, other tenants' among them; reads in pieces, now and then a rewind
    for (let round = 0; round < 40; round++) {
      await store.transact((tx) => {
        for (let i = 0; i < 1 + (round % 4); i++) tx.event('delivered', { tenant: (n + i) % 3 ? 'a' : 'b', n: n + i });
      });
      n += 1 + (round % 4);
      // the same read by a follower at the same position that has been signalled nothing: all from the outbox
      const cold = new OutboxFollower(store, live.position, isA);
      const expected = cold.read(1 + (round % 3));
      cold.close();
      const before = reads.mock.calls.length;
      const got = live.read(1 + (round % 3));
      liveReads += reads.mock.calls.length - before;
      expect(got).toEqual(expected);
      if (round % 7 === 6 && got.events.length > 1) live.rewind(got.events[0]!.seq);
    }
    reads.mockRestore();
    // the live follower read the outbox far less often than once per read
    expect(liveReads).toBeLessThan(20); // one per read (40 or more) without the memory
    live.close();
    await store.close();
  });

  it('reports events pruned before it read them', async () => {
    const store = new Store(tempDir());
    for (let i = 1; i <= 5; i++) await store.transact((tx) => tx.event('delivered', { tenant: 'a', at: i }));
    await store.pruneEvents(4); // events 1-3
    const f = new OutboxFollower(store, 1, () => true);
    expect(f.read(10)).toMatchObject({ missing: 2, events: [{ seq: 4 }, { seq: 5 }] });
    // from the start (0) nothing counts as missing
    const g = new OutboxFollower(store, 0, () => true);
    expect(g.read(10).missing).toBe(0);
    f.close();
    g.close();
    await store.close();
  });
});

describe('event numbering', () => {
  it('never reuses a number after retention emptied the outbox and the node restarted (cursors stay valid)', async () => {
    const dir = tempDir();
    let store = new Store(dir);
    for (let i = 0; i < 3; i++) await store.transact((tx) => tx.event('delivered', { tenant: 'a' }));
    expect(await store.pruneEvents(Date.now() + 1)).toBe(3);
    await store.close();
    store = new Store(dir);
    expect(store.lastSeq).toBe(3);
    await store.transact((tx) => tx.event('delivered', { tenant: 'a' }));
    expect(store.events().map((e) => e.seq)).toEqual([4]);
    await store.close();
  });
});
