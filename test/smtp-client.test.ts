/**
 * The outbound SMTP client against scripted servers on loopback: what goes on the wire (pipelining, dot-stuffing,
 * one write per message) and what each kind of answer becomes.
 */
import net from 'node:net';
import tls from 'node:tls';
import { afterEach, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { DeliveryError, OutboundConnection, dotStuff, type ConnectOptions } from '../src/mta/smtp-client.js';
import { testCa } from './support/tls.js';

interface Script {
  /** EHLO keywords after the greeting line */
  ehlo?: string[];
  /** the reply to a command line; default 250 (354 for DATA) */
  reply?: (line: string) => string | undefined;
  /** the reply after the content; default 250 */
  afterData?: string;
  greeting?: string;
  /** what to do with STARTTLS (default: 502) */
  starttls?: (socket: net.Socket, sendRaw: (s: string) => void) => void;
}

interface Scripted {
  port: number;
  /** each data chunk the server read, as text */
  chunks: string[];
  /** command lines in order */
  commands: string[];
  /** each message's content as received (still dot-stuffed, without the terminator) */
  contents: string[];
  close(): Promise<void>;
}

const servers: Scripted[] = [];
afterEach(async () => {
  for (const s of servers.splice(0)) await s.close();
});

/** A line-by-line SMTP server that answers each command as the script says, one write per reply. */
async function scripted(script: Script): Promise<Scripted> {
  const chunks: string[] = [];
  const commands: string[] = [];
  const contents: string[] = [];
  const sockets = new Set<net.Socket>();
  const serve = (socket: net.Socket, greet: boolean) => {
    let buf = '';
    let inData = false;
    const send = (s: string) => socket.write(s + '\r\n');
    socket.on('data', (d: Buffer) => {
      chunks.push(d.toString('latin1'));
      buf += d.toString('latin1');
      for (;;) {
        if (inData) {
          const end = buf.indexOf('\r\n.\r\n');
          if (end === -1 && buf !== '.\r\n' && !buf.startsWith('.\r\n')) return;
          const empty = buf.startsWith('.\r\n');
          contents.push(empty ? '' : buf.slice(0, end + 2));
          buf = empty ? buf.slice(3) : buf.slice(end + 5);
          inData = false;
          send(script.afterData ?? '250 2.0.0 Ok: queued');
          continue;
        }
        const nl = buf.indexOf('\r\n');
        if (nl === -1) return;
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 2);
        commands.push(line);
        const verb = line.slice(0, 4).toUpperCase();
        if (verb === 'EHLO') {
          const ext = script.ehlo ?? ['PIPELINING', '8BITMIME', 'SMTPUTF8', 'SIZE 10000000'];
          send(['scripted.tern.test', ...ext].map((l, i, a) => (i === a.length - 1 ? `250 ${l}` : `250-${l}`)).join('\r\n'));
          continue;
        }
        if (verb === 'STAR') {
          if (script.starttls) {
            socket.removeAllListeners('data');
            script.starttls(socket, (s) => socket.write(s));
            return;
          }
          send('502 5.5.1 STARTTLS not available');
          continue;
        }
        if (verb === 'QUIT') {
          socket.end('221 2.0.0 Bye\r\n');
          return;
        }
        const custom = script.reply?.(line);
        const r = custom ?? (verb === 'DATA' ? '354 Go ahead' : '250 2.0.0 Ok');
        if (r === '') continue; // the script answers by itself
        send(r);
        if (r.startsWith('354')) inData = true;
        if (r.startsWith('421')) socket.end();
      }
    });
    if (greet) send(script.greeting ?? '220 scripted.tern.test ESMTP');
  };
  const server = net.createServer({ noDelay: true }, (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => {});
    serve(socket, true);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const s: Scripted = {
    port: (server.address() as net.AddressInfo).port,
    chunks,
    commands,
    contents,
    close: () =>
      new Promise((r) => {
        for (const sock of sockets) sock.destroy();
        server.close(() => r());
      }),
  };
  (s as unknown as { serve: typeof serve }).serve = serve;
  servers.push(s);
  return s;
}

const options = (port: number, more: Partial<ConnectOptions> = {}): ConnectOptions => ({
  address: '127.0.0.1',
  port,
  servername: 'mx.scripted.tern.test',
  ehlo: 'out.tern.test',
  tls: 'none',
  connectTimeoutMs: 5000,
  commandTimeoutMs: 5000,
  dataTimeoutMs: 5000,
  ...more,
});

const message = (body: string) => Buffer.from(`From: <a@tern.test>\r\nSubject: t\r\n\r\n${body}`, 'latin1');
const unstuff = (s: string) => s.replace(/^\./, '').replace(/\r\n\./g, '\r\n');

describe('outbound SMTP client', () => {
  it('pipelines the whole envelope in one write and sends the content dot-stuffed in one more', async () => {
    const server = await scripted({});
    const conn = await OutboundConnection.open(options(server.port));
    const before = server.chunks.length;
    const body = message('.starts with a dot\r\nmiddle\r\n.\r\n..two\r\nend\r\n');
    const result = await conn.send('bounce@tern.test', ['a@x.test', 'b@x.test'], body, { utf8: false, size: body.length });
    expect(result).toEqual({ accepted: ['a@x.test', 'b@x.test'], rejected: new Map(), response: '250 2.0.0 Ok: queued' });
    const sent = server.chunks.slice(before);
    expect(sent[0]).toBe(`MAIL FROM:<bounce@tern.test> SIZE=${body.length} BODY=8BITMIME\r\nRCPT TO:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n`);
    // the content and its terminator: one write (loopback delivers it as one chunk)
    expect(sent).toHaveLength(2);
    expect(sent[1]!.endsWith('\r\n.\r\n')).toBe(true);
    expect(server.contents[0]).toContain('\r\n..starts with a dot\r\n');
    expect(server.contents[0]).toContain('\r\n..\r\n...two\r\n');
    expect(unstuff(server.contents[0]!)).toBe(body.toString('latin1'));
    conn.quit();
  });

  it('sends content given in pieces as one message, stuffing across the pieces', async () => {
    const server = await scripted({});
    const conn = await OutboundConnection.open(options(server.port));
    const pieces = [Buffer.from('X-Tern-Ref: abc\r\n'), Buffer.from('.Subject: dotted\r\n\r\nbody without a final line end')];
    await conn.send('s@tern.test', ['a@x.test'], pieces, { utf8: false, size: 60 });
    expect(server.contents[0]).toBe('X-Tern-Ref: abc\r\n..Subject: dotted\r\n\r\nbody without a final line end\r\n');
    conn.quit();
  });

  it('waits for each reply when the server does not offer PIPELINING, and reports refused recipients', async () => {
    const server = await scripted({ ehlo: ['8BITMIME'], reply: (line) => (line.includes('<no@x.test>') ? '550 5.1.1 No such user' : undefined) });
    const conn = await OutboundConnection.open(options(server.port));
    const before = server.chunks.length;
    const result = await conn.send('s@tern.test', ['no@x.test', 'yes@x.test'], message('hi\r\n'), { utf8: false, size: 40 });
    // each command arrived on its own (the last chunk is the content)
    expect(server.chunks.slice(before, -1).map((c) => c.split('\r\n').length - 1)).toEqual([1, 1, 1, 1]);
    expect(server.commands.slice(-4)).toEqual(['MAIL FROM:<s@tern.test> BODY=8BITMIME', 'RCPT TO:<no@x.test>', 'RCPT TO:<yes@x.test>', 'DATA']);
    expect(result.accepted).toEqual(['yes@x.test']);
    expect(result.rejected.get('no@x.test')).toEqual({ response: '550 5.1.1 No such user', code: 550 });
    conn.quit();
  });

  it('sends no content when every recipient was refused, even to a server that says 354 anyway', async () => {
    const server = await scripted({ reply: (line) => (line.startsWith('RCPT') ? '550 5.1.1 No such user' : undefined) });
    const conn = await OutboundConnection.open(options(server.port));
    const result = await conn.send('s@tern.test', ['a@x.test'], message('secret\r\n'), { utf8: false, size: 40 });
    expect(result.accepted).toEqual([]);
    expect(result.rejected.get('a@x.test')!.code).toBe(550);
    expect(server.contents).toEqual(['']); // the empty transaction was ended with a lone dot
    expect(server.chunks.join('')).not.toContain('secret');
    await conn.reset();
    expect(server.commands.at(-1)).toBe('RSET');
    conn.quit();
  });

  it('turns a refused MAIL FROM into an error carrying the reply, and the connection stays usable', async () => {
    let first = true;
    const server = await scripted({
      reply: (line) => {
        if (!line.startsWith('MAIL') || !first) return line.startsWith('DATA') && first ? '503 5.5.1 No valid sender' : undefined;
        return '553 5.7.1 Sender rejected';
      },
    });
    const conn = await OutboundConnection.open(options(server.port));
    const err = await conn.send('s@tern.test', ['a@x.test'], message('x\r\n'), { utf8: false, size: 10 }).catch((e: DeliveryError) => e);
    expect(err).toBeInstanceOf(DeliveryError);
    expect((err as DeliveryError).response).toBe('553 5.7.1 Sender rejected');
    expect((err as DeliveryError).code).toBe(553);
    expect((err as DeliveryError).network).toBe(false);
    first = false;
    await conn.reset();
    const ok = await conn.send('s@tern.test', ['a@x.test'], message('x\r\n'), { utf8: false, size: 10 });
    expect(ok.accepted).toEqual(['a@x.test']);
    conn.quit();
  });

  it('reports a 421 the server sent before closing as that reply, not as a network failure', async () => {
    const server = await scripted({ afterData: '421 4.7.0 Too many messages, closing' });
    const conn = await OutboundConnection.open(options(server.port));
    const err = (await conn.send('s@tern.test', ['a@x.test'], message('x\r\n'), { utf8: false, size: 10 }).catch((e) => e)) as DeliveryError;
    expect(err.code).toBe(421);
    expect(err.network).toBe(false);
    await new Promise((r) => setTimeout(r, 50));
    expect(conn.usable).toBe(false);
  });

  it('fails cleanly on a server that sends a reply line without end', async () => {
    const server = await scripted({ reply: (line) => (line.startsWith('MAIL') ? '250 ' + 'x'.repeat(100_000) : undefined) });
    const conn = await OutboundConnection.open(options(server.port));
    const err = (await conn.send('s@tern.test', ['a@x.test'], message('x\r\n'), { utf8: false, size: 10 }).catch((e) => e)) as DeliveryError;
    expect(err.network).toBe(true);
    expect(err.response).toMatch(/^451 4\.5\.0 Protocol error: the server sent a reply line longer than 8192 octets/);
    expect(conn.usable).toBe(false);
  });

  it('refuses a message that needs SMTPUTF8 when the server does not offer it, sending nothing', async () => {
    const server = await scripted({ ehlo: ['PIPELINING'] });
    const conn = await OutboundConnection.open(options(server.port));
    const err = (await conn.send('s@tern.test', ['jürgen@x.test'], message('x\r\n'), { utf8: true, size: 10 }).catch((e) => e)) as DeliveryError;
    expect(err.response).toMatch(/^553 5\.6\.7 /);
    expect(err.permanent).toBe(true);
    expect(server.commands.some((c) => c.startsWith('MAIL'))).toBe(false);
    conn.quit();
  });

  it('reads the EHLO reply line by line: a SIZE limit is kept, and a bigger message is not offered', async () => {
    const server = await scripted({ ehlo: ['SIZE 100', 'PIPELINING', '8BITMIME'] });
    const conn = await OutboundConnection.open(options(server.port));
    const body = message('x'.repeat(200) + '\r\n');
    const err = (await conn.send('s@tern.test', ['a@x.test'], body, { utf8: false, size: body.length }).catch((e) => e)) as DeliveryError;
    expect(err.response).toMatch(/^552 5\.3\.4 .*limit of 100 bytes/);
    expect(server.commands.some((c) => c.startsWith('MAIL'))).toBe(false);
    const small = message('x\r\n');
    await conn.send('s@tern.test', ['a@x.test'], small, { utf8: false, size: small.length });
    expect(server.commands.find((c) => c.startsWith('MAIL'))).toBe(`MAIL FROM:<s@tern.test> SIZE=${small.length} BODY=8BITMIME`);
    conn.quit();
  });

  it('refuses an envelope address with a line break instead of sending it as a command', async () => {
    const server = await scripted({});
    const conn = await OutboundConnection.open(options(server.port));
    const err = (await conn.send('s@tern.test', ['a@x.test>\r\nRCPT TO:<b@x.test'], message('x\r\n'), { utf8: false, size: 10 }).catch((e) => e)) as DeliveryError;
    expect(err.code).toBe(501);
    expect(server.commands.some((c) => c.startsWith('RCPT'))).toBe(false);
    conn.quit();
  });

  it('authenticates with AUTH LOGIN when that is all the server offers', async () => {
    const seen: string[] = [];
    const server = await scripted({
      ehlo: ['PIPELINING', 'AUTH LOGIN'],
      reply: (line) => {
        seen.push(line);
        if (line === 'AUTH LOGIN') return '334 VXNlcm5hbWU6';
        if (seen.at(-2) === 'AUTH LOGIN') return '334 UGFzc3dvcmQ6';
        if (seen.at(-3) === 'AUTH LOGIN') return Buffer.from(line, 'base64').toString() === 'pw' ? '235 2.7.0 Authenticated' : '535 5.7.8 Bad';
        return undefined;
      },
    });
    const conn = await OutboundConnection.open(options(server.port, { auth: { user: 'relay', pass: 'pw' } }));
    expect(seen.slice(0, 3).map((l, i) => (i ? Buffer.from(l, 'base64').toString() : l))).toEqual(['AUTH LOGIN', 'relay', 'pw']);
    conn.quit();
    const refused = await OutboundConnection.open(options(server.port, { auth: { user: 'relay', pass: 'wrong' } })).catch((e) => e);
    expect((refused as DeliveryError).code).toBe(535);
  });

  it('under required TLS, reports a server without STARTTLS as a STARTTLS failure in its own words', async () => {
    const server = await scripted({ ehlo: ['PIPELINING'] });
    const err = (await OutboundConnection.open(options(server.port, { tls: 'required' })).catch((e) => e)) as DeliveryError;
    expect(err.tlsFailure).toEqual({ starttls: true });
    expect(err.response).toBe('502 5.5.1 STARTTLS not available');
  });

  it('ignores replies a server pipelined before the TLS handshake (STARTTLS injection)', async () => {
    const ca = await testCa();
    const leaf = await ca.leaf(['mx.scripted.tern.test']);
    let server: Scripted;
    server = await scripted({
      ehlo: ['PIPELINING', 'STARTTLS'],
      starttls: (socket, sendRaw) => {
        // the injected "250" would be read as the reply to the EHLO sent after the handshake
        sendRaw('220 2.0.0 Ready\r\n250 injected-before-handshake\r\n');
        const secure = new tls.TLSSocket(socket, { isServer: true, key: leaf.private, cert: leaf.cert });
        secure.on('error', () => {});
        (server as unknown as { serve: (s: net.Socket, greet: boolean) => void }).serve(secure, false);
      },
    });
    const conn = await OutboundConnection.open(options(server.port, { tls: 'required', secureContext: tls.createSecureContext({ ca: ca.cert }) }));
    expect(conn.tlsState()).toEqual({ secure: true, authorized: true, error: null });
    // the EHLO after the handshake was answered by the real reply, which offers PIPELINING: one write
    const before = server.chunks.length;
    await conn.send('s@tern.test', ['a@x.test'], message('over tls\r\n'), { utf8: false, size: 10 });
    expect(server.chunks[before]).toMatch(/^MAIL FROM:<s@tern\.test>\r\nRCPT TO:<a@x\.test>\r\nDATA\r\n$/);
    conn.quit();
  });

  it('fails a certificate that does not name the host under required TLS, with the check\'s code', async () => {
    const ca = await testCa();
    const leaf = await ca.leaf(['other.tern.test']);
    let server: Scripted;
    server = await scripted({
      ehlo: ['STARTTLS'],
      starttls: (socket, sendRaw) => {
        sendRaw('220 2.0.0 Ready\r\n');
        const secure = new tls.TLSSocket(socket, { isServer: true, key: leaf.private, cert: leaf.cert });
        secure.on('error', () => {});
        (server as unknown as { serve: (s: net.Socket, greet: boolean) => void }).serve(secure, false);
      },
    });
    const err = (await OutboundConnection.open(options(server.port, { tls: 'required', secureContext: tls.createSecureContext({ ca: ca.cert }) })).catch((e) => e)) as DeliveryError;
    expect(err.tlsFailure).toEqual({ starttls: false, code: 'ERR_TLS_CERT_ALTNAME_INVALID' });
    // opportunistic: the same certificate encrypts, and the failed check is reported, not fatal
    const conn = await OutboundConnection.open(options(server.port, { tls: 'opportunistic', secureContext: tls.createSecureContext({ ca: ca.cert }) }));
    expect(conn.tlsState()).toMatchObject({ secure: true, authorized: false });
    conn.quit();
  });

  it('gives up on a server that never greets, within the connect timeout', async () => {
    const silent = net.createServer(() => {});
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
    const started = Date.now();
    const err = (await OutboundConnection.open(options((silent.address() as net.AddressInfo).port, { connectTimeoutMs: 300 })).catch((e) => e)) as DeliveryError;
    expect(err.network).toBe(true);
    expect(err.response).toMatch(/^ETIMEDOUT/);
    expect(Date.now() - started).toBeLessThan(5000);
    silent.close();
  });
});

describe('dotStuff', () => {
  const lines = fc.array(fc.oneof(fc.constant('.'), fc.constant('..'), fc.constant(''), fc.string({ unit: fc.constantFrom('a', '.', ' ', 'x') })), { maxLength: 30 });

  it('doubles exactly the dots that start a line, whatever the pieces', () => {
    fc.assert(
      fc.property(lines, fc.array(fc.nat(), { maxLength: 4 }), (ls, cuts) => {
        const text = ls.map((l) => l + '\r\n').join('');
        const whole = dotStuff(Buffer.from(text, 'latin1'), true).toString('latin1');
        expect(whole).toBe(text.replace(/^\./, '..').replace(/\r\n\./g, '\r\n..'));
        // cut anywhere: the pieces stuffed one after the other give the same bytes
        const points = [...new Set(cuts.map((c) => c % (text.length + 1)))].sort((a, b) => a - b);
        let prev = 0;
        let out = '';
        for (const p of [...points, text.length]) {
          const piece = Buffer.from(text.slice(prev, p), 'latin1');
          out += dotStuff(piece, prev === 0 || text[prev - 1] === '\n').toString('latin1');
          prev = p;
        }
        expect(out).toBe(whole);
      }),
    );
  });

  it('returns the same buffer when no line starts with a dot', () => {
    const b = Buffer.from('a\r\nb.c\r\n', 'latin1');
    expect(dotStuff(b, true)).toBe(b);
  });
});
