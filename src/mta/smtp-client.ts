/**
 * One outbound SMTP connection (RFC 5321), written for the delivery hot path:
 * - the envelope is pipelined whole (RFC 2920): MAIL FROM, every RCPT TO and DATA go out in one write, so a
 *   message costs two round trips (envelope → 354, content → final reply) instead of four;
 * - the content goes out in one write with its terminator, dot-stuffed by a scan that copies nothing when no
 *   line starts with a dot (the common case), and may come in pieces (an added header, then the spooled body);
 * - STARTTLS (opportunistic, required or off), AUTH PLAIN/LOGIN for routes through an upstream provider.
 *
 * nodemailer's SMTPConnection did this job before: it waits for each command's reply before the next (MAIL,
 * then RCPT, then DATA) and dot-stuffs through a Transform stream per message. With the bench sink in the same process,
 * client and sink used 118–146 µs of CPU per message with it and 79–85 µs with this client (bench/client.ts;
 * bench/RESULTS.md, 2026-12-04).
 */
import net from 'node:net';
import tls from 'node:tls';
import { isLoopback } from '../core/net.js';

export type TlsPolicy = 'opportunistic' | 'required' | 'none';

export interface ConnectOptions {
  /** IP address to connect to */
  address: string;
  port: number;
  /** host name for TLS SNI and certificate checks */
  servername: string;
  localAddress?: string;
  ehlo: string;
  tls: TlsPolicy;
  /** trusted CAs for certificate checks (the operator's extra CAs); default: Node's list */
  secureContext?: tls.SecureContext;
  auth?: { user: string; pass: string };
  connectTimeoutMs: number;
  commandTimeoutMs: number;
  dataTimeoutMs: number;
}

/** A reply or failure from the remote side. `code` is absent for network failures (always temporary). */
export class DeliveryError extends Error {
  constructor(
    message: string,
    public readonly response: string,
    public readonly code: number | null,
    /** true when nothing was said by the server: the connection failed */
    public readonly network: boolean,
  ) {
    super(message);
    this.name = 'DeliveryError';
  }
  /** set when the connection failed while setting up TLS: STARTTLS refused, or the handshake or certificate check failed */
  tlsFailure?: { starttls: boolean; code?: string };
  get permanent(): boolean {
    return this.code !== null && this.code >= 500;
  }
}

export interface SendResult {
  accepted: string[];
  /** per-recipient refusals: address → reply */
  rejected: Map<string, { response: string; code: number | null }>;
  response: string;
}

/** One reply: its code, its lines joined by a space (the form events and the classifier read), and the lines. */
interface Reply {
  code: number;
  text: string;
  lines: string[];
}

/** Longest reply line accepted (RFC 5321 allows 512 octets; servers exceed it, a hostile one without end). */
const MAX_REPLY_LINE = 8192;
/** Most lines in one multi-line reply (an EHLO reply has a dozen). */
const MAX_REPLY_LINES = 200;
const DOT = 0x2e;
const CRLF_DOT_CRLF = Buffer.from('\r\n.\r\n', 'latin1');
const DOT_CRLF = CRLF_DOT_CRLF.subarray(2);

const replyError = (what: string, r: Reply) => new DeliveryError(`${what}: ${r.text}`, r.text, r.code, false);
const isPositive = (r: Reply) => r.code >= 200 && r.code < 400;

/**
 * The message content as it goes on the wire: each line that starts with a dot gets another one (RFC 5321
 * §4.5.2). `atLineStart`: the piece starts a line. A piece with no such line is returned as it is.
 */
export function dotStuff(piece: Buffer, atLineStart: boolean): Buffer {
  const starts: number[] = [];
  if (atLineStart && piece.length && piece[0] === DOT) starts.push(0);
  for (let at = piece.indexOf('\n.', 0, 'latin1'); at !== -1; at = piece.indexOf('\n.', at + 2, 'latin1')) starts.push(at + 1);
  if (!starts.length) return piece;
  const out = Buffer.allocUnsafe(piece.length + starts.length);
  let from = 0;
  let o = 0;
  for (const s of starts) {
    o += piece.copy(out, o, from, s);
    out[o++] = DOT;
    from = s;
  }
  piece.copy(out, o, from);
  return out;
}

/** Reads replies off a socket, in order, and hands each to the next waiter. */
class ReplyReader {
  private partial = '';
  private lines: string[] = [];
  private readonly ready: Reply[] = [];
  private readonly waiters: Array<{ resolve: (r: Reply) => void; reject: (e: DeliveryError) => void }> = [];
  private failure: DeliveryError | null = null;
  /** the last reply read (a 421 sent just before the server closed is reported instead of "connection closed") */
  last: Reply | null = null;

  /** Returns an error when the server's output breaks the protocol's bounds. */
  feed(chunk: Buffer): DeliveryError | null {
    let text = this.partial + chunk.toString('latin1');
    let start = 0;
    for (let nl = text.indexOf('\n'); nl !== -1; nl = text.indexOf('\n', start)) {
      const line = text.slice(start, nl > start && text.charCodeAt(nl - 1) === 13 ? nl - 1 : nl);
      start = nl + 1;
      if (line.length > MAX_REPLY_LINE) return this.broken('a reply line longer than 8192 octets');
      const code = Number(line.slice(0, 3));
      if (line.length < 3 || !(code >= 200 && code <= 599) || (line.length > 3 && line[3] !== ' ' && line[3] !== '-'))
        return this.broken(`an unreadable reply line "${line.slice(0, 80)}"`);
      this.lines.push(line);
      if (this.lines.length > MAX_REPLY_LINES) return this.broken('a reply of more than 200 lines');
      if (line[3] === '-') continue;
      const reply = { code, text: this.lines.length === 1 ? line : this.lines.join(' '), lines: this.lines };
      this.lines = [];
      this.last = reply;
      const w = this.waiters.shift();
      if (w) w.resolve(reply);
      else this.ready.push(reply);
    }
    text = text.slice(start);
    if (text.length > MAX_REPLY_LINE) return this.broken('a reply line longer than 8192 octets');
    this.partial = text;
    return null;
  }

  private broken(what: string): DeliveryError {
    return new DeliveryError(`protocol error: the server sent ${what}`, `451 4.5.0 Protocol error: the server sent ${what}`, null, true);
  }

  /** Forgets anything read but not yet asked for (what a server pipelined before a TLS handshake must not be believed). */
  discard(): void {
    this.partial = '';
    this.lines = [];
    this.ready.length = 0;
  }

  next(): Promise<Reply> {
    const r = this.ready.shift();
    if (r) return Promise.resolve(r);
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }

  fail(err: DeliveryError): void {
    this.failure ??= err;
    for (const w of this.waiters.splice(0)) w.reject(this.failure);
  }
}

/** What the server said it supports in its EHLO reply. */
interface Extensions {
  pipelining: boolean;
  eightBitMime: boolean;
  smtpUtf8: boolean;
  starttls: boolean;
  /** 0: no limit given */
  size: number | null;
  auth: Set<string>;
}

const NONE: Extensions = { pipelining: false, eightBitMime: false, smtpUtf8: false, starttls: false, size: null, auth: new Set() };

function parseEhlo(reply: Reply): Extensions {
  const ext: Extensions = { ...NONE, auth: new Set() };
  // the lines after the greeting line, each "250-KEYWORD params" or "250 KEYWORD params"
  for (const line of reply.lines.slice(1)) {
    const [keyword = '', ...params] = line.slice(4).trim().split(/\s+/);
    switch (keyword.toUpperCase()) {
      case 'PIPELINING':
        ext.pipelining = true;
        break;
      case '8BITMIME':
        ext.eightBitMime = true;
        break;
      case 'SMTPUTF8':
        ext.smtpUtf8 = true;
        break;
      case 'STARTTLS':
        ext.starttls = true;
        break;
      case 'SIZE':
        ext.size = Number(params[0]) || 0;
        break;
      case 'AUTH':
        for (const m of params) ext.auth.add(m.toUpperCase());
        break;
    }
  }
  return ext;
}

function networkError(err: NodeJS.ErrnoException, during: string): DeliveryError {
  const code = err.code ?? 'ESOCKET';
  return new DeliveryError(`${during}: ${err.message}`, `${code} ${err.message}`, null, true);
}

export class OutboundConnection {
  private socket: net.Socket;
  private reader = new ReplyReader();
  private ext: Extensions = NONE;
  private closed = false;
  private encrypted = false;

  private constructor(
    socket: net.Socket,
    private readonly opts: ConnectOptions,
  ) {
    this.socket = socket;
    this.attach(socket);
  }

  /** Reads replies from `socket` and fails every waiter when it goes away. */
  private attach(socket: net.Socket): void {
    socket.on('data', (chunk: Buffer) => {
      const broken = this.reader.feed(chunk);
      if (broken) this.fail(broken);
      else if (this.reader.last?.code === 421 && !this.closed) {
        // the server is closing the session (RFC 5321 §3.8): nothing more goes on this connection
        this.closed = true;
        socket.end();
      }
    });
    socket.on('error', (err) => this.fail(networkError(err, 'connection failed')));
    socket.on('close', () => this.fail(this.closedError()));
    socket.on('timeout', () => this.fail(new DeliveryError('timeout waiting for the server', 'ETIMEDOUT Timeout waiting for the server', null, true)));
  }

  /** The connection went away: what the operation waiting on it learns. */
  private closedError(): DeliveryError {
    const last = this.reader.last;
    // a server that said 421 (or any refusal) just before closing: that reply is the reason
    if (last && last.code >= 400) return new DeliveryError('connection closed', last.text, last.code, false);
    return new DeliveryError('connection closed', '421 4.4.2 Connection closed unexpectedly', null, true);
  }

  private fail(err: DeliveryError): void {
    this.closed = true;
    this.reader.fail(err);
    this.socket.destroy();
  }

  secure(): boolean {
    return this.encrypted;
  }

  /** TLS state of the session: whether STARTTLS happened and whether the certificate verified (and if not, why). */
  tlsState(): { secure: boolean; authorized: boolean; error: string | null } {
    const s = this.socket as tls.TLSSocket;
    const error = this.encrypted ? (s.authorizationError as unknown as Error | string | null) : null;
    return { secure: this.encrypted, authorized: this.encrypted && s.authorized, error: error ? String((error as { code?: string }).code ?? error) : null };
  }

  get usable(): boolean {
    return !this.closed;
  }

  private command(line: string): Promise<Reply> {
    this.socket.write(line + '\r\n');
    return this.reader.next();
  }

  static async open(opts: ConnectOptions): Promise<OutboundConnection> {
    const socket = net.connect({
      host: opts.address,
      port: opts.port,
      ...(opts.localAddress && opts.localAddress !== '0.0.0.0' ? { localAddress: opts.localAddress } : {}),
      noDelay: true,
    });
    const conn = new OutboundConnection(socket, opts);
    // connecting and the greeting share one deadline; after that the socket's inactivity timeout applies
    const deadline = setTimeout(() => conn.fail(new DeliveryError('timeout connecting to the server', 'ETIMEDOUT Timeout connecting to the server', null, true)), opts.connectTimeoutMs);
    try {
      const greeting = await conn.reader.next();
      clearTimeout(deadline);
      socket.setTimeout(Math.max(opts.commandTimeoutMs, opts.dataTimeoutMs));
      if (greeting.code !== 220) throw replyError('greeting refused', greeting);
      await conn.hello();
      if (opts.auth) await conn.authenticate(opts.auth);
      return conn;
    } catch (err) {
      clearTimeout(deadline);
      conn.destroy();
      throw err;
    }
  }

  /** EHLO (HELO when refused), then STARTTLS as the policy asks and EHLO again over TLS. */
  private async hello(): Promise<void> {
    const { opts } = this;
    const ehlo = await this.command(`EHLO ${opts.ehlo}`);
    if (ehlo.code === 421) throw replyError('EHLO refused', ehlo);
    if (ehlo.code !== 250) {
      if (opts.tls === 'required') throw Object.assign(replyError('EHLO refused, and HELO cannot start TLS', ehlo), { tlsFailure: { starttls: true } });
      const helo = await this.command(`HELO ${opts.ehlo}`);
      if (helo.code !== 250) throw replyError('HELO refused', helo);
      this.ext = NONE;
      return;
    }
    this.ext = parseEhlo(ehlo);
    // required: asked even when not offered, so that the refusal is the server's own words
    if (opts.tls === 'none' || (opts.tls === 'opportunistic' && !this.ext.starttls)) return;
    const reply = await this.command('STARTTLS');
    if (reply.code !== 220) {
      if (opts.tls === 'required') throw Object.assign(replyError('STARTTLS refused', reply), { tlsFailure: { starttls: true } });
      return; // opportunistic: the session goes on in clear with what the first EHLO announced
    }
    await this.upgrade();
    const again = await this.command(`EHLO ${opts.ehlo}`);
    if (again.code !== 250) throw replyError('EHLO after STARTTLS refused', again);
    this.ext = parseEhlo(again);
  }

  private upgrade(): Promise<void> {
    const { opts } = this;
    const raw = this.socket;
    raw.removeAllListeners('data');
    raw.removeAllListeners('timeout');
    raw.setTimeout(0);
    // STARTTLS injection: nothing the server sent before the handshake may be read as a reply after it
    this.reader.discard();
    return new Promise((resolve, reject) => {
      const secure = tls.connect({
        socket: raw,
        ...(net.isIP(opts.servername) ? {} : { servername: opts.servername }),
        host: opts.servername,
        // opportunistic TLS encrypts against passive reading; an unverifiable certificate is not a reason to send in clear
        rejectUnauthorized: opts.tls === 'required',
        ...(opts.secureContext ? { secureContext: opts.secureContext } : {}),
      });
      const handshakeTimer = setTimeout(() => secure.destroy(Object.assign(new Error('TLS handshake timed out'), { code: 'ETIMEDOUT' })), opts.connectTimeoutMs);
      const failed = (err: NodeJS.ErrnoException) => {
        clearTimeout(handshakeTimer);
        const e = new DeliveryError(`TLS handshake failed: ${err.message}`, `${err.code ?? 'ETLS'} ${err.message}`, null, true);
        e.tlsFailure = { starttls: false, code: err.code };
        this.fail(e);
        reject(e);
      };
      secure.once('error', failed);
      secure.once('secureConnect', () => {
        clearTimeout(handshakeTimer);
        secure.removeListener('error', failed);
        this.socket = secure;
        this.encrypted = true;
        secure.setTimeout(Math.max(opts.commandTimeoutMs, opts.dataTimeoutMs));
        this.attach(secure);
        resolve();
      });
    });
  }

  /** AUTH PLAIN, else LOGIN. Credentials go only over TLS, or to a server on this machine. */
  private async authenticate(auth: { user: string; pass: string }): Promise<void> {
    if (!this.encrypted && !isLoopback(this.opts.address))
      throw new DeliveryError('AUTH needs TLS', `454 4.7.0 Not sending credentials to ${this.opts.servername} over an unencrypted connection; it did not offer STARTTLS`, null, false);
    const b64 = (s: string) => Buffer.from(s, 'utf8').toString('base64');
    let reply: Reply;
    if (this.ext.auth.has('PLAIN') || !this.ext.auth.has('LOGIN')) {
      reply = await this.command(`AUTH PLAIN ${b64(`\u0000${auth.user}\u0000${auth.pass}`)}`);
    } else {
      reply = await this.command('AUTH LOGIN');
      if (reply.code === 334) reply = await this.command(b64(auth.user));
      if (reply.code === 334) reply = await this.command(b64(auth.pass));
    }
    if (reply.code !== 235) throw replyError('authentication failed', reply);
  }

  /**
   * Sends one transaction. `content` is the message (CRLF line ends), whole or in pieces that each end a line
   * but the last. Resolves with each recipient's answer when the message was accepted for some, or refused
   * for all at RCPT; rejects with DeliveryError when the whole transaction failed.
   */
  async send(from: string, to: string[], content: Buffer | Buffer[], opts: { utf8: boolean; size: number }): Promise<SendResult> {
    if (this.closed) throw this.closedError();
    const { ext } = this;
    if (opts.utf8 && !ext.smtpUtf8)
      throw new DeliveryError('SMTPUTF8 needed', '553 5.6.7 The message needs SMTPUTF8 (an address is not ASCII) and the server does not offer it', 553, false);
    if (ext.size && opts.size > ext.size)
      throw new DeliveryError('message too big', `552 5.3.4 The message (${opts.size} bytes) is larger than the server's limit of ${ext.size} bytes`, 552, false);
    // addresses come validated from the spool; a line break in one would be a command of its own
    if (/[\r\n<>]/.test(from) || to.some((r) => /[\r\n<>]/.test(r)))
      throw new DeliveryError('bad envelope', '501 5.1.3 An envelope address contains a line break or angle bracket', 501, false);
    const mail = `MAIL FROM:<${from}>${ext.size !== null ? ` SIZE=${opts.size}` : ''}${ext.eightBitMime ? ' BODY=8BITMIME' : ''}${opts.utf8 ? ' SMTPUTF8' : ''}`;
    const rcpts = to.map((r) => `RCPT TO:<${r}>`);

    let mailReply: Reply;
    const rcptReplies: Reply[] = [];
    let dataReply: Reply | null = null;
    if (ext.pipelining) {
      this.socket.write(`${mail}\r\n${rcpts.join('\r\n')}\r\nDATA\r\n`);
      mailReply = await this.reader.next();
      for (let i = 0; i < rcpts.length; i++) rcptReplies.push(await this.reader.next());
      dataReply = await this.reader.next();
    } else {
      mailReply = await this.command(mail);
      if (!isPositive(mailReply)) throw replyError('MAIL FROM refused', mailReply);
      for (const r of rcpts) rcptReplies.push(await this.command(r));
      if (rcptReplies.some(isPositive)) dataReply = await this.command('DATA');
    }

    const accepted: string[] = [];
    const rejected = new Map<string, { response: string; code: number | null }>();
    to.forEach((r, i) => {
      const reply = rcptReplies[i]!;
      if (isPositive(reply)) accepted.push(r);
      else rejected.set(r, { response: reply.text, code: reply.code });
    });

    if (dataReply?.code === 354 && (!isPositive(mailReply) || !accepted.length)) {
      // a server that said 354 although nobody is to receive it: end the empty transaction, send nothing
      await this.command('.');
      dataReply = null;
    }
    if (!isPositive(mailReply)) throw replyError('MAIL FROM refused', mailReply);
    if (!accepted.length) return { accepted, rejected, response: '' };
    if (dataReply!.code !== 354) throw replyError('DATA refused', dataReply!);

    const pieces = Array.isArray(content) ? content : [content];
    const socket = this.socket;
    socket.cork();
    let atLineStart = true;
    let last: Buffer | undefined;
    for (const piece of pieces) {
      if (!piece.length) continue;
      socket.write(dotStuff(piece, atLineStart));
      atLineStart = piece[piece.length - 1] === 0x0a;
      last = piece;
    }
    socket.write(!last || (last.length >= 2 && last[last.length - 2] === 0x0d && last[last.length - 1] === 0x0a) ? DOT_CRLF : CRLF_DOT_CRLF);
    socket.uncork(); // one write for the whole content
    const final = await this.reader.next();
    if (final.code !== 250) throw replyError('message refused', final);
    return { accepted, rejected, response: final.text };
  }

  async reset(): Promise<void> {
    if (this.closed) throw this.closedError();
    const reply = await this.command('RSET');
    if (reply.code !== 250) throw replyError('RSET refused', reply);
  }

  quit(): void {
    if (this.closed) return;
    this.closed = true;
    this.reader.fail(new DeliveryError('connection closed', '421 4.4.2 Connection closed by us', null, true));
    if (this.socket.writable) this.socket.end('QUIT\r\n');
    // a server that never closes its side is not waited for
    setTimeout(() => this.socket.destroy(), 5000).unref();
  }

  destroy(): void {
    this.closed = true;
    this.socket.destroy();
  }
}
