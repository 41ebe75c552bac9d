/** Outbound TLS and `routes`: relaying through an upstream provider with AUTH and required TLS. */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import nodemailer from 'nodemailer';
import { SMTPServer } from 'smtp-server';
import { generate } from 'selfsigned';
import { startSink, type Sink } from '../bench/sink.js';
import { startTestNode } from './support/node.js';
import type { TernNode } from '../src/node.js';

let tlsSink: Sink;
let plainSink: Sink;
let upstream: SMTPServer;
let upstreamPort: number;
const upstreamSeen: Array<{ user: string; secure: boolean; rcpt: string[] }> = [];
let node: TernNode;

beforeAll(async () => {
  const pems = await generate([{ name: 'commonName', value: 'upstream.tern.test' }], { keySize: 2048, algorithm: 'sha256' });
  tlsSink = await startSink({ tls: { key: pems.private, cert: pems.cert } });
  plainSink = await startSink();
  upstream = new SMTPServer({
    key: pems.private,
    cert: pems.cert,
    authMethods: ['PLAIN', 'LOGIN'],
    logger: false,
    onAuth: (auth, _s, cb) => (auth.username === 'relay-user' && auth.password === 'relay-pass' ? cb(null, { user: auth.username }) : cb(new Error('bad credentials'))),
    onData: (stream, session, cb) => {
      stream.resume();
      stream.on('end', () => {
        upstreamSeen.push({ user: String(session.user), secure: session.secure, rcpt: session.envelope.rcptTo.map((r) => r.address) });
        cb();
      });
    },
  });
  await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', r));
  upstreamPort = (upstream.server.address() as { port: number }).port;
  node = await startTestNode({
    routes: [
      { domain: 'tls.tern.test', host: '127.0.0.1', port: tlsSink.port },
      { domain: 'must-tls.tern.test', host: '127.0.0.1', port: plainSink.port, tls: 'required' },
      { domain: '*.provider.tern.test', host: '127.0.0.1', port: upstreamPort, auth: { user: 'relay-user', pass: 'relay-pass' }, tls: 'opportunistic' },
    ],
    retry: { schedule: ['1h'] },
  });
});

afterAll(async () => {
  await node?.stop();
  await tlsSink?.close();
  await plainSink?.close();
  await new Promise<void>((r) => upstream.close(() => r()));
});

const send = (to: string, id: string) =>
  nodemailer
    .createTransport({ host: '127.0.0.1', port: node.ports.submission, auth: { user: 'tenant1', pass: 'secret-1' }, ignoreTLS: true })
    .sendMail({ from: 'a@sender.tern.test', to, text: 'x', messageId: id });

describe('outbound TLS', () => {
  it('uses STARTTLS when the receiving server offers it (an unverifiable certificate does not stop opportunistic TLS)', async () => {
    await send('x@tls.tern.test', '<tls-out@x>');
    await tlsSink.waitFor(() => tlsSink.idCounts.get('<tls-out@x>') === 1, 15_000);
    expect(tlsSink.messages.find((m) => m.id === '<tls-out@x>')!.tls).toBe(true);
  });

  it('defers rather than sending in clear when a route requires TLS and the server has no STARTTLS', async () => {
    await send('x@must-tls.tern.test', '<must-tls@x>');
    const until = Date.now() + 15_000;
    let deferred;
    while (!(deferred = node.store.events(0, 100_000).find((e) => e.type !== 'accepted' && e.rcpt === 'x@must-tls.tern.test'))) {
      if (Date.now() > until) throw new Error('no deferred event');
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(plainSink.idCounts.has('<must-tls@x>')).toBe(false);
    expect(deferred.type, JSON.stringify(deferred)).toBe('deferred');
    expect(String(deferred.response)).toMatch(/STARTTLS|TLS/i);
  });
});

describe('routes through an upstream provider', () => {
  it('authenticates to the upstream and delivers there instead of looking up MX', async () => {
    await send('someone@eu.provider.tern.test', '<upstream-1@x>');
    const until = Date.now() + 15_000;
    while (!upstreamSeen.some((s) => s.rcpt.includes('someone@eu.provider.tern.test'))) {
      if (Date.now() > until) throw new Error('upstream did not receive the message');
      await new Promise((r) => setTimeout(r, 50));
    }
    const seen = upstreamSeen.find((s) => s.rcpt.includes('someone@eu.provider.tern.test'))!;
    expect(seen.user).toBe('relay-user');
    expect(seen.secure).toBe(true);
  });
});
