/** A raw SMTP client for tests that must send exactly the bytes they choose (smuggling, bad input). */
import net from 'node:net';

export interface RawSmtp {
  /** sends a command line (CRLF added) and resolves with the full reply */
  cmd(line: string): Promise<string>;
  /** writes raw bytes */
  write(data: string | Buffer): void;
  /** the next reply */
  reply(timeoutMs?: number): Promise<string>;
  /** replies that arrived and were not read yet */
  pending(): string[];
  close(): void;
  closed: Promise<void>;
}

export async function rawSmtp(port: number, opts: { host?: string; localAddress?: string } = {}): Promise<RawSmtp & { greeting: string }> {
  const socket = net.connect({ port, host: opts.host ?? '127.0.0.1', localAddress: opts.localAddress });
  let buffer = '';
  const replies: string[] = [];
  const waiters: Array<(r: string) => void> = [];
  let current: string[] = [];
  const closed = new Promise<void>((resolve) => socket.on('close', () => resolve()));
  socket.on('error', () => {});
  socket.on('data', (d) => {
    buffer += d.toString('latin1');
    let i;
    while ((i = buffer.indexOf('\r\n')) !== -1) {
      const line = buffer.slice(0, i);
      buffer = buffer.slice(i + 2);
      current.push(line);
      if (/^\d{3} /.test(line) || /^\d{3}$/.test(line)) {
        const full = current.join('\n');
        current = [];
        const w = waiters.shift();
        if (w) w(full);
        else replies.push(full);
      }
    }
  });
  const reply = (timeoutMs = 10_000) =>
    new Promise<string>((resolve, reject) => {
      const r = replies.shift();
      if (r !== undefined) return resolve(r);
      const timer = setTimeout(() => reject(new Error('no SMTP reply in time')), timeoutMs);
      waiters.push((x) => {
        clearTimeout(timer);
        resolve(x);
      });
    });
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', () => resolve());
    socket.once('error', reject);
  });
  const greeting = await reply();
  return {
    greeting,
    cmd: (line) => {
      socket.write(line + '\r\n');
      return reply();
    },
    write: (data) => socket.write(typeof data === 'string' ? Buffer.from(data, 'latin1') : data),
    reply,
    pending: () => replies.slice(),
    close: () => socket.destroy(),
    closed,
  };
}
