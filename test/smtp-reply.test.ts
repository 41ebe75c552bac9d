/** How Tern's listeners reply (src/mta/smtp-reply.ts), on a real smtp-server over loopback. */
import net from 'node:net';
import { afterEach, expect, it } from 'vitest';
import { SMTPServer } from 'smtp-server';
import { smtpError } from '../src/mta/smtp-reply.js';
import { rawSmtp } from './support/smtp.js';

let server: SMTPServer | null = null;
afterEach(() => new Promise<void>((r) => (server ? server.close(() => r()) : r())));

/** A listener that counts the writes each session's socket makes. */
async function listener(opts: Partial<ConstructorParameters<typeof SMTPServer>[0]> = {}) {
  const writes: Array<{ data: string }> = [];
  server = new SMTPServer({ authOptional: true, disabledCommands: ['STARTTLS'], hideENHANCEDSTATUSCODES: false, logger: false, ...opts });
  server.server.prependListener('connection', (socket: net.Socket) => {
    const s = socket as unknown as { _writeGeneric: (writev: boolean, data: unknown, enc: string, cb: () => void) => void };
    const original = s._writeGeneric.bind(socket);
    s._writeGeneric = (writev, data, enc, cb) => {
      const text = writev ? (data as Array<{ chunk: unknown }>).map((c) => String(c.chunk)).join('') : String(data);
      writes.push({ data: text });
      return original(writev, data, enc, cb);
    };
  });
  await new Promise<void>((r) => server!.listen(0, '127.0.0.1', r));
  return { port: (server!.server.address() as net.AddressInfo).port, writes };
}

it('answers pipelined MAIL, RCPT and DATA in one write', async () => {
  // handlers that answer at once, as Tern's do (smtp-server's own defaults answer on the next turn)
  const { port, writes } = await listener({ onMailFrom: (_a, _s, cb) => cb(), onRcptTo: (_a, _s, cb) => cb(), onData: (s, _session, cb) => s.on('end', () => cb()).resume() });
  const c = await rawSmtp(port);
  await c.cmd('EHLO client.tern.test');
  const before = writes.length;
  c.write('MAIL FROM:<a@tern.test>\r\nRCPT TO:<b@tern.test>\r\nDATA\r\n');
  expect(await c.reply()).toMatch(/^250/);
  expect(await c.reply()).toMatch(/^250/);
  expect(await c.reply()).toMatch(/^354/);
  c.close();
  expect(writes.slice(before)).toEqual([{ data: expect.stringMatching(/^250 [^\n]*\r\n250 [^\n]*\r\n354 [^\n]*\r\n$/) }]);
});

it('keeps an enhanced status code the handler wrote itself', async () => {
  const { port } = await listener({ onMailFrom: (_a, _s, cb) => cb(smtpError(550, '5.7.1', 'Sender refused by policy')) });
  const c = await rawSmtp(port);
  await c.cmd('EHLO client.tern.test');
  expect(await c.cmd('MAIL FROM:<a@tern.test>')).toBe('550 5.7.1 Sender refused by policy');
  c.close();
});
