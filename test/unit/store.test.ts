import path from 'node:path';
import { open } from 'lmdb';
import { describe, expect, it } from 'vitest';
import { Store } from '../../src/core/store.js';
import { Spool } from '../../src/mta/spool.js';
import { tempDir } from '../support/node.js';

const policy = { scheduleMs: [1000], jitter: 0, maxAgeMs: 60_000 };

describe('store and spool', () => {
  it('keeps event sequence numbers growing across a restart, and pruning never touches other entries', async () => {
    const dir = tempDir();
    let store = new Store(dir);
    await store.transact((tx) => {
      tx.event('a', { n: 1 });
      tx.event('b', { n: 2 });
    });
    expect(store.events().map((e) => [e.seq, e.type])).toEqual([[1, 'a'], [2, 'b']]);
    await store.close();
    store = new Store(dir);
    await store.transact((tx) => tx.event('c', { n: 3 }));
    expect(store.events().map((e) => e.seq)).toEqual([1, 2, 3]);
    expect(await store.pruneEvents(Date.now() + 1)).toBe(3);
    expect(store.events()).toEqual([]);
    // the store still reads and writes records after pruning everything
    await store.transact((tx) => tx.event('d', { n: 4, nested: { x: [1, 2] } }));
    expect(store.events()).toMatchObject([{ seq: 4, type: 'd', n: 4, nested: { x: [1, 2] } }]);
    await store.close();
  });

  it('stores a run of events that differ only in rcpt as one record, and reads them back one by one from any position', async () => {
    const dir = tempDir();
    const store = new Store(dir);
    const published: number[] = [];
    store.on('events', (es) => published.push(...es.map((e) => e.seq)));
    const shared = { queue_id: 'q1', tenant: 't', campaign: '-', attempts: 1, response: '451 4.3.2 later', next_at: 123 };
    await store.transact((tx) => {
      tx.event('accepted', { at: 1000, queue_id: 'q1', recipients: ['a@x.example', 'b@x.example', 'c@x.example', 'd@x.example'] });
      for (const rcpt of ['a@x.example', 'b@x.example', 'c@x.example']) tx.event('deferred', { at: 1000, ...shared, rcpt });
      tx.event('deferred', { at: 1000, ...shared, attempts: 2, rcpt: 'd@x.example' }); // differs in attempts: a record of its own
      tx.event('delivered', { at: 1000, queue_id: 'q1', rcpt: 'e@x.example', mx: undefined });
    });
    const all = store.events();
    expect(all.map((e) => [e.seq, e.type, e.rcpt ?? null])).toEqual([
      [1, 'accepted', null],
      [2, 'deferred', 'a@x.example'],
      [3, 'deferred', 'b@x.example'],
      [4, 'deferred', 'c@x.example'],
      [5, 'deferred', 'd@x.example'],
      [6, 'delivered', 'e@x.example'],
    ]);
    expect(all[2]).toEqual({ seq: 3, at: 1000, type: 'deferred', ...shared, rcpt: 'b@x.example' });
    expect(all[4]!.attempts).toBe(2);
    expect(published).toEqual([1, 2, 3, 4, 5, 6]);
    // from inside a run, and with a limit that ends inside one
    expect(store.events(2, 2).map((e) => e.seq)).toEqual([3, 4]);
    expect(store.events(0, 3).map((e) => e.seq)).toEqual([1, 2, 3]);
    expect(store.events(6)).toEqual([]);
    // four records hold six events; the numbers go on after a restart
    const raw = [...store.root.openDB({ name: 'events' }).getKeys({ start: 0 })].filter((k) => typeof k === 'number');
    expect(raw).toEqual([1, 4, 5, 6]);
    await store.close();
    const again = new Store(dir);
    expect(again.lastSeq).toBe(6);
    await again.transact((tx) => tx.event('x', {}));
    expect(again.events(5).map((e) => e.seq)).toEqual([6, 7]);
    expect(await again.pruneEvents(1001)).toBe(6);
    expect(again.events().map((e) => e.seq)).toEqual([7]);
    await again.close();
  });

  it('compresses large outbox records, and still reads the ones written before compression was turned on', async () => {
    const dir = tempDir();
    const recipients = Array.from({ length: 200 }, (_, i) => `user${i}@example.com`);
    // an outbox written without compression (as before it was turned on)
    const old = open({ path: path.join(dir, 'tern.lmdb'), maxDbs: 64 });
    await old.openDB({ name: 'events', sharedStructuresKey: Symbol.for('structures') }).put(1, { at: 1, type: 'accepted', queue_id: 'q0', recipients });
    await old.close();
    const store = new Store(dir);
    await store.transact((tx) => tx.event('accepted', { queue_id: 'q1', recipients }));
    expect(store.events().map((e) => [e.seq, e.queue_id, (e.recipients as string[]).length])).toEqual([[1, 'q0', 200], [2, 'q1', 200]]);
    const raw = store.root.openDB({ name: 'events', encoding: 'binary' });
    expect((raw.getBinary(1) as Buffer).length).toBeGreaterThan(3500);
    expect((raw.getBinary(2) as Buffer).length).toBeLessThan(2000); // 200 addresses at one domain: LZ4 makes it much smaller
    await store.close();
  });

  it('stores the reply that several recipients got in one attempt once, and shows it in each history', async () => {
    const store = new Store(tempDir());
    const spool = new Spool(store, policy);
    const recipients = ['a@one.example', 'b@one.example', 'c@one.example'];
    const { msgId, jobs } = await spool.accept({ tenant: 't', sender: 's@example.com', recipients, body: Buffer.from('x\r\n'), messageId: '<m@x>', listener: 'test' });
    const next = await spool.complete(jobs[0]!, [
      { i: 0, result: 'deferred', response: '451 4.3.2 busy', mx: 'mx.one.example', source: 'ip1' },
      { i: 1, result: 'deferred', response: '451 4.3.2 busy', mx: 'mx.one.example', source: 'ip1' },
      { i: 2, result: 'failed', response: '550 5.1.1 no such user', mx: 'mx.one.example', source: 'ip1' },
    ]);
    const raw = store.db<{ history: Array<Record<string, unknown>>; last?: string }, [string, number]>('spool.recipients');
    expect(raw.get([msgId, 0])!.history).toEqual([{ at: expect.any(Number), type: 'deferred', attempt: 1, shared: true }]);
    expect(raw.get([msgId, 2])!.history[0]).toMatchObject({ response: '550 5.1.1 no such user' }); // its own reply stays with it
    for (const i of [0, 1])
      expect(spool.recipientState(msgId, i)).toMatchObject({ last: '451 4.3.2 busy', history: [{ type: 'deferred', response: '451 4.3.2 busy', mx: 'mx.one.example', source: 'ip1' }] });
    expect(spool.recipientState(msgId, 0)!.history![0]).not.toHaveProperty('shared');
    // the next attempt delivers both in one transaction: a second shared record
    await spool.complete(next!, [0, 1].map((i) => ({ i, result: 'delivered' as const, response: '250 2.0.0 queued as X', mx: 'mx.one.example', source: 'ip1' })));
    expect(spool.recipientStates(msgId).map((r) => [r.status, r.last, r.history!.map((h) => h.response)])).toEqual([
      ['delivered', '250 2.0.0 queued as X', ['451 4.3.2 busy', '250 2.0.0 queued as X']],
      ['delivered', '250 2.0.0 queued as X', ['451 4.3.2 busy', '250 2.0.0 queued as X']],
      ['failed', '550 5.1.1 no such user', ['550 5.1.1 no such user']],
    ]);
    const attempts = store.db('spool.attempts');
    expect([...attempts.getKeys({ start: [msgId] })].filter(Array.isArray)).toHaveLength(2);
    expect(await spool.pruneFinished(Date.now() + 1)).toBe(1);
    expect([...attempts.getKeys({ start: [msgId] })].filter(Array.isArray)).toHaveLength(0);
    await store.close();
  });

  it('rebuilds the schedule from its index after a restart, and records per-recipient results', async () => {
    const dir = tempDir();
    let store = new Store(dir);
    let spool = new Spool(store, policy);
    const { msgId } = await spool.accept({ tenant: 't', sender: 's@example.com', recipients: ['a@one.example', 'b@two.example', 'c@one.example'], body: Buffer.from('x\r\n'), messageId: '<m@x>', listener: 'test' });
    await store.close();
    store = new Store(dir);
    spool = new Spool(store, policy);
    const due = [...spool.due(null, Date.now())];
    expect(due.map((j) => [j.msgId, j.domain, j.rcpts.map((r) => r.to)])).toEqual([
      [msgId, 'one.example', ['a@one.example', 'c@one.example']],
      [msgId, 'two.example', ['b@two.example']],
    ]);
    expect(spool.scheduledCount()).toBe(2);
    // a deferral moves the entry to its retry time and counts the attempt
    let next = await spool.complete(due[0]!, [
      { i: 0, result: 'delivered', response: '250 ok' },
      { i: 2, result: 'deferred', response: '451 later' },
    ]);
    expect(next!.rcpts).toEqual([{ i: 2, to: 'c@one.example', attempts: 1 }]);
    expect(spool.recipientStates(msgId).map((r) => [r.to, r.status, r.attempts])).toEqual([
      ['a@one.example', 'delivered', 1],
      ['b@two.example', 'queued', 0],
      ['c@one.example', 'queued', 1],
    ]);
    expect(spool.message(msgId)!.pending).toBe(2);
    // what is derived is not stored, and reads back the same: queue, time of the change, last reply
    const c = spool.recipientState(msgId, 2)!;
    expect(c).toMatchObject({ queue: 't:-@one.example', last: '451 later', nextAt: next!.key[0] });
    expect(c.updatedAt).toBe(c.history!.at(-1)!.at);
    const raw = store.db<Record<string, unknown>, [string, number]>('spool.recipients').get([msgId, 2])!;
    expect(Object.keys(raw).sort()).toEqual(['attempts', 'history', 'nextAt', 'status', 'to']);
    expect(spool.recipientState(msgId, 1)).toMatchObject({ queue: 't:-@two.example', last: null, status: 'queued' });
    // an operator's "retry now" is a step without a reply: the last reply stays the 451
    const [moved] = await spool.reschedule([next!], Date.now());
    expect(spool.recipientState(msgId, 2)).toMatchObject({ last: '451 later', history: [{ type: 'deferred' }, { type: 'retried', by: 'operator' }] });
    next = moved!;
    await spool.complete(due[1]!, [{ i: 1, result: 'failed', response: '550 no' }]);
    await spool.complete(next!, [{ i: 2, result: 'delivered', response: '250 ok' }]);
    expect(spool.body(msgId)).toBeUndefined(); // every recipient final: the body is gone
    expect(spool.scheduledCount()).toBe(0);
    await store.close();
  });
});
