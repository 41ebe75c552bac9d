/** Deferrals are retried on the schedule, permanent failures never are, and old messages expire. */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSink, idFraction, type Sink } from '../bench/sink.js';
import { runLoad } from '../bench/loadgen.js';
import { startTestNode } from './support/node.js';
import type { TernNode } from '../src/node.js';
import type { TernEvent } from '../src/core/store.js';

let sink: Sink;
let node: TernNode;
const attemptsByRcpt = new Map<string, number>();

beforeAll(async () => {
  sink = await startSink({
    tempfailFraction: 0.3,
    failMode: 'first-attempt',
    decide: (ctx) => {
      if (ctx.stage !== 'rcpt') return undefined;
      const rcpt = ctx.to!.at(-1)!;
      attemptsByRcpt.set(rcpt, (attemptsByRcpt.get(rcpt) ?? 0) + 1);
      if (rcpt.startsWith('perm')) return '550 5.1.1 No such user';
      if (rcpt.startsWith('busy')) return '452 4.2.2 Mailbox full, try later';
      return undefined;
    },
  });
  node = await startTestNode({
    routes: [{ domain: '*.tern.test', host: '127.0.0.1', port: sink.port }],
    retry: { schedule: ['1s'], jitter: 0, max_age: '4s' },
  });
});

afterAll(async () => {
  await node?.stop();
  await sink?.close();
});

const events = (pred: (e: TernEvent) => boolean) => node.store.events(0, 1_000_000).filter(pred);

async function until(pred: () => boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('retries', () => {
  it('retries messages a sink answered 451 on the schedule, and delivers each exactly once', async () => {
    const load = await runLoad({ host: '127.0.0.1', port: node.ports.submission, count: 60, connections: 4, auth: { user: 'tenant1', pass: 'secret-1' }, recipients: (n) => [`u${n}@sink.tern.test`], idPrefix: 'retry' });
    expect(load.accepted).toBe(60);
    const expectedFailures = load.acceptedIds.filter((id) => idFraction(id) < 0.3);
    expect(expectedFailures.length).toBeGreaterThan(5); // the sample really exercises retries
    await sink.waitFor(() => load.acceptedIds.every((id) => sink.idCounts.get(id) === 1), 20_000);
    await new Promise((r) => setTimeout(r, 500));
    for (const id of load.acceptedIds) expect(sink.idCounts.get(id)).toBe(1);

    const deferred = events((e) => e.type === 'deferred' && String(e.rcpt).startsWith('u'));
    expect(deferred).toHaveLength(expectedFailures.length);
    for (const d of deferred) {
      expect(d.response).toMatch(/^451/);
      expect(Number(d.next_at) - d.at).toBeGreaterThanOrEqual(990); // schedule: 1s, no jitter
      expect(Number(d.next_at) - d.at).toBeLessThanOrEqual(1010);
      const delivered = events((e) => e.type === 'delivered' && e.queue_id === d.queue_id)[0]!;
      expect(delivered.attempts).toBe(2);
      expect(delivered.at).toBeGreaterThanOrEqual(Number(d.next_at));
    }
  });

  it('never retries a recipient refused with 5xx', async () => {
    await runLoad({ host: '127.0.0.1', port: node.ports.submission, count: 1, auth: { user: 'tenant1', pass: 'secret-1' }, recipients: () => ['perm1@sink.tern.test'], idPrefix: 'perm' });
    await until(() => events((e) => e.type === 'failed' && e.rcpt === 'perm1@sink.tern.test').length === 1, 10_000, 'failed event');
    await new Promise((r) => setTimeout(r, 2500)); // more than two retry intervals
    expect(attemptsByRcpt.get('perm1@sink.tern.test')).toBe(1);
    expect(events((e) => e.rcpt === 'perm1@sink.tern.test' && e.type === 'deferred')).toHaveLength(0);
  });

  it('expires a recipient still deferred at max_age, with an event, and frees the message', async () => {
    await runLoad({ host: '127.0.0.1', port: node.ports.submission, count: 1, auth: { user: 'tenant1', pass: 'secret-1' }, recipients: () => ['busy1@sink.tern.test'], idPrefix: 'busy' });
    await until(() => events((e) => e.type === 'expired' && e.rcpt === 'busy1@sink.tern.test').length === 1, 15_000, 'expired event');
    const history = events((e) => e.rcpt === 'busy1@sink.tern.test').map((e) => e.type);
    expect(history.at(-1)).toBe('expired');
    expect(history.filter((t) => t === 'deferred').length).toBeGreaterThanOrEqual(2);
    const expired = events((e) => e.type === 'expired' && e.rcpt === 'busy1@sink.tern.test')[0]!;
    const accepted = events((e) => e.type === 'accepted' && e.queue_id === expired.queue_id)[0]!;
    expect(accepted.at).toBe(node.spool.message(String(expired.queue_id))!.createdAt);
    expect(expired.at - accepted.at).toBeGreaterThanOrEqual(4000); // max_age counts from acceptance
    expect(node.spool.body(String(expired.queue_id))).toBeUndefined();
    expect(node.spool.recipientStates(String(expired.queue_id))[0]!.status).toBe('expired');
  });
});
