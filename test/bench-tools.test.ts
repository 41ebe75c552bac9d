/**
 * Tests for the benchmark tools: bench/sink.ts (fast SMTP sink) and
 * bench/loadgen.ts (SMTP load generator). Real sockets on loopback only.
 */
import { describe, it, expect, beforeAll, afterAll, afterEach } from 'vitest';
import net from 'node:net';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import SMTPConnection from 'nodemailer/lib/smtp-connection';
import { SMTPServer } from 'smtp-server';
import { startSink, idFraction, type Sink, type SinkDecisionContext } from '../bench/sink.ts';
import { runLoad } from '../bench/loadgen.ts';

const sinks: Sink[] = [];
async function sink(opts: Parameters<typeof startSink>[0] = {}): Promise<Sink> {
  const s = await startSink(opts);
  sinks.push(s);
  return s;
}
afterEach(async () => {
  await Promise.all(sinks.splice(0).map((s) => s.close()));
});

/** Writes `parts` to a raw connection (with a pause between parts) and collects everything until the server closes. */
async function rawSession(
  port: number,
  parts: string[],
  opts: { localAddress?: string; pauseMs?: number; destroyAfterMs?: number } = {},
): Promise<string> {
  const socket = net.connect({ host: '127.0.0.1', port, localAddress: opts.localAddress, noDelay: true });
  socket.setEncoding('latin1');
  let out = '';
  socket.on('data', (d: string) => (out += d));
  const closed = new Promise<void>((resolve, reject) => {
    socket.on('close', () => resolve());
    socket.on('error', reject);
  });
  const waitFor = async (re: RegExp): Promise<void> => {
    for (let i = 0; i < 200 && !re.test(out); i++) await new Promise((r) => setTimeout(r, 5));
  };
  await waitFor(/^\d{3} /m); // greeting
  for (const p of parts) {
    socket.write(p);
    await new Promise((r) => setTimeout(r, opts.pauseMs ?? 0));
  }
  if (opts.destroyAfterMs !== undefined) {
    await new Promise((r) => setTimeout(r, opts.destroyAfterMs));
    socket.destroy();
  }
  await closed;
  return out;
}

function codes(transcript: string): string[] {
  return transcript
    .split('\r\n')
    .filter((l) => /^\d{3} /.test(l))
    .map((l) => l.slice(0, 3));
}

describe('sink + loadgen', () => {
  it('delivers exactly `count` messages with unique ids', async () => {
    const s = await sink();
    const count = 3000;
    const res = await runLoad({ host: s.host, port: s.port, count, connections: 10, size: 5120, idPrefix: 'exact' });
    expect(res.sent).toBe(count);
    expect(res.accepted).toBe(count);
    expect(res.failed).toBe(0);
    expect(res.failures).toEqual([]);
    expect(new Set(res.acceptedIds).size).toBe(count);
    expect(res.ackAt.size).toBe(count);
    expect(res.sentAt.size).toBe(count);
    for (const id of res.acceptedIds.slice(0, 50)) expect(res.ackAt.get(id)!).toBeGreaterThanOrEqual(res.sentAt.get(id)!);

    await s.waitFor(() => s.accepted === count, 2000);
    expect(s.accepted).toBe(count);
    expect(s.rejected).toBe(0);
    expect(s.messages).toHaveLength(count);
    expect(s.idCounts.size).toBe(count);
    expect([...s.idCounts.values()].every((c) => c === 1)).toBe(true);
    expect([...s.idCounts.keys()].sort()).toEqual([...res.acceptedIds].sort());
    expect(s.maxOpenConnections).toBe(10);
    expect(s.connections).toHaveLength(10);
    for (const m of s.messages.slice(0, 20)) {
      expect(m.size).toBeGreaterThan(5000);
      expect(m.size).toBeLessThanOrEqual(5120);
      expect(m.remoteAddress).toBe('127.0.0.1');
      expect(m.tls).toBe(false);
      expect(m.data).toBeUndefined();
    }
    expect(res.rate).toBeGreaterThan(0);
  });

  it('generates well-formed messages (ids, headers, CRLF, lines <= 76 chars, size)', async () => {
    const s = await sink({ keep: true });
    const res = await runLoad({ host: s.host, port: s.port, count: 20, connections: 2, size: 3000, idPrefix: 'fmt', from: 'a@from.test' });
    expect(res.accepted).toBe(20);
    await s.waitFor(() => s.accepted === 20, 1000);
    for (const m of s.messages) {
      const text = m.data!.toString('utf8');
      const [head, body] = [text.slice(0, text.indexOf('\r\n\r\n')), text.slice(text.indexOf('\r\n\r\n') + 4)];
      const n = /^Message-ID: <fmt\.(\d+)@bench\.tern\.test>$/m.exec(head);
      expect(n).not.toBeNull();
      expect(m.id).toBe(`<fmt.${n![1]}@bench.tern.test>`);
      expect(head).toContain(`\r\nX-Bench-Id: ${m.id}\r\n`);
      expect(head).toMatch(/^Date: \w{3}, \d{2} \w{3} \d{4} \d{2}:\d{2}:\d{2} \+0000$/m);
      expect(head).toContain('\r\nFrom: <a@from.test>\r\n');
      expect(head).toContain(`\r\nTo: <user${n![1]}@sink.tern.test>\r\n`);
      expect(head).toMatch(/^Subject: .+$/m);
      expect(m.from).toBe('a@from.test');
      expect(m.to).toEqual([`user${n![1]}@sink.tern.test`]);
      expect(text.replace(/\r\n/g, '')).not.toMatch(/[\r\n]/); // CRLF only
      expect(text.endsWith('\r\n')).toBe(true);
      for (const line of body.split('\r\n')) expect(line.length).toBeLessThanOrEqual(76);
      expect(m.size).toBe(m.data!.length);
      expect(m.size).toBeGreaterThan(2900);
      expect(m.size).toBeLessThanOrEqual(3000);
    }
  });

  it('tempfailFraction 0.3 (first-attempt): ~30% rejected first, the same ids accepted the second time', async () => {
    const s = await sink({ tempfailFraction: 0.3 });
    const count = 1000;
    const first = await runLoad({ host: s.host, port: s.port, count, connections: 8, size: 1024, idPrefix: 'tf' });
    expect(first.sent).toBe(count);
    expect(first.failed).toBeGreaterThan(count * 0.22);
    expect(first.failed).toBeLessThan(count * 0.38);
    expect(first.accepted + first.failed).toBe(count);
    expect(first.failures.every((f) => f.reply === '451 4.3.0 Try again later')).toBe(true);
    expect(s.rejected).toBe(first.failed);
    const failedIds = new Set(first.failures.map((f) => f.id));
    // deterministic per id
    for (const id of failedIds) expect(idFraction(id)).toBeLessThan(0.3);
    for (const id of first.acceptedIds) expect(idFraction(id)).toBeGreaterThanOrEqual(0.3);

    const second = await runLoad({ host: s.host, port: s.port, count, connections: 8, size: 1024, idPrefix: 'tf' });
    expect(second.accepted).toBe(count);
    expect(second.failed).toBe(0);
    expect(s.rejected).toBe(first.failed);
    expect(s.accepted).toBe(first.accepted + count);
    for (const [id, c] of s.idCounts) expect(c).toBe(failedIds.has(id) ? 1 : 2);
  });

  it("failMode 'always' and permfailFraction fail the same ids on every attempt", async () => {
    const s = await sink({ tempfailFraction: 0.2, permfailFraction: 0.1, failMode: 'always' });
    const a = await runLoad({ host: s.host, port: s.port, count: 500, connections: 5, size: 512, idPrefix: 'al' });
    const b = await runLoad({ host: s.host, port: s.port, count: 500, connections: 5, size: 512, idPrefix: 'al' });
    const key = (fs_: { id: string; reply: string }[]) => fs_.map((f) => `${f.id} ${f.reply}`).sort();
    expect(key(a.failures)).toEqual(key(b.failures));
    const perm = a.failures.filter((f) => f.reply === '550 5.7.1 Rejected by sink');
    const temp = a.failures.filter((f) => f.reply === '451 4.3.0 Try again later');
    expect(perm.length + temp.length).toBe(a.failed);
    expect(perm.length).toBeGreaterThan(20);
    expect(perm.length).toBeLessThan(85);
    expect(temp.length).toBeGreaterThan(60);
    expect(temp.length).toBeLessThan(140);
    expect(s.rejected).toBe(a.failed * 2);
  });

  it("decide at 'rcpt' rejects a recipient with 550 and the loadgen records the failure", async () => {
    const seen: SinkDecisionContext[] = [];
    const s = await sink({
      decide: (ctx) => {
        if (ctx.stage !== 'rcpt') return undefined;
        seen.push(ctx);
        return ctx.to!.at(-1)!.startsWith('reject') ? '550 5.1.1 No such user here' : undefined;
      },
    });
    const res = await runLoad({
      host: s.host,
      port: s.port,
      count: 100,
      connections: 4,
      size: 800,
      idPrefix: 'rc',
      // every 5th message has only a rejected recipient; every 7th has one good and one rejected
      recipients: (n) => (n % 5 === 0 ? [`reject${n}@sink.tern.test`] : n % 7 === 0 ? [`ok${n}@sink.tern.test`, `reject-b${n}@sink.tern.test`] : [`ok${n}@sink.tern.test`]),
    });
    const rejectedOnly = Array.from({ length: 100 }, (_, n) => n).filter((n) => n % 5 === 0);
    expect(res.failed).toBe(rejectedOnly.length);
    expect(res.accepted).toBe(100 - rejectedOnly.length);
    expect(res.failures.map((f) => f.id).sort()).toEqual(rejectedOnly.map((n) => `<rc.${n}@bench.tern.test>`).sort());
    expect(res.failures.every((f) => f.reply === '550 5.1.1 No such user here')).toBe(true);
    const partial = res.rcptFailures.filter((f) => f.rcpt.startsWith('reject-b'));
    expect(partial.length).toBe(Array.from({ length: 100 }, (_, n) => n).filter((n) => n % 5 !== 0 && n % 7 === 0).length);
    await s.waitFor(() => s.accepted === res.accepted, 1000);
    expect(s.rejected).toBe(0); // refused at RCPT, not at DATA
    const withPartial = s.messages.find((m) => m.id === '<rc.7@bench.tern.test>');
    expect(withPartial?.to).toEqual(['ok7@sink.tern.test']);
    expect(seen.find((c) => c.to!.length === 2)?.to).toEqual(['ok7@sink.tern.test', 'reject-b7@sink.tern.test']);
    expect(seen[0]!.from).toBe('sender@bench.tern.test');
    expect(seen[0]!.remoteAddress).toBe('127.0.0.1');
    expect(seen[0]!.localPort).toBe(s.port);
  });

  it('loadgen survives the server closing connections (421) and rejected greetings', async () => {
    let connects = 0;
    const dataCtx: SinkDecisionContext[] = [];
    const s = await sink({
      decide: (ctx) => {
        if (ctx.stage === 'connect') return ++connects <= 3 ? '421 4.7.0 Too busy, try later' : undefined;
        if (ctx.stage === 'data') {
          dataCtx.push(ctx);
          if (/^<cl\.\d*3@/.test(ctx.id ?? '')) return '421 4.3.2 Closing connection';
        }
        return undefined;
      },
    });
    const res = await runLoad({ host: s.host, port: s.port, count: 200, connections: 4, size: 600, idPrefix: 'cl' });
    const closing = Array.from({ length: 200 }, (_, n) => n).filter((n) => n % 10 === 3);
    expect(res.sent).toBe(200);
    expect(res.failed).toBe(closing.length);
    expect(res.accepted).toBe(200 - closing.length);
    expect(res.failures.every((f) => f.reply.includes('421 4.3.2 Closing connection'))).toBe(true);
    expect(res.connectionErrors.filter((e) => e.includes('421 4.7.0'))).toHaveLength(3);
    await s.waitFor(() => s.openConnections === 0, 2000);
    expect(s.connections.length).toBe(res.connectionsOpened);
    // 3 refused greetings; then every 421 is followed by a reconnect (work always remains after it). Workers
    // whose first connection was refused may find no work left after their back-off, hence a range.
    expect(s.connections.length).toBeGreaterThanOrEqual(3 + 1 + closing.length);
    expect(s.connections.length).toBeLessThanOrEqual(3 + 4 + closing.length);
    expect(s.rejected).toBe(closing.length);
    expect(dataCtx[0]!.attempt).toBe(1);
    expect(dataCtx[0]!.to).toHaveLength(1);
  });

  it('loadgen stops by itself when the server is unreachable', async () => {
    const srv = net.createServer();
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
    const port = (srv.address() as net.AddressInfo).port;
    await new Promise<void>((r) => srv.close(() => r()));
    const res = await runLoad({ host: '127.0.0.1', port, count: 10, connections: 2, maxConnectFailures: 3 });
    expect(res.sent).toBe(0);
    expect(res.accepted).toBe(0);
    expect(res.connectionErrors).toHaveLength(6);
    expect(res.connectionErrors[0]).toMatch(/ECONNREFUSED/);
  });

  it('messagesPerConnection reconnects after that many messages', async () => {
    const s = await sink();
    const res = await runLoad({ host: s.host, port: s.port, count: 100, connections: 2, size: 300, messagesPerConnection: 10 });
    expect(res.accepted).toBe(100);
    await s.waitFor(() => s.openConnections === 0, 2000);
    expect(s.connections).toHaveLength(10);
    expect(s.connections.every((c) => c.messages === 10 && c.closedAt !== undefined)).toBe(true);
  });

  it('loadgen authenticates with AUTH PLAIN against a real SMTP server (smtp-server)', async () => {
    const users: string[] = [];
    let received = 0;
    const server = new SMTPServer({
      authMethods: ['PLAIN'],
      allowInsecureAuth: true,
      disabledCommands: ['STARTTLS'],
      logger: false,
      onAuth(auth, _session, cb) {
        users.push(auth.username ?? '');
        if (auth.username === 'u1' && auth.password === 'p@ss') cb(null, { user: auth.username });
        else cb(new Error('Invalid username or password'));
      },
      onData(stream, _session, cb) {
        stream.on('data', () => {});
        stream.on('end', () => {
          received++;
          cb();
        });
      },
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    try {
      const port = (server.server.address() as net.AddressInfo).port;
      const ok = await runLoad({ host: '127.0.0.1', port, count: 60, connections: 3, size: 2048, auth: { user: 'u1', pass: 'p@ss' } });
      expect(ok.accepted).toBe(60);
      expect(received).toBe(60);
      expect(users.filter((u) => u === 'u1')).toHaveLength(3);
      const bad = await runLoad({ host: '127.0.0.1', port, count: 5, connections: 1, auth: { user: 'u1', pass: 'nope' }, maxConnectFailures: 2 });
      expect(bad.sent).toBe(0);
      expect(bad.connectionErrors).toHaveLength(2);
      expect(bad.connectionErrors[0]).toMatch(/^AUTH: 535/);
    } finally {
      await new Promise<void>((r) => server.close(() => r()));
    }
  });
  it('loadgen falls back to one command at a time when PIPELINING is not advertised', async () => {
    const bodies: string[] = [];
    const server = new SMTPServer({
      hidePIPELINING: true,
      authOptional: true,
      disabledCommands: ['STARTTLS'],
      logger: false,
      onRcptTo(address, _session, cb) {
        if (address.address.startsWith('bad')) {
          const err = new Error('No such user') as Error & { responseCode: number };
          err.responseCode = 550;
          cb(err);
        } else cb();
      },
      onData(stream, _session, cb) {
        const parts: Buffer[] = [];
        stream.on('data', (d: Buffer) => parts.push(d));
        stream.on('end', () => {
          bodies.push(Buffer.concat(parts).toString());
          cb();
        });
      },
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    try {
      const port = (server.server.address() as net.AddressInfo).port;
      const res = await runLoad({
        host: '127.0.0.1',
        port,
        count: 30,
        connections: 2,
        size: 1000,
        idPrefix: 'np',
        recipients: (n) => (n % 3 === 0 ? [`bad${n}@x.test`] : [`good${n}@x.test`, `bad-b${n}@x.test`]),
      });
      expect(res.sent).toBe(30);
      expect(res.failed).toBe(10);
      expect(res.accepted).toBe(20);
      expect(res.failures.every((f) => f.reply.startsWith('550'))).toBe(true);
      expect(res.rcptFailures).toHaveLength(30);
      expect(bodies).toHaveLength(20);
      expect(bodies[0]).toMatch(/^Message-ID: <np\.\d+@bench\.tern\.test>\r\n/);
    } finally {
      await new Promise<void>((r) => server.close(() => r()));
    }
  });

  it('a throwing decide hook yields 451 instead of crashing', async () => {
    const s = await sink({
      decide: (ctx) => {
        if (ctx.stage === 'data' && ctx.id?.includes('.1@')) throw new Error('boom');
        return undefined;
      },
    });
    const res = await runLoad({ host: s.host, port: s.port, count: 3, connections: 1, size: 200, idPrefix: 'th' });
    expect(res.accepted).toBe(2);
    expect(res.failures).toEqual([{ id: '<th.1@bench.tern.test>', reply: '451 4.3.0 Sink decide hook failed: boom' }]);
  });
});

describe('sink protocol details', () => {
  it('handles pipelined commands and DATA content in the same chunk, and undoes dot-stuffing', async () => {
    const s = await sink({ keep: true });
    const chunk =
      'EHLO raw.test\r\n' +
      'MAIL FROM:<a@x.test> BODY=8BITMIME SIZE=100\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\r\nDATA\r\n' +
      'Message-ID: <p1@raw.test>\r\nSubject: x\r\n\r\n..leading dot\r\nmiddle\r\n...two\r\n.\r\n' +
      'MAIL FROM:<>\r\nRCPT TO:<d@y.test>\r\nDATA\r\n.\r\n' +
      'RSET\r\nNOOP\r\nVRFY x\r\nRCPT TO:<e@y.test>\r\nQUIT\r\n';
    const out = await rawSession(s.port, [chunk]);
    expect(codes(out)).toEqual(['220', '250', '250', '250', '250', '354', '250', '250', '250', '354', '250', '250', '250', '502', '503', '221']);
    expect(out).toMatch(/^250-PIPELINING$/m);
    expect(out).toMatch(/^250-8BITMIME$/m);
    expect(out).toMatch(/^250-SMTPUTF8$/m);
    expect(out).toMatch(/^250-ENHANCEDSTATUSCODES$/m);
    expect(out).toMatch(/^250[- ]SIZE \d+$/m);
    expect(out).not.toMatch(/STARTTLS/);
    expect(s.messages).toHaveLength(2);
    expect(s.messages[0]!.data!.toString()).toBe('Message-ID: <p1@raw.test>\r\nSubject: x\r\n\r\n.leading dot\r\nmiddle\r\n..two\r\n');
    expect(s.messages[0]!.id).toBe('<p1@raw.test>');
    expect(s.messages[0]!.to).toEqual(['b@y.test', 'c@y.test']);
    expect(s.messages[1]!.id).toBeNull();
    expect(s.messages[1]!.from).toBe('');
    expect(s.messages[1]!.size).toBe(0);
    expect(s.idCounts.get('<p1@raw.test>')).toBe(1);
    expect(s.connections[0]!.messages).toBe(2);
  });

  it('finds the terminator when it is split across packets', async () => {
    const s = await sink({ keep: true });
    const out = await rawSession(
      s.port,
      [
        'HELO raw\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n',
        'X-Id: 1\r\n\r\nbody\r\n.',
        '\r\n',
        'MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n',
        'X-Id: 2\r\n\r\nbody2\r',
        '\n.\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n',
        '.',
        '\r',
        '\nQU',
        'IT\r\n',
      ],
      { pauseMs: 20 },
    );
    expect(codes(out)).toEqual(['220', '250', '250', '250', '354', '250', '250', '250', '354', '250', '250', '250', '354', '250', '221']);
    expect(s.messages.map((m) => m.data!.toString())).toEqual(['X-Id: 1\r\n\r\nbody\r\n', 'X-Id: 2\r\n\r\nbody2\r\n', '']);
  });

  it('uses the configured idHeader, rejects oversized messages, and rejects commands out of order', async () => {
    const s = await sink({ idHeader: 'X-Id', maxMessageSize: 100, permfailFraction: 1 });
    const out = await rawSession(s.port, [
      'MAIL FROM:<a@x>\r\nEHLO r\r\nDATA\r\nMAIL FROM:<a@x> SIZE=1000\r\nMAIL FROM:<a@x>\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n' +
        `X-Id: big\r\n\r\n${'x'.repeat(200)}\r\n.\r\n` +
        'MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nSubject: no id\r\n\r\nhi\r\n.\r\n' +
        'MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nX-ID:  <folded\r\n id>\r\n\r\nhi\r\n.\r\nQUIT\r\n',
    ]);
    expect(codes(out)).toEqual(['220', '503', '250', '503', '552', '250', '503', '250', '354', '552', '250', '250', '354', '250', '250', '250', '354', '550', '221']);
    expect(s.accepted).toBe(1); // the message without an id is never failed by fractions
    expect(s.messages[0]!.id).toBeNull();
    expect(s.rejected).toBe(2);
  });

  it("decide at 'connect' can refuse the connection; remoteAddress is normalised", async () => {
    const ctxs: SinkDecisionContext[] = [];
    const s = await sink({
      host: '::',
      decide: (ctx) => {
        ctxs.push(ctx);
        return ctx.stage === 'connect' && ctx.remoteAddress === '127.0.0.3' ? '554 5.7.1 Go away' : undefined;
      },
    });
    const refused = await rawSession(s.port, [], { localAddress: '127.0.0.3' });
    expect(refused).toBe('554 5.7.1 Go away\r\n');
    const res = await runLoad({ host: '127.0.0.1', port: s.port, count: 3, connections: 1, size: 200 });
    expect(res.accepted).toBe(3);
    const out = await rawSession(s.port, ['HELO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nMessage-ID: <z@z>\r\n\r\n.\r\nQUIT\r\n'], {
      localAddress: '127.0.0.2',
    });
    expect(codes(out)).toEqual(['220', '250', '250', '250', '354', '250', '221']);
    expect(s.messages.at(-1)!.remoteAddress).toBe('127.0.0.2');
    expect(s.connections.map((c) => c.remoteAddress)).toEqual(['127.0.0.3', '127.0.0.1', '127.0.0.2']);
    expect(ctxs.every((c) => !c.remoteAddress.startsWith('::ffff:'))).toBe(true);
    const dataCtx = ctxs.filter((c) => c.stage === 'data');
    expect(dataCtx.at(-1)).toMatchObject({ id: '<z@z>', attempt: 1, from: 'a@b', to: ['c@d'], remoteAddress: '127.0.0.2' });
  });

  it('waitFor resolves on events and rejects with a clear error on timeout', async () => {
    const s = await sink();
    const got: string[] = [];
    s.on('message', (m) => got.push(m.id ?? ''));
    const waiting = s.waitFor(() => s.accepted >= 5, 2000);
    await runLoad({ host: s.host, port: s.port, count: 5, connections: 1, size: 200, idPrefix: 'w' });
    await waiting;
    expect(got).toHaveLength(5);
    await expect(s.waitFor(() => s.accepted > 5, 50)).rejects.toThrow(/waitFor.*50 ms.*accepted=5/);
  });
});

describe('sink STARTTLS', () => {
  let dir = '';
  let key = '';
  let cert = '';
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-sink-tls-'));
    execFileSync(
      'openssl',
      [
        'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
        '-keyout', path.join(dir, 'key.pem'), '-out', path.join(dir, 'cert.pem'),
        '-days', '2', '-subj', '/CN=sink.tern.test',
      ],
      { stdio: 'ignore' },
    );
    key = fs.readFileSync(path.join(dir, 'key.pem'), 'utf8');
    cert = fs.readFileSync(path.join(dir, 'cert.pem'), 'utf8');
  });
  afterAll(() => {
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('upgrades with STARTTLS (nodemailer SMTPConnection) and marks the message tls: true', async () => {
    const s = await sink({ tls: { key, cert }, keep: true });
    const conn = new SMTPConnection({
      host: s.host,
      port: s.port,
      requireTLS: true,
      tls: { rejectUnauthorized: false },
      logger: false,
    });
    await new Promise<void>((resolve, reject) => {
      conn.once('error', reject);
      conn.connect(() => resolve());
    });
    expect(conn.secure).toBe(true);
    const info = await new Promise<SMTPConnection.SentMessageInfo>((resolve, reject) => {
      conn.send(
        { from: 'tls@bench.tern.test', to: ['r1@sink.tern.test', 'r2@sink.tern.test'] },
        'Message-ID: <tls.1@bench.tern.test>\r\nSubject: tls\r\n\r\n.dot line\r\nhello over tls\r\n',
        (err, i) => (err ? reject(err) : resolve(i)),
      );
    });
    expect(info.accepted).toEqual(['r1@sink.tern.test', 'r2@sink.tern.test']);
    conn.quit();
    await s.waitFor(() => s.accepted === 1, 2000);
    const m = s.messages[0]!;
    expect(m.tls).toBe(true);
    expect(m.id).toBe('<tls.1@bench.tern.test>');
    expect(m.from).toBe('tls@bench.tern.test');
    expect(m.data!.toString()).toContain('\r\n\r\n.dot line\r\nhello over tls\r\n');
    expect(s.connections[0]!.tls).toBe(true);

    // a plain loadgen session on the same sink still works and is not marked tls
    const res = await runLoad({ host: s.host, port: s.port, count: 10, connections: 2, size: 500 });
    expect(res.accepted).toBe(10);
    await s.waitFor(() => s.accepted === 11, 1000);
    expect(s.messages.slice(1).every((x) => !x.tls)).toBe(true);
  });

  it('advertises STARTTLS only before the upgrade and discards input pipelined after it', async () => {
    const s = await sink({ tls: { key, cert } });
    const out = await rawSession(s.port, ['EHLO x\r\nSTARTTLS\r\nMAIL FROM:<a@b>\r\n'], { destroyAfterMs: 200 });
    expect(out).toMatch(/^250 STARTTLS$/m);
    expect(codes(out)).toEqual(['220', '250', '220']); // MAIL after STARTTLS is not answered in clear text
    expect(s.accepted).toBe(0);
  });
});
