/**
 * Adaptive backoff over real sockets: a sink that answers 421 "try again later" to one egress source
 * suspends that source → site; the other source carries the mail; the suspension ends on its own.
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import { runLoad } from '../bench/loadgen.js';
import { startSink, type Sink } from '../bench/sink.js';
import { shapingFile, startTestNode } from './support/node.js';
import type { TernNode } from '../src/node.js';

const TOKEN = 'backoff-test-operator-token-0123';
let sink: Sink;
let node: TernNode;
let refuseSourceTwo = true;

beforeAll(async () => {
  sink = await startSink({
    decide: (ctx) => (ctx.stage === 'mail' && refuseSourceTwo && ctx.remoteAddress === '127.0.0.2' ? '421 4.7.0 Try again later, closing connection.' : undefined),
  });
  node = await startTestNode({
    routes: [{ domain: '*.tern.test', host: '127.0.0.1', port: sink.port }],
    pools: { default: { sources: [{ name: 'ip2', address: '127.0.0.2', ehlo: 'ip2.tern.test' }, { name: 'ip3', address: '127.0.0.3', ehlo: 'ip3.tern.test' }] } },
    shaping: { file: shapingFile({ default: { connections: 2 } }) },
    control: { admin_token: TOKEN },
    retry: { schedule: ['1s'] },
  });
  // replace the shipped 10-minute suspension by a 5-second one (same pattern, same threshold)
  const file = node.config.shapingFile;
  const YAML = (await import('yaml')).default;
  const fs = await import('node:fs');
  const doc = YAML.parse(fs.readFileSync(file, 'utf8'));
  doc.rules = [{ name: 'try-again-later', reply: '^421[ -]', threshold: '3/5min', action: 'suspend', duration: '5s', scope: 'source' }];
  fs.writeFileSync(file, YAML.stringify(doc));
  expect(node.reloadShaping().ok).toBe(true);
});

afterAll(async () => {
  await node?.stop();
  await sink?.close();
});

const waitForAction = async () => {
  const until = Date.now() + 10_000;
  for (;;) {
    const actions = await backoff();
    if (actions.length) return actions;
    if (Date.now() > until) throw new Error('no backoff action started');
    await new Promise((r) => setTimeout(r, 50));
  }
};

const backoff = async () => {
  const res = await fetch(`http://127.0.0.1:${node.ports.control}/api/v1/backoff`, { headers: { authorization: `Bearer ${TOKEN}` } });
  return ((await res.json()) as { actions: Array<{ id: string; rule: string; source: string; site: string; cause: string; until: number }> }).actions;
};

it('suspends the refused source, delivers through the other, and recovers on its own', async () => {
  const load = await runLoad({ host: '127.0.0.1', port: node.ports.submission, count: 40, connections: 4, size: 500, auth: { user: 'tenant1', pass: 'secret-1' }, idPrefix: 'bo' });
  expect(load.accepted).toBe(40);
  const actions = await waitForAction();
  await sink.waitFor(() => load.acceptedIds.every((id) => sink.idCounts.get(id) === 1), 20_000);
  // everything went out through ip3; ip2 only ever got 421s
  expect(sink.messages.every((m) => m.remoteAddress === '127.0.0.3')).toBe(true);
  expect(actions).toHaveLength(1);
  expect(actions[0]).toMatchObject({ rule: 'try-again-later', source: 'ip2', site: `route:127.0.0.1:${sink.port}` });
  expect(actions[0]!.cause).toMatch(/^421 4\.7\.0 Try again later/);

  // the destination is happy again; once the suspension ends, ip2 is used again without anyone clearing it
  refuseSourceTwo = false;
  const until = Date.now() + 10_000;
  while ((await backoff()).length) {
    if (Date.now() > until) throw new Error('the suspension did not end on its own');
    await new Promise((r) => setTimeout(r, 200));
  }
  const more = await runLoad({ host: '127.0.0.1', port: node.ports.submission, count: 20, connections: 4, size: 500, auth: { user: 'tenant1', pass: 'secret-1' }, idPrefix: 'bo2' });
  await sink.waitFor(() => more.acceptedIds.every((id) => sink.idCounts.get(id) === 1), 20_000);
  const again = sink.messages.filter((m) => m.id && more.acceptedIds.includes(m.id));
  expect(again.some((m) => m.remoteAddress === '127.0.0.2')).toBe(true);
});

it('lets the operator end a suspension early, and 404s an unknown one', async () => {
  refuseSourceTwo = true;
  await runLoad({ host: '127.0.0.1', port: node.ports.submission, count: 20, connections: 4, size: 500, auth: { user: 'tenant1', pass: 'secret-1' }, idPrefix: 'bo3' });
  const [action] = await waitForAction();
  expect(action).toBeDefined();
  const del = await fetch(`http://127.0.0.1:${node.ports.control}/api/v1/backoff/${action!.id}`, { method: 'DELETE', headers: { authorization: `Bearer ${TOKEN}` } });
  expect(del.status).toBe(204);
  expect(await backoff()).toEqual([]);
  const missing = await fetch(`http://127.0.0.1:${node.ports.control}/api/v1/backoff/nope`, { method: 'DELETE', headers: { authorization: `Bearer ${TOKEN}` } });
  expect(missing.status).toBe(404);
});
