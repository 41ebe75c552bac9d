/**
 * One slow destination must not starve the others: mail for a destination that never answers fills at most
 * its domain's share of the memory tier, and mail for other domains keeps flowing past it.
 */
import net from 'node:net';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { runLoad } from '../bench/loadgen.js';
import { startSink, type Sink } from '../bench/sink.js';
import { shapingFile, startTestNode } from './support/node.js';
import type { TernNode } from '../src/node.js';

let sink: Sink;
let tarpit: net.Server;
const held: net.Socket[] = [];
let node: TernNode;

beforeAll(async () => {
  sink = await startSink();
  // accepts connections and never says a word
  tarpit = net.createServer((socket) => held.push(socket.on('error', () => {})));
  await new Promise<void>((r) => tarpit.listen(0, '127.0.0.1', () => r()));
  node = await startTestNode({
    routes: [
      { domain: 'slow.tern.test', host: '127.0.0.1', port: (tarpit.address() as net.AddressInfo).port },
      { domain: '*.tern.test', host: '127.0.0.1', port: sink.port },
    ],
    delivery: { memory_queue_limit: 200 },
    shaping: { file: shapingFile({ default: { connect_timeout: '60s', connections: 5 } }) },
  });
});

afterAll(async () => {
  await node?.stop();
  for (const s of held) s.destroy();
  await new Promise((r) => tarpit.close(r));
  await sink?.close();
});

const send = (count: number, domain: string, prefix: string) =>
  runLoad({ host: '127.0.0.1', port: node.ports.submission, count, connections: 10, size: 300, auth: { user: 'tenant1', pass: 'secret-1' }, idPrefix: prefix, recipients: (n) => [`${prefix}${n}@${domain}`] });

it('delivers other domains while a destination that never answers has more due mail than memory holds', async () => {
  const slow = await send(600, 'slow.tern.test', 'slow');
  expect(slow.accepted).toBe(600);
  const fresh = await send(100, 'fast.tern.test', 'fast');
  expect(fresh.accepted).toBe(100);
  await sink.waitFor(() => fresh.acceptedIds.every((id) => sink.idCounts.get(id) === 1), 20_000);
  // the slow domain holds no more than its share (a quarter of the tier); the rest waits in the spool
  expect(node.scheduler.snapshot().inMemory).toBeLessThanOrEqual(200);
  expect(node.spool.scheduledCount()).toBeGreaterThanOrEqual(600);
});
