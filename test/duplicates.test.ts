/**
 * A message is delivered once per recipient when nothing fails: the scanner must not take a message whose
 * acceptance is still being made durable (it used to, and when that message finished before the acceptance
 * handed it over, it was taken and sent a second time).
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import { runLoad } from '../bench/loadgen.js';
import { startSink, type Sink } from '../bench/sink.js';
import { startTestNode } from './support/node.js';
import type { TernNode } from '../src/node.js';

let sink: Sink;
let node: TernNode;

beforeAll(async () => {
  sink = await startSink();
  // a small memory tier keeps the scanner busy while messages are being accepted
  node = await startTestNode({ routes: [{ domain: '*.tern.test', host: '127.0.0.1', port: sink.port }], delivery: { memory_queue_limit: 100 } });
});

afterAll(async () => {
  await node?.stop();
  await sink?.close();
});

it('sends each recipient of many concurrent two-domain messages exactly once', async () => {
  const count = 1500;
  const load = await runLoad({
    host: '127.0.0.1',
    port: node.ports.submission,
    count,
    connections: 30,
    size: 300,
    auth: { user: 'tenant1', pass: 'secret-1' },
    idPrefix: 'dup',
    recipients: (n) => [`a${n}@d${n % 7}.one.tern.test`, `b${n}@d${n % 5}.two.tern.test`],
  });
  expect(load.accepted).toBe(count);
  await sink.waitFor(() => load.acceptedIds.every((id) => (sink.idCounts.get(id) ?? 0) >= 2), 60_000);
  await new Promise((r) => setTimeout(r, 500));
  const twice = load.acceptedIds.filter((id) => sink.idCounts.get(id) !== 2);
  expect(twice).toEqual([]);
  expect(node.scheduler.snapshot().queuedRecipients).toBe(0);
  expect(node.spool.scheduledCount()).toBe(0);
});
