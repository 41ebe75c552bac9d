/** The pure and spool-level parts of queue administration: queue counters, hold matching and persistence, operator changes. */
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { Store } from '../../src/core/store.js';
import { Spool, HISTORY_LIMIT } from '../../src/mta/spool.js';
import { Holds, selects } from '../../src/mta/holds.js';
import { ScheduledQueues, SlottedMin } from '../../src/mta/queue-stats.js';
import { tempDir } from '../support/node.js';

const policy = { scheduleMs: [1000], jitter: 0, maxAgeMs: 60_000 };
const accept = (spool: Spool, recipients: string[], campaign = 'c1') =>
  spool.accept({ tenant: 't', campaign, sender: 's@example.com', recipients, body: Buffer.from('x\r\n'), messageId: '<m@x>', listener: 'test' });

describe('SlottedMin', () => {
  it('answers the earliest slot of whatever is left, whatever the order of adds and removes', () => {
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.boolean(), fc.integer({ min: 0, max: 100_000 })), { maxLength: 200 }), (ops) => {
        const m = new SlottedMin(1000);
        const held: number[] = [];
        for (const [add, t] of ops) {
          if (add || !held.length) {
            m.add(t);
            held.push(t);
          } else {
            const gone = held.splice(t % held.length, 1)[0]!;
            m.remove(gone);
          }
          const expected = held.length ? Math.floor(Math.min(...held) / 1000) * 1000 : null;
          expect(m.earliest()).toBe(expected);
        }
      }),
    );
  });
});

describe('ScheduledQueues', () => {
  it('counts recipients and messages per tenant:campaign@domain and forgets empty queues', () => {
    const q = new ScheduledQueues();
    const mail = (domain: string, n: number, due: number) => ({ key: [due] as [number], tenant: 't', campaign: 'c', domain, createdAt: 60_000, rcpts: Array(n).fill(0) });
    const a = mail('a.example', 2, 10_000);
    const b = mail('a.example', 1, 25_000);
    q.add(a);
    q.add(b);
    q.add(mail('b.example', 5, 0));
    expect(q.recipients).toBe(8);
    expect(q.list((x) => x.domain === 'a.example')).toEqual([{ name: 't:c@a.example', tenant: 't', campaign: 'c', domain: 'a.example', recipients: 3, messages: 2, oldestCreatedAt: 60_000, nextDueAt: 10_000 }]);
    q.remove(a);
    expect(q.list((x) => x.domain === 'a.example')[0]).toMatchObject({ recipients: 1, nextDueAt: 20_000 });
    q.remove(b);
    expect(q.list().map((x) => x.name)).toEqual(['t:c@b.example']);
  });
});

describe('holds', () => {
  it('select by every part they name', () => {
    const mail = { tenant: 'acme', campaign: 'spring', domain: 'example.com' };
    expect(selects({ domain: 'example.com' }, mail)).toBe(true);
    expect(selects({ tenant: 'acme', campaign: 'spring' }, mail)).toBe(true);
    expect(selects({ tenant: 'acme', domain: 'example.net' }, mail)).toBe(false);
    expect(selects({ campaign: 'summer' }, mail)).toBe(false);
  });

  it('are kept across a restart, block only what they select, and end on their own with an event', async () => {
    const dir = tempDir();
    let store = new Store(dir);
    let holds = new Holds(store);
    const now = Date.now();
    const forever = await holds.add({ domain: 'example.com' }, 'complaints', null, now);
    const timed = await holds.add({ tenant: 'acme', source: 'ip1' }, 'blocklisted', 1000, now + 1);
    await store.close();
    store = new Store(dir);
    holds = new Holds(store);
    expect(holds.list(now).map((h) => h.id)).toEqual([forever.id, timed.id]);
    const mail = { tenant: 'acme', campaign: '-', domain: 'example.com' };
    expect(holds.blocking(mail, undefined, now)?.id).toBe(forever.id);
    expect(holds.blocking({ ...mail, domain: 'example.net' }, undefined, now)).toBeUndefined(); // a source hold does not hold the mail itself
    expect(holds.blocking({ ...mail, domain: 'example.net' }, 'ip1', now)?.id).toBe(timed.id);
    expect(holds.blocking({ ...mail, domain: 'example.net' }, 'ip2', now)).toBeUndefined();
    expect(holds.blocking({ ...mail, domain: 'example.net' }, 'ip1', now + 1001)).toBeUndefined(); // over at `until`
    expect(holds.nextExpiry()).toBe(now + 1001);
    expect((await holds.expire(now + 1001)).map((h) => h.id)).toEqual([timed.id]);
    expect((await holds.remove([forever.id])).map((h) => h.id)).toEqual([forever.id]);
    expect(holds.list()).toEqual([]);
    expect(store.events().map((e) => [e.type, e.hold, e.expired ?? e.by ?? null])).toEqual([
      ['queue_suspended', forever.id, null],
      ['queue_suspended', timed.id, null],
      ['queue_resumed', timed.id, true],
      ['queue_resumed', forever.id, 'operator'],
    ]);
    await store.close();
  });
});

describe('spool: operator changes and history', () => {
  it('fails without counting an attempt, reschedules keeping attempts, finds a message\'s entries, and caps history', async () => {
    const store = new Store(tempDir());
    const spool = new Spool(store, { ...policy, maxAgeMs: 3_600_000 });
    const { msgId } = await accept(spool, ['a@one.example', 'b@two.example', 'c@one.example']);
    expect(spool.queues.recipients).toBe(3);
    let [one, two] = [...spool.due(null, Date.now())];
    // twelve deferrals of one.example: history keeps the last HISTORY_LIMIT, attempts count them all
    for (let n = 0; n < 12; n++) one = (await spool.complete(one!, one!.rcpts.map((r) => ({ i: r.i, result: 'deferred' as const, response: `451 try ${n}` }))))!;
    const a = spool.recipientStates(msgId)[0]!;
    expect(a.attempts).toBe(12);
    expect(a.history).toHaveLength(HISTORY_LIMIT);
    expect(a.history!.at(-1)).toMatchObject({ type: 'deferred', attempt: 12, response: '451 try 11' });
    expect(spool.queues.list((q) => q.domain === 'one.example')[0]).toMatchObject({ recipients: 2, messages: 1 });

    // the message's entries, found from its recipient records
    expect(spool.jobsOf(msgId).map((j) => j.key).sort()).toEqual([one!.key, two!.key].sort());
    const now = Date.now();
    const [moved] = await spool.reschedule([one!], now);
    expect(moved!.key[0]).toBe(now);
    expect(moved!.rcpts.map((r) => r.attempts)).toEqual([12, 12]);
    expect(spool.recipientStates(msgId)[0]!).toMatchObject({ nextAt: now, attempts: 12 });
    expect(spool.recipientStates(msgId)[0]!.history!.at(-1)).toMatchObject({ type: 'retried', by: 'operator', attempt: 12 });
    expect(spool.jobsOf(msgId).map((j) => j.key[0])).toContain(now);

    await spool.fail([moved!, two!], '554 5.0.0 Failed by operator: test');
    expect(spool.recipientStates(msgId).map((r) => [r.status, r.attempts])).toEqual([['failed', 12], ['failed', 0], ['failed', 12]]);
    expect(spool.message(msgId)!.pending).toBe(0);
    expect(spool.body(msgId)).toBeUndefined();
    expect(spool.scheduledCount()).toBe(0);
    expect(spool.queues.recipients).toBe(0);
    expect(store.events().filter((e) => e.type === 'failed').map((e) => [e.rcpt, e.attempts, e.by])).toEqual([
      ['a@one.example', 12, 'operator'],
      ['c@one.example', 12, 'operator'],
      ['b@two.example', 0, 'operator'],
    ]);
    await store.close();
  });

  it('rebuilds the queue counters from the schedule index on open', async () => {
    const dir = tempDir();
    let store = new Store(dir);
    await accept(new Spool(store, policy), ['a@one.example', 'b@one.example', 'c@two.example'], 'x');
    await store.close();
    store = new Store(dir);
    const spool = new Spool(store, policy);
    expect(spool.queues.list().map((q) => [q.name, q.recipients])).toEqual([['t:x@one.example', 2], ['t:x@two.example', 1]]);
    await store.close();
  });
});
