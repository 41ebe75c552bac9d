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
    const next = await spool.complete(due[0]!, [
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
    await spool.complete(due[1]!, [{ i: 1, result: 'failed', response: '550 no' }]);
    await spool.complete(next!, [{ i: 2, result: 'delivered', response: '250 ok' }]);
    expect(spool.body(msgId)).toBeUndefined(); // every recipient final: the body is gone
    expect(spool.scheduledCount()).toBe(0);
    await store.close();
  });
});
