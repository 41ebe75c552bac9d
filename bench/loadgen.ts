/**
 * SMTP load generator (module + CLI).
 *
 * Hand-written on `node:net` (not nodemailer) so that it is not the bottleneck.
 * Opens `connections` sessions in parallel; each does EHLO, optional AUTH PLAIN,
 * then sends messages back to back: `MAIL FROM`, `RCPT TO`…, `DATA` in one
 * write when the server advertises PIPELINING (one command at a time
 * otherwise), waits for the 354, writes the dot-stuffed content plus
 * `\r\n.\r\n` and reads the final reply.
 *
 * - every message has a unique id `<${idPrefix}.${n}@bench.tern.test>` in both
 *   `Message-ID` and `X-Bench-Id`, plus From, To, Subject, Date and a text body
 *   padded to `size` bytes with lines of at most 76 characters, CRLF endings;
 * - a 4xx/5xx for one message is recorded and the session continues (RSET is
 *   pipelined in front of the next message);
 * - when the server closes the connection, the message in flight is recorded
 *   as failed with the reason, and the worker reconnects and continues;
 * - connection set-up failures (refused, 4xx/5xx greeting, EHLO/AUTH failure)
 *   are retried with a back-off; after `maxConnectFailures` consecutive ones a
 *   worker gives up, so the run always ends (bounded by `count`).
 *
 * CLI: `npx tsx bench/loadgen.ts --host 127.0.0.1 --port 2525 --count 10000
 *   --size 5120 --connections 20 [--user u --pass p] [--per-connection N]
 *   [--id-prefix p] [--from addr]` prints one JSON line with the summary.
 */
import net from 'node:net';
import crypto from 'node:crypto';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

export interface LoadOptions {
  host: string;
  port: number;
  /** Total messages */
  count: number;
  /** Approximate total bytes per message, default 5120 */
  size?: number;
  /** Parallel connections, default 10 */
  connections?: number;
  /** AUTH PLAIN after EHLO (only when given) */
  auth?: { user: string; pass: string };
  /** Envelope and header sender, default 'sender@bench.tern.test' */
  from?: string;
  /** Recipients of message n (0-based), default [`user${n}@sink.tern.test`] */
  recipients?: (n: number) => string[];
  /** Default random */
  idPrefix?: string;
  /** Reconnect after this many messages, default unlimited */
  messagesPerConnection?: number;
  /** Client name sent with EHLO, default 'loadgen.bench.tern.test' */
  ehloName?: string;
  /** Socket inactivity timeout in ms; the in-flight message fails with 'timeout'. Default 30000 */
  timeoutMs?: number;
  /** A worker gives up after this many consecutive failed connection set-ups. Default 10 */
  maxConnectFailures?: number;
}

export interface LoadResult {
  /** Messages whose MAIL FROM was written */
  sent: number;
  /** Messages acknowledged with 250 after DATA */
  accepted: number;
  /** Messages not acknowledged (sent - accepted) */
  failed: number;
  /** Message-ID values (with angle brackets) acknowledged 250 */
  acceptedIds: string[];
  /** One entry per failed message */
  failures: { id: string; reply: string }[];
  /** Individual recipients refused at RCPT (also for messages accepted for their other recipients) */
  rcptFailures: { id: string; rcpt: string; reply: string }[];
  /** Connection set-up failures (refused, greeting/EHLO/AUTH errors), not tied to a message */
  connectionErrors: string[];
  /** Connections opened (successfully or not) */
  connectionsOpened: number;
  /** id -> epoch ms when the 250 arrived */
  ackAt: Map<string, number>;
  /** id -> epoch ms when the MAIL command was written */
  sentAt: Map<string, number>;
  durationMs: number;
  /** Accepted per second */
  rate: number;
}

function now(): number {
  return performance.timeOrigin + performance.now();
}

class ConnectionClosedError extends Error {}

/** Reads SMTP replies (multi-line aware) from a socket, in order. */
class ReplyReader {
  private buf = '';
  private lines: string[] = [];
  private readonly replies: string[] = [];
  private readonly waiters: { resolve: (r: string) => void; reject: (e: Error) => void }[] = [];
  private error: Error | null = null;
  lastReply = '';

  constructor(socket: net.Socket) {
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
  }

  private onData(chunk: Buffer): void {
    this.buf += chunk.toString('latin1');
    let start = 0;
    for (;;) {
      const nl = this.buf.indexOf('\n', start);
      if (nl < 0) break;
      const line = this.buf.slice(start, nl > start && this.buf.charCodeAt(nl - 1) === 13 ? nl - 1 : nl);
      start = nl + 1;
      this.lines.push(line);
      if (line.length < 4 || line.charCodeAt(3) !== 45 /* '-' */) {
        const reply = this.lines.length === 1 ? line : this.lines.join('\n');
        this.lines = [];
        this.lastReply = reply;
        const w = this.waiters.shift();
        if (w) w.resolve(reply);
        else this.replies.push(reply);
      }
    }
    this.buf = start === 0 ? this.buf : this.buf.slice(start);
  }

  fail(err: Error): void {
    if (this.error) return;
    this.error = err;
    for (const w of this.waiters.splice(0)) w.reject(err);
  }

  read(): Promise<string> {
    const r = this.replies.shift();
    if (r !== undefined) return Promise.resolve(r);
    if (this.error) return Promise.reject(this.error);
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }
}

interface Conn {
  socket: net.Socket;
  reader: ReplyReader;
  pipelining: boolean;
  closed: boolean;
  closeReason: string;
}

function connect(host: string, port: number, timeoutMs: number): Promise<Conn> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host, port, noDelay: true });
    const reader = new ReplyReader(socket);
    const conn: Conn = { socket, reader, pipelining: false, closed: false, closeReason: '' };
    let connected = false;
    socket.setTimeout(timeoutMs, () => socket.destroy(new Error(`timeout after ${timeoutMs} ms`)));
    socket.on('error', (err) => {
      conn.closeReason ||= err.message;
      if (!connected) reject(err);
    });
    socket.on('close', () => {
      conn.closed = true;
      const last = reader.lastReply;
      reader.fail(
        new ConnectionClosedError(
          `connection closed${conn.closeReason ? ': ' + conn.closeReason : ''}${last ? ` (last reply: ${last})` : ''}`,
        ),
      );
    });
    socket.once('connect', () => {
      connected = true;
      resolve(conn);
    });
  });
}

/** Deterministic filler text: lines of 76 characters, none starting with '.'. */
function makeFiller(bytes: number): string {
  const words =
    'lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore et dolore magna aliqua ut enim ad minim veniam quis nostrud exercitation ullamco laboris nisi aliquip ex ea commodo consequat'.split(
      ' ',
    );
  const lines: string[] = [];
  let total = 0;
  let w = 0;
  while (total < bytes) {
    let line = '';
    while (line.length < 76) {
      const word = words[w++ % words.length]!;
      line += (line ? ' ' : '') + word;
    }
    line = line.slice(0, 76);
    lines.push(line);
    total += 78;
  }
  return lines.join('\r\n') + '\r\n';
}

function rfc2822Date(d: Date): string {
  const days = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'];
  const months = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];
  const p = (n: number): string => String(n).padStart(2, '0');
  return `${days[d.getUTCDay()]}, ${p(d.getUTCDate())} ${months[d.getUTCMonth()]} ${d.getUTCFullYear()} ${p(d.getUTCHours())}:${p(d.getUTCMinutes())}:${p(d.getUTCSeconds())} +0000`;
}

/** Dot-stuffing (lines starting with '.' get another '.'); content uses CRLF. */
function dotStuff(s: string): string {
  if (!s.startsWith('.') && !s.includes('\n.')) return s;
  return (s.startsWith('.') ? '.' : '') + s.replace(/\n\./g, '\n..');
}

function isPositive(reply: string): boolean {
  return reply.charCodeAt(0) === 50; // '2'
}

function sleep(ms: number, unref = false): Promise<void> {
  return new Promise((r) => {
    const t = setTimeout(r, ms);
    if (unref) t.unref();
  });
}

export async function runLoad(opts: LoadOptions): Promise<LoadResult> {
  const size = opts.size ?? 5120;
  const nConn = Math.max(1, Math.min(opts.connections ?? 10, opts.count || 1));
  const from = opts.from ?? 'sender@bench.tern.test';
  const recipientsOf = opts.recipients ?? ((n: number) => [`user${n}@sink.tern.test`]);
  const idPrefix = opts.idPrefix ?? crypto.randomBytes(6).toString('hex');
  const perConn = opts.messagesPerConnection && opts.messagesPerConnection > 0 ? opts.messagesPerConnection : Infinity;
  const ehloName = opts.ehloName ?? 'loadgen.bench.tern.test';
  const timeoutMs = opts.timeoutMs ?? 30000;
  const maxConnectFailures = opts.maxConnectFailures ?? 10;
  const filler = makeFiller(size + 200);

  const result: LoadResult = {
    sent: 0,
    accepted: 0,
    failed: 0,
    acceptedIds: [],
    failures: [],
    rcptFailures: [],
    connectionErrors: [],
    connectionsOpened: 0,
    ackAt: new Map(),
    sentAt: new Map(),
    durationMs: 0,
    rate: 0,
  };

  let next = 0;
  let dateCache = { at: 0, value: '' };
  const dateHeader = (): string => {
    const t = Date.now();
    if (t - dateCache.at >= 1000) dateCache = { at: t - (t % 1000), value: rfc2822Date(new Date(t)) };
    return dateCache.value;
  };

  // the filler part of a message depends only on its length: made (and dot-stuffed, and encoded) once per length,
  // so the generator spends its time sending, not building 5 KB strings
  const bodies = new Map<number, Buffer>();
  const bodyOf = (need: number): Buffer => {
    let cached = bodies.get(need);
    if (!cached) {
      const full = Math.floor(need / 78);
      const rest = need % 78;
      let body = filler.slice(0, full * 78);
      if (rest > 2) body += filler.slice(full * 78, full * 78 + rest - 2) + '\r\n';
      if (body.length === 0) body = '\r\n';
      cached = Buffer.from(dotStuff(body) + '.\r\n', 'latin1');
      bodies.set(need, cached);
    }
    return cached;
  };

  /** The message's header block (dot-stuffed) and its body with the end-of-data line. */
  const buildMessage = (n: number, id: string, rcpts: string[]): { head: string; body: Buffer } => {
    const headers =
      `Message-ID: ${id}\r\n` +
      `X-Bench-Id: ${id}\r\n` +
      `Date: ${dateHeader()}\r\n` +
      `From: <${from}>\r\n` +
      `To: ${rcpts.map((r) => `<${r}>`).join(`,\r\n `)}\r\n` + // folded: one address a line keeps lines under 998 octets
      `Subject: Tern bench message ${n}\r\n` +
      `MIME-Version: 1.0\r\n` +
      `Content-Type: text/plain; charset=us-ascii\r\n` +
      `\r\n`;
    return { head: dotStuff(headers), body: bodyOf(Math.max(0, size - headers.length)) };
  };

  const fail = (id: string, reply: string): void => {
    result.failed++;
    result.failures.push({ id, reply });
  };

  /** Sends one message on an open session; returns false when the connection is gone. */
  const sendOne = async (conn: Conn, n: number, rset: boolean): Promise<{ alive: boolean; ok: boolean }> => {
    const id = `<${idPrefix}.${n}@bench.tern.test>`;
    const rcpts = recipientsOf(n);
    const cmds: string[] = [];
    if (rset) cmds.push('RSET\r\n');
    cmds.push(`MAIL FROM:<${from}>\r\n`);
    for (const r of rcpts) cmds.push(`RCPT TO:<${r}>\r\n`);
    cmds.push('DATA\r\n');
    result.sent++;
    result.sentAt.set(id, now());
    try {
      const replies: string[] = [];
      if (conn.pipelining) {
        conn.socket.write(cmds.join(''));
        for (let i = 0; i < cmds.length; i++) replies.push(await conn.reader.read());
      } else {
        let rcptOk = 0;
        for (const cmd of cmds) {
          if (cmd === 'DATA\r\n' && rcptOk === 0) break;
          conn.socket.write(cmd);
          const reply = await conn.reader.read();
          replies.push(reply);
          if (cmd.startsWith('MAIL') && !isPositive(reply)) break;
          if (cmd.startsWith('RCPT') && isPositive(reply)) rcptOk++;
        }
      }
      let firstError = '';
      let mailOk = false;
      let rcptOk = 0;
      let dataReply = '';
      let closing = false;
      for (let i = 0; i < replies.length; i++) {
        const cmd = cmds[i]!;
        const reply = replies[i]!;
        if (reply.startsWith('421')) closing = true;
        if (cmd.startsWith('RSET')) continue;
        if (cmd.startsWith('MAIL')) {
          mailOk = isPositive(reply);
          if (!mailOk) firstError ||= reply;
        } else if (cmd.startsWith('RCPT')) {
          if (isPositive(reply)) rcptOk++;
          else {
            result.rcptFailures.push({ id, rcpt: cmd.slice(9, -3), reply });
            firstError ||= reply;
          }
        } else {
          dataReply = reply;
        }
      }
      if (!dataReply.startsWith('354')) {
        fail(id, firstError || dataReply || 'DATA not sent');
        return { alive: !conn.closed && !closing, ok: false };
      }
      if (!mailOk || rcptOk === 0) {
        // the server said 354 without a valid envelope: end the transaction with an empty body
        conn.socket.write('.\r\n');
        await conn.reader.read();
        fail(id, firstError);
        return { alive: !conn.closed && !closing, ok: false };
      }
      const message = buildMessage(n, id, rcpts);
      conn.socket.cork();
      conn.socket.write(message.head);
      conn.socket.write(message.body);
      conn.socket.uncork();
      const final = await conn.reader.read();
      if (isPositive(final)) {
        result.accepted++;
        result.acceptedIds.push(id);
        result.ackAt.set(id, now());
        return { alive: true, ok: true };
      }
      fail(id, final);
      return { alive: !conn.closed && !final.startsWith('421'), ok: false };
    } catch (err) {
      fail(id, err instanceof Error ? err.message : String(err));
      return { alive: false, ok: false };
    }
  };

  /** Opens and prepares a session; throws with a reason on failure. */
  const openSession = async (): Promise<Conn> => {
    result.connectionsOpened++;
    const conn = await connect(opts.host, opts.port, timeoutMs);
    try {
      const greeting = await conn.reader.read();
      if (!isPositive(greeting)) throw new Error(`greeting: ${greeting}`);
      conn.socket.write(`EHLO ${ehloName}\r\n`);
      const ehlo = await conn.reader.read();
      if (!isPositive(ehlo)) throw new Error(`EHLO: ${ehlo}`);
      conn.pipelining = /^250[ -]PIPELINING\b/im.test(ehlo);
      if (opts.auth) {
        const token = Buffer.from(`\0${opts.auth.user}\0${opts.auth.pass}`, 'utf8').toString('base64');
        conn.socket.write(`AUTH PLAIN ${token}\r\n`);
        const auth = await conn.reader.read();
        if (!auth.startsWith('235')) throw new Error(`AUTH: ${auth}`);
      }
      return conn;
    } catch (err) {
      conn.socket.destroy();
      throw err;
    }
  };

  const quit = async (conn: Conn): Promise<void> => {
    if (conn.closed) return;
    try {
      conn.socket.write('QUIT\r\n');
      await Promise.race([conn.reader.read(), sleep(1000, true)]);
    } catch {
      /* ignore */
    }
    conn.socket.destroy();
  };

  const worker = async (): Promise<void> => {
    let consecutiveFailures = 0;
    while (next < opts.count) {
      let conn: Conn;
      try {
        conn = await openSession();
        consecutiveFailures = 0;
      } catch (err) {
        const reason = err instanceof Error ? err.message : String(err);
        result.connectionErrors.push(reason);
        if (++consecutiveFailures >= maxConnectFailures) return;
        await sleep(Math.min(1000, 20 * 2 ** consecutiveFailures));
        continue;
      }
      let onThis = 0;
      let rset = false;
      while (next < opts.count && onThis < perConn && !conn.closed) {
        const n = next++;
        onThis++;
        const r = await sendOne(conn, n, rset);
        if (!r.alive) break;
        rset = !r.ok;
      }
      if (conn.closed) conn.socket.destroy();
      else await quit(conn);
    }
  };

  const started = now();
  await Promise.all(Array.from({ length: nConn }, () => worker()));
  result.durationMs = now() - started;
  result.rate = result.durationMs > 0 ? (result.accepted * 1000) / result.durationMs : 0;
  return result;
}

// ---------------------------------------------------------------- CLI

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      host: { type: 'string', default: '127.0.0.1' },
      port: { type: 'string', default: '2525' },
      count: { type: 'string', default: '10000' },
      size: { type: 'string', default: '5120' },
      connections: { type: 'string', default: '10' },
      user: { type: 'string' },
      pass: { type: 'string' },
      from: { type: 'string' },
      'id-prefix': { type: 'string' },
      'per-connection': { type: 'string' },
    },
    strict: true,
  });
  const res = await runLoad({
    host: values.host,
    port: Number(values.port),
    count: Number(values.count),
    size: Number(values.size),
    connections: Number(values.connections),
    auth: values.user !== undefined ? { user: values.user, pass: values.pass ?? '' } : undefined,
    from: values.from,
    idPrefix: values['id-prefix'],
    messagesPerConnection: values['per-connection'] ? Number(values['per-connection']) : undefined,
  });
  const latencies: number[] = [];
  for (const [id, ack] of res.ackAt) {
    const sent = res.sentAt.get(id);
    if (sent !== undefined) latencies.push(ack - sent);
  }
  latencies.sort((a, b) => a - b);
  const reasons: Record<string, number> = {};
  for (const f of res.failures) reasons[f.reply] = (reasons[f.reply] ?? 0) + 1;
  const round = (x: number): number => Math.round(x * 100) / 100;
  process.stdout.write(
    JSON.stringify({
      sent: res.sent,
      accepted: res.accepted,
      failed: res.failed,
      durationMs: Math.round(res.durationMs),
      rate: Math.round(res.rate),
      connectionsOpened: res.connectionsOpened,
      latencyMs: { p50: round(percentile(latencies, 50)), p99: round(percentile(latencies, 99)), max: round(latencies.at(-1) ?? 0) },
      failureReasons: reasons,
      rcptFailures: res.rcptFailures.length,
      connectionErrors: res.connectionErrors.slice(0, 10),
    }) + '\n',
  );
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((err: unknown) => {
    process.stderr.write(`loadgen: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  });
}
