import { afterEach, expect, it } from 'vitest';
import { Store } from '../../src/core/store.js';
import { Spool } from '../../src/mta/spool.js';
import { tempDir } from '../support/node.js';

const stores: Store[] = [];
afterEach(async () => {
  for (const s of stores.splice(0)) await s.close();
});

it('prunes every finished message older than the cut, past old pending ones, batch after batch', async () => {
  const store = new Store(tempDir());
  stores.push(store);
  const spool = new Spool(store, { scheduleMs: [60_000], jitter: 0, maxAgeMs: 86_400_000 });
  const ids: string[] = [];
  for (let n = 0; n < 30; n++) {
    const { msgId, jobs } = await spool.accept({ tenant: 't', sender: 's@x.test', recipients: [`r${n}@x.test`], body: Buffer.from('Subject: x\r\n\r\nx\r\n'), messageId: `<${n}@x>`, listener: 'test' });
    ids.push(msgId);
    // the first ten stay queued (old mail still waiting); the rest are delivered
    if (n >= 10) await spool.complete(jobs[0]!, [{ i: 0, result: 'delivered', response: '250 ok' }]);
  }
  const removed = await spool.pruneFinished(Date.now() + 1, 4);
  expect(removed).toBe(20);
  expect(ids.filter((id) => spool.message(id)).length).toBe(10);
  expect(spool.recipientStates(ids[29]!)).toEqual([]);
  expect(spool.recipientStates(ids[0]!)).toHaveLength(1);
  // nothing newer than the cut goes
  expect(await spool.pruneFinished(0, 4)).toBe(0);
});
