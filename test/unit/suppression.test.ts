import { afterEach, expect, it } from 'vitest';
import { Store } from '../../src/core/store.js';
import { SuppressionList } from '../../src/bounce/suppression.js';
import { tempDir } from '../support/node.js';

const stores: Store[] = [];
afterEach(async () => {
  for (const s of stores.splice(0)) await s.close();
});
const setup = () => {
  const store = new Store(tempDir());
  stores.push(store);
  return { store, list: new SuppressionList(store, { softLimit: 3, softWindowMs: 1000 }) };
};

it('suppresses per tenant, case-insensitively, keeping the first cause, with an event', async () => {
  const { store, list } = setup();
  expect(await list.add('t1', 'Bob@Example.com', { reason: 'hard_bounce', detail: 'userunknown', queue_id: 'q1' })).toBe(true);
  expect(await list.add('t1', 'bob@example.com', { reason: 'complaint', detail: 'abuse', queue_id: 'q2' })).toBe(false);
  expect(list.get('t1', 'BOB@example.COM')).toMatchObject({ reason: 'hard_bounce', detail: 'userunknown', queue_id: 'q1' });
  expect(list.get('t2', 'bob@example.com')).toBeUndefined();
  const events = store.events(0, 10);
  expect(events).toHaveLength(1);
  expect(events[0]).toMatchObject({ type: 'suppression_added', tenant: 't1', rcpt: 'bob@example.com', reason: 'hard_bounce' });
});

it('suppresses after the soft bounce limit within the window only', async () => {
  const { store, list } = setup();
  const soft = (at: number) => store.transact((tx) => list.softBounceIn(tx, 't1', 'a@x.test', 'mailboxfull', null, at));
  expect(await soft(0)).toBe(false);
  expect(await soft(500)).toBe(false);
  expect(await soft(1600)).toBe(false); // both earlier ones fell out of the window
  expect(await soft(1700)).toBe(false);
  expect(list.get('t1', 'a@x.test')).toBeUndefined();
  expect(await soft(1800)).toBe(true);
  expect(list.get('t1', 'a@x.test')).toMatchObject({ reason: 'soft_bounces', detail: 'mailboxfull' });
});

it('lists a tenant page by page and removes entries', async () => {
  const { list } = setup();
  for (const a of ['c@x.test', 'a@x.test', 'b@x.test']) await list.add('t1', a, { reason: 'manual', detail: null, queue_id: null });
  await list.add('t2', 'z@x.test', { reason: 'manual', detail: null, queue_id: null });
  const first = list.list('t1', null, 2);
  expect(first.map((e) => e.address)).toEqual(['a@x.test', 'b@x.test']);
  expect(list.list('t1', first[1]!.address, 2).map((e) => e.address)).toEqual(['c@x.test']);
  expect(await list.remove('t1', 'A@x.test')).toBe(true);
  expect(await list.remove('t1', 'a@x.test')).toBe(false);
  expect(list.list('t1').map((e) => e.address)).toEqual(['b@x.test', 'c@x.test']);
});
