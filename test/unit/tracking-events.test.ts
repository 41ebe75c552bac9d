import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Store } from '../../src/core/store.js';
import { SuppressionList } from '../../src/bounce/suppression.js';
import { TrackingEvents } from '../../src/tracking/events.js';
import type { DecodedToken } from '../../src/tracking/tokens.js';
import { newMessageId } from '../../src/mta/spool.js';
import { tempDir } from '../support/node.js';

let store: Store;
let suppressions: SuppressionList;
let events: TrackingEvents;

beforeEach(() => {
  store = new Store(tempDir());
  suppressions = new SuppressionList(store, { softLimit: 5, softWindowMs: 86_400_000 });
  events = new TrackingEvents(store, suppressions, { flushMs: 20 });
});
afterEach(async () => {
  await events.close();
  await store.close();
});

const msgId = newMessageId();
const who = (rcptIndex: number) => ({ msgId, rcptIndex, rcpt: `r${rcptIndex}@example.org`, tenant: 'acme', campaign: 'spring', sentAt: 0 });
const open = (i: number): DecodedToken => ({ kind: 'open', ...who(i) });
const click = (i: number, link: number): DecodedToken => ({ kind: 'click', ...who(i), link, url: `https://example.com/${link}` });
const hit = (token: DecodedToken, machine = false) => ({ token, at: Date.now(), machine, reason: machine ? 'apple_mpp' : undefined, userAgent: 'ua', ip: '192.0.2.1' });

describe('tracking events', () => {
  it('are written together after a short wait, unique per recipient, link and machine/person, with totals', async () => {
    events.record(hit(open(0), true));
    events.record(hit(open(0)));
    events.record(hit(open(0)));
    events.record(hit(open(1)));
    events.record(hit(click(0, 3)));
    events.record(hit(click(0, 3)));
    events.record(hit(click(0, 4)));
    expect(store.events()).toHaveLength(0); // nothing yet: the group commit waits
    await new Promise((r) => setTimeout(r, 100));
    const written = store.events();
    expect(written.map((e) => [e.type, e.rcpt, e.link ?? null, e.machine, e.unique])).toEqual([
      ['opened', 'r0@example.org', null, true, true],
      ['opened', 'r0@example.org', null, false, true],
      ['opened', 'r0@example.org', null, false, false],
      ['opened', 'r1@example.org', null, false, true],
      ['clicked', 'r0@example.org', 3, false, true],
      ['clicked', 'r0@example.org', 3, false, false],
      ['clicked', 'r0@example.org', 4, false, true],
    ]);
    expect(written[4]).toMatchObject({ tenant: 'acme', campaign: 'spring', queue_id: msgId, url: 'https://example.com/3', user_agent: 'ua', ip: '192.0.2.1' });
    expect(written[0]).toMatchObject({ reason: 'apple_mpp' });
    // later hits are not unique any more, across commits
    events.record(hit(click(0, 3)));
    await events.flush();
    expect(store.events().at(-1)).toMatchObject({ type: 'clicked', link: 3, unique: false });
    const activity = events.activity(msgId).map((a) => [a.rcptIndex, a.kind, a.link, a.machine, a.tally.count]);
    expect(activity).toEqual([
      [0, 'click', 3, false, 3],
      [0, 'click', 4, false, 1],
      [0, 'open', null, false, 2],
      [0, 'open', null, true, 1],
      [1, 'open', null, false, 1],
    ]);
  });

  it('unsubscribe suppresses the address for the tenant and is durable when it returns', async () => {
    const token: DecodedToken = { kind: 'unsubscribe', ...who(2) };
    expect(await events.unsubscribe(token, { method: 'one-click', userAgent: 'Gmail', ip: '192.0.2.9' })).toBe(true);
    expect(suppressions.get('acme', 'R2@example.org')).toMatchObject({ reason: 'unsubscribe', detail: 'spring', queue_id: msgId });
    expect(suppressions.get('other', 'r2@example.org')).toBeUndefined();
    expect(await events.unsubscribe(token, { method: 'page', userAgent: 'x', ip: '192.0.2.9' })).toBe(false);
    expect(store.events().filter((e) => e.type === 'unsubscribed').map((e) => [e.method, e.unique])).toEqual([
      ['one-click', true],
      ['page', false],
    ]);
    expect(store.events().filter((e) => e.type === 'suppression_added')).toHaveLength(1);
  });

  it('forgets the state of old messages', async () => {
    const oldId = newMessageId(Date.now() - 10 * 86_400_000);
    events.record({ ...hit({ ...open(0), msgId: oldId }) });
    events.record(hit(open(0)));
    await events.flush();
    expect(await events.prune(Date.now() - 86_400_000)).toBe(1);
    expect(events.activity(oldId)).toEqual([]);
    expect(events.activity(msgId)).toHaveLength(1);
  });

  it('keeps memory bounded when the store cannot keep up', async () => {
    const small = new TrackingEvents(store, suppressions, { flushMs: 1000, maxBuffered: 3 });
    for (let i = 0; i < 5; i++) small.record(hit(open(i)));
    expect(small.dropped).toBe(2);
    await small.close();
    expect(store.events()).toHaveLength(3);
  });
});
