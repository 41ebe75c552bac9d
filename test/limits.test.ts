/** Reception limits: connections per client address, idle sessions, clients that trickle their DATA. */
import { afterAll, beforeAll, expect, it } from 'vitest';
import { startTestNode } from './support/node.js';
import { rawSmtp } from './support/smtp.js';
import type { TernNode } from '../src/node.js';

let node: TernNode;

beforeAll(async () => {
  node = await startTestNode({ listeners: { submission: { max_connections_per_ip: 2, idle_timeout: '1s', data_timeout: '1500ms' } } });
});
afterAll(async () => {
  await node?.stop();
});

it('refuses a third concurrent connection from one address with 421, and accepts again once one closes', async () => {
  const a = await rawSmtp(node.ports.submission, { localAddress: '127.0.0.21' });
  const b = await rawSmtp(node.ports.submission, { localAddress: '127.0.0.21' });
  expect(a.greeting).toMatch(/^220/);
  expect(b.greeting).toMatch(/^220/);
  const c = await rawSmtp(node.ports.submission, { localAddress: '127.0.0.21' });
  expect(c.greeting).toMatch(/^421 4\.7\.0 Too many connections/);
  await c.closed;
  // another address is not affected
  const other = await rawSmtp(node.ports.submission, { localAddress: '127.0.0.22' });
  expect(other.greeting).toMatch(/^220/);
  a.close();
  await a.closed;
  await new Promise((r) => setTimeout(r, 100));
  const d = await rawSmtp(node.ports.submission, { localAddress: '127.0.0.21' });
  expect(d.greeting).toMatch(/^220/);
  for (const s of [b, other, d]) s.close();
});

it('closes an idle session', async () => {
  const s = await rawSmtp(node.ports.submission, { localAddress: '127.0.0.23' });
  await s.cmd('EHLO idle.example');
  const started = Date.now();
  await s.closed;
  expect(Date.now() - started).toBeLessThan(5000);
});

it('drops a client that trickles its message past data_timeout, and stores nothing', async () => {
  const s = await rawSmtp(node.ports.submission, { localAddress: '127.0.0.24' });
  await s.cmd('EHLO slow.example');
  await s.cmd(`AUTH PLAIN ${Buffer.from('\0tenant1\0secret-1').toString('base64')}`);
  await s.cmd('MAIL FROM:<a@sender.tern.test>');
  await s.cmd('RCPT TO:<b@sink.tern.test>');
  expect(await s.cmd('DATA')).toMatch(/^354/);
  s.write('From: a@sender.tern.test\r\n');
  // one byte every 300 ms keeps the socket from being idle, but the message never ends
  let closed = false;
  void s.closed.then(() => (closed = true));
  for (let i = 0; i < 20 && !closed; i++) {
    s.write('x');
    await new Promise((r) => setTimeout(r, 300));
  }
  expect(closed).toBe(true);
  expect(node.store.events().filter((e) => e.type === 'accepted')).toHaveLength(0);
});
