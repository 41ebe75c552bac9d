/**
 * A fast SMTP sink for benchmarks and tests (module + CLI).
 *
 * Hand-written on `node:net` (no smtp-server) so that it is never the
 * bottleneck: one core handles well over 10,000 small messages per second on
 * loopback.
 *
 * Behaviour:
 *  - greeting `220`, then EHLO/HELO, MAIL FROM, RCPT TO, DATA, RSET, NOOP,
 *    QUIT and (when a key/cert is given) STARTTLS; anything else gets `502`;
 *  - EHLO advertises PIPELINING, 8BITMIME, SMTPUTF8, ENHANCEDSTATUSCODES, SIZE
 *    and STARTTLS (only when `tls` is given and the session is not yet secure);
 *  - pipelined input is handled: many commands in one chunk, and message
 *    content arriving in the same chunk as the DATA command;
 *  - message content is read up to `\r\n.\r\n` and dot-stuffing is undone;
 *  - replies produced while handling one chunk are sent in a single write;
 *  - a `decide` hook may override the reply at 'connect', 'mail', 'rcpt' and
 *    'data'. A 4xx/5xx at 'connect' is sent as the greeting, then the socket
 *    is closed. Any `421` reply (at any stage) also closes the connection,
 *    as a real server does;
 *  - `tempfailFraction` / `permfailFraction` fail a deterministic share of the
 *    message ids (hash of the id mapped to [0,1)): ids in [0, permfail) get
 *    `550 5.7.1 Rejected by sink` on every attempt, ids in
 *    [permfail, permfail + tempfail) get `451 4.3.0 Try again later` on their
 *    first attempt ('first-attempt', the default) or on every attempt
 *    ('always'). Messages without an id are never failed by the fractions.
 *
 * CLI: `npx tsx bench/sink.ts --port 2525 [--host 127.0.0.1] [--tempfail 0.1]
 *   [--permfail 0.01] [--fail-mode always] [--tls-key key.pem --tls-cert cert.pem]
 *   [--max-size bytes]`
 * prints `{"listening":{"host","port"}}`, then once per second (only while the
 * counts change) `{"accepted","rejected","rate","connections"}`.
 */
import net from 'node:net';
import tls from 'node:tls';
import fs from 'node:fs';
import { EventEmitter } from 'node:events';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

export interface SinkDecisionContext {
  stage: 'connect' | 'mail' | 'rcpt' | 'data';
  remoteAddress: string;
  localPort: number;
  from?: string;
  /** For 'rcpt': the recipient being added is the last element. */
  to?: string[];
  /** Value of the id header ('data' only), null when the message has none. */
  id?: string | null;
  /** 'data' only: how many times this id was seen at 'data' so far, including this time (starts at 1). */
  attempt?: number;
}

export interface SinkOptions {
  /** Default 127.0.0.1 */
  host?: string;
  /** Default 0 = a random free port */
  port?: number;
  /** Header whose value identifies a message, default 'Message-ID' */
  idHeader?: string;
  /** 0..1: share of message ids answered `451 4.3.0 Try again later` at the end of DATA */
  tempfailFraction?: number;
  /** 0..1: share of message ids answered `550 5.7.1 Rejected by sink` at the end of DATA */
  permfailFraction?: number;
  /** Default 'first-attempt': a tempfailed id is accepted when it comes again */
  failMode?: 'first-attempt' | 'always';
  /**
   * Return a full reply line (e.g. '421 4.7.0 Try again later') to override the
   * normal reply; undefined keeps the normal behaviour.
   */
  decide?: (ctx: SinkDecisionContext) => string | undefined;
  /** Keep each accepted message's content (after dot-unstuffing) in memory */
  keep?: boolean;
  /** Offer STARTTLS with this key/cert */
  tls?: { key: string | Buffer; cert: string | Buffer } | false;
  /** Advertised with SIZE; larger messages get `552 5.3.4`. Default 50 MiB */
  maxMessageSize?: number;
}

export interface SinkMessage {
  id: string | null;
  from: string;
  to: string[];
  remoteAddress: string;
  /** Bytes of content after dot-unstuffing (without the final `.\r\n`) */
  size: number;
  /** Epoch ms (performance.timeOrigin + performance.now()) when the 250 was queued */
  receivedAt: number;
  tls: boolean;
  connectionId: number;
  data?: Buffer;
}

export interface SinkConnectionInfo {
  id: number;
  remoteAddress: string;
  openedAt: number;
  closedAt?: number;
  /** Messages accepted on this connection */
  messages: number;
  tls: boolean;
}

export interface Sink {
  host: string;
  port: number;
  /** Messages accepted (250 after DATA) */
  accepted: number;
  /** Messages answered 4xx/5xx at the end of DATA */
  rejected: number;
  /** Every accepted message (data only with `keep`) */
  messages: SinkMessage[];
  /** Accepted count per id */
  idCounts: Map<string, number>;
  connections: SinkConnectionInfo[];
  openConnections: number;
  maxOpenConnections: number;
  on(event: 'message', fn: (m: SinkMessage) => void): void;
  /** Resolves once pred() is true; rejects with a descriptive error after timeoutMs. */
  waitFor(pred: () => boolean, timeoutMs: number): Promise<void>;
  /** Stops listening and destroys open sockets. */
  close(): Promise<void>;
}

const CRLF_DOT_CRLF = Buffer.from('\r\n.\r\n');
const VIRTUAL_PREFIX = Buffer.from('\r\n');
const MAX_LINE = 64 * 1024;
const DEFAULT_MAX_SIZE = 50 * 1024 * 1024;
const HOSTNAME = 'sink.tern.test';

function now(): number {
  return performance.timeOrigin + performance.now();
}

export function normalizeAddress(addr: string | undefined): string {
  if (!addr) return '';
  return addr.startsWith('::ffff:') ? addr.slice(7) : addr;
}

/** Deterministic hash of a string to [0, 1): FNV-1a 32 followed by the murmur3 finaliser. */
export function idFraction(id: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < id.length; i++) {
    h ^= id.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return (h >>> 0) / 4294967296;
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/** Undo SMTP dot-stuffing: a leading '.' on any line is removed. */
function unstuff(buf: Buffer): Buffer {
  const first = buf.length > 0 && buf[0] === 0x2e;
  if (!first && buf.indexOf('\n.') < 0) return buf;
  const out = Buffer.allocUnsafe(buf.length);
  let o = 0;
  let i = 0;
  if (first) i = 1;
  while (i < buf.length) {
    const nl = buf.indexOf(0x0a, i);
    if (nl < 0) {
      o += buf.copy(out, o, i);
      break;
    }
    o += buf.copy(out, o, i, nl + 1);
    i = nl + 1;
    if (i < buf.length && buf[i] === 0x2e) i++;
  }
  return out.subarray(0, o);
}

/** Parses `<addr> params` after `MAIL FROM:` / `RCPT TO:`. */
function parsePath(arg: string): { addr: string; params: string } | null {
  const s = arg.trimStart();
  if (s.startsWith('<')) {
    const end = s.indexOf('>');
    if (end < 0) return null;
    return { addr: s.slice(1, end), params: s.slice(end + 1).trim() };
  }
  const sp = s.indexOf(' ');
  const addr = sp < 0 ? s : s.slice(0, sp);
  if (!addr) return null;
  return { addr, params: sp < 0 ? '' : s.slice(sp + 1).trim() };
}

class SinkImpl extends EventEmitter implements Sink {
  host: string;
  port = 0;
  accepted = 0;
  rejected = 0;
  messages: SinkMessage[] = [];
  idCounts = new Map<string, number>();
  connections: SinkConnectionInfo[] = [];
  openConnections = 0;
  maxOpenConnections = 0;

  readonly opts: SinkOptions;
  readonly server: net.Server;
  readonly secureContext: tls.SecureContext | null;
  readonly maxSize: number;
  readonly idRegex: RegExp;
  /** How many times an id reached the end of DATA (any outcome). */
  readonly seenAtData = new Map<string, number>();
  readonly sessions = new Set<Session>();
  /** Attempts are only counted when something can use them (fractions or a decide hook). */
  readonly tracksAttempts: boolean;
  /** Errors thrown by the decide hook (the client got a 451 for each). */
  readonly decideErrors: unknown[] = [];
  private nextConnId = 1;
  private closed = false;

  constructor(opts: SinkOptions) {
    super();
    this.setMaxListeners(0);
    this.opts = opts;
    this.host = opts.host ?? '127.0.0.1';
    this.maxSize = opts.maxMessageSize ?? DEFAULT_MAX_SIZE;
    this.tracksAttempts = !!opts.decide || (opts.tempfailFraction ?? 0) > 0 || (opts.permfailFraction ?? 0) > 0;
    this.secureContext = opts.tls ? tls.createSecureContext({ key: opts.tls.key, cert: opts.tls.cert }) : null;
    const name = escapeRegExp(opts.idHeader ?? 'Message-ID');
    this.idRegex = new RegExp(`(?:^|\\n)${name}[ \\t]*:[ \\t]*([^\\r\\n]*(?:\\r?\\n[ \\t][^\\r\\n]*)*)`, 'i');
    this.server = net.createServer({ noDelay: true }, (socket) => this.onConnection(socket));
  }

  listen(port: number): Promise<void> {
    return new Promise((resolve, reject) => {
      const onError = (err: Error) => reject(err);
      this.server.once('error', onError);
      this.server.listen({ host: this.host, port }, () => {
        this.server.off('error', onError);
        const addr = this.server.address();
        if (addr && typeof addr === 'object') this.port = addr.port;
        resolve();
      });
    });
  }

  private onConnection(socket: net.Socket): void {
    if (this.closed) {
      socket.destroy();
      return;
    }
    socket.setNoDelay(true);
    const info: SinkConnectionInfo = {
      id: this.nextConnId++,
      remoteAddress: normalizeAddress(socket.remoteAddress),
      openedAt: now(),
      messages: 0,
      tls: false,
    };
    this.connections.push(info);
    this.openConnections++;
    if (this.openConnections > this.maxOpenConnections) this.maxOpenConnections = this.openConnections;
    const session = new Session(this, socket, info);
    this.sessions.add(session);
    session.start();
  }

  sessionClosed(session: Session): void {
    if (!this.sessions.delete(session)) return;
    session.info.closedAt = now();
    this.openConnections--;
  }

  /** Calls the decide hook; a throwing hook yields a 451 instead of crashing the process. */
  decide(ctx: SinkDecisionContext): string | undefined {
    const fn = this.opts.decide;
    if (!fn) return undefined;
    try {
      return fn(ctx);
    } catch (err) {
      this.decideErrors.push(err);
      return `451 4.3.0 Sink decide hook failed: ${(err instanceof Error ? err.message : String(err)).replace(/[\r\n]+/g, ' ')}`;
    }
  }

  recordAccepted(m: SinkMessage): void {
    this.accepted++;
    this.messages.push(m);
    if (m.id !== null) this.idCounts.set(m.id, (this.idCounts.get(m.id) ?? 0) + 1);
    this.emit('message', m);
  }

  waitFor(pred: () => boolean, timeoutMs: number): Promise<void> {
    if (pred()) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const check = (): void => {
        let ok = false;
        try {
          ok = pred();
        } catch (err) {
          cleanup();
          reject(err);
          return;
        }
        if (ok) {
          cleanup();
          resolve();
        }
      };
      const cleanup = (): void => {
        clearInterval(poll);
        clearTimeout(timer);
        this.off('message', check);
      };
      const poll = setInterval(check, 10);
      const timer = setTimeout(() => {
        cleanup();
        reject(
          new Error(
            `sink.waitFor: condition not met within ${timeoutMs} ms ` +
              `(accepted=${this.accepted}, rejected=${this.rejected}, ` +
              `openConnections=${this.openConnections}, connections=${this.connections.length})`,
          ),
        );
      }, timeoutMs);
      this.on('message', check);
    });
  }

  close(): Promise<void> {
    this.closed = true;
    return new Promise((resolve) => {
      this.server.close(() => resolve());
      for (const s of [...this.sessions]) s.destroy();
    });
  }
}

type Mode = 'command' | 'data' | 'closed';

class Session {
  private socket: net.Socket;
  private readonly raw: net.Socket;
  private mode: Mode = 'command';
  private pending: Buffer | null = null;
  private out: string[] = [];
  private greeted = false;
  private secure = false;
  private from: string | null = null;
  private to: string[] = [];
  // DATA state
  private dataChunks: Buffer[] = [];
  private dataLen = 0;
  private tail: Buffer = VIRTUAL_PREFIX;
  private tooBig = false;
  private readonly onData = (chunk: Buffer): void => this.handle(chunk);
  private readonly onClose = (): void => this.sink.sessionClosed(this);
  private readonly onError = (): void => {
    /* ECONNRESET etc.: 'close' follows */
  };

  constructor(
    private readonly sink: SinkImpl,
    socket: net.Socket,
    readonly info: SinkConnectionInfo,
  ) {
    this.socket = socket;
    this.raw = socket;
  }

  start(): void {
    const s = this.raw;
    s.on('error', this.onError);
    s.on('close', this.onClose);
    if (this.sink.opts.decide) {
      const r = this.sink.decide({ stage: 'connect', remoteAddress: this.info.remoteAddress, localPort: s.localPort ?? 0 });
      if (r !== undefined) {
        if (/^[45]/.test(r)) {
          this.mode = 'closed';
          s.resume(); // discard anything the client sends
          s.end(r + '\r\n');
          setTimeout(() => s.destroy(), 2000).unref(); // do not linger half-open
          return;
        }
        s.on('data', this.onData);
        s.write(r + '\r\n');
        return;
      }
    }
    s.on('data', this.onData);
    s.write(`220 ${HOSTNAME} ESMTP Tern bench sink\r\n`);
  }

  destroy(): void {
    this.mode = 'closed';
    this.socket.destroy();
    if (this.socket !== this.raw) this.raw.destroy();
  }

  private reply(line: string): void {
    this.out.push(line + '\r\n');
    if (line.startsWith('421')) this.mode = 'closed';
  }

  private flush(): void {
    if (this.out.length === 0) return;
    const s = this.out.length === 1 ? this.out[0]! : this.out.join('');
    this.out = [];
    if (this.mode === 'closed') this.socket.end(s);
    else this.socket.write(s);
  }

  private resetTransaction(): void {
    this.from = null;
    this.to = [];
  }

  private handle(input: Buffer): void {
    let chunk = input;
    if (this.pending) {
      chunk = Buffer.concat([this.pending, input]);
      this.pending = null;
    }
    let off = 0;
    while (off < chunk.length) {
      if (this.mode === 'data') {
        off = this.consumeData(chunk, off);
        continue;
      }
      if (this.mode !== 'command') break;
      const nl = chunk.indexOf(0x0a, off);
      if (nl < 0) {
        if (chunk.length - off > MAX_LINE) {
          this.reply('500 5.5.2 Line too long');
        } else {
          this.pending = chunk.subarray(off);
        }
        break;
      }
      const end = nl > off && chunk[nl - 1] === 0x0d ? nl - 1 : nl;
      const line = chunk.toString('utf8', off, end);
      off = nl + 1;
      if (this.command(line) === 'stop') break;
    }
    this.flush();
    if (this.mode === 'closed' && this.out.length === 0 && !this.socket.writableEnded) this.socket.end();
  }

  /** Returns 'stop' when the rest of the input must not be processed (QUIT, STARTTLS, 421). */
  private command(line: string): 'stop' | void {
    const sp = line.indexOf(' ');
    const verb = (sp < 0 ? line : line.slice(0, sp)).toUpperCase();
    const arg = sp < 0 ? '' : line.slice(sp + 1);
    switch (verb) {
      case 'EHLO': {
        this.greeted = true;
        this.resetTransaction();
        const lines = [
          `${HOSTNAME} Hello ${arg.trim() || 'client'}`,
          'PIPELINING',
          '8BITMIME',
          'SMTPUTF8',
          'ENHANCEDSTATUSCODES',
          `SIZE ${this.sink.maxSize}`,
        ];
        if (this.sink.secureContext && !this.secure) lines.push('STARTTLS');
        for (let i = 0; i < lines.length; i++) this.reply(`250${i === lines.length - 1 ? ' ' : '-'}${lines[i]}`);
        return;
      }
      case 'HELO':
        this.greeted = true;
        this.resetTransaction();
        this.reply(`250 ${HOSTNAME} Hello ${arg.trim() || 'client'}`);
        return;
      case 'MAIL': {
        if (!this.greeted) return this.reply('503 5.5.1 Error: send HELO/EHLO first');
        if (this.from !== null) return this.reply('503 5.5.1 Error: nested MAIL command');
        if (!/^from:/i.test(arg)) return this.reply('501 5.5.4 Syntax: MAIL FROM:<address>');
        const p = parsePath(arg.slice(5));
        if (!p) return this.reply('501 5.1.7 Bad sender address syntax');
        const size = /(?:^|\s)SIZE=(\d+)/i.exec(p.params);
        if (size && Number(size[1]) > this.sink.maxSize) {
          return this.reply('552 5.3.4 Message size exceeds fixed maximum message size');
        }
        if (this.sink.opts.decide) {
          const r = this.sink.decide({ stage: 'mail', remoteAddress: this.info.remoteAddress, localPort: this.raw.localPort ?? 0, from: p.addr });
          if (r !== undefined) {
            this.reply(r);
            if (/^2/.test(r)) this.from = p.addr;
            return this.mode === 'closed' ? 'stop' : undefined;
          }
        }
        this.from = p.addr;
        return this.reply('250 2.1.0 Ok');
      }
      case 'RCPT': {
        if (this.from === null) return this.reply('503 5.5.1 Error: need MAIL command');
        if (!/^to:/i.test(arg)) return this.reply('501 5.5.4 Syntax: RCPT TO:<address>');
        const p = parsePath(arg.slice(3));
        if (!p || !p.addr) return this.reply('501 5.1.3 Bad recipient address syntax');
        if (this.sink.opts.decide) {
          const r = this.sink.decide({
            stage: 'rcpt',
            remoteAddress: this.info.remoteAddress,
            localPort: this.raw.localPort ?? 0,
            from: this.from,
            to: [...this.to, p.addr],
          });
          if (r !== undefined) {
            this.reply(r);
            if (/^2/.test(r)) this.to.push(p.addr);
            return this.mode === 'closed' ? 'stop' : undefined;
          }
        }
        this.to.push(p.addr);
        return this.reply('250 2.1.5 Ok');
      }
      case 'DATA':
        if (this.from === null) return this.reply('503 5.5.1 Error: need MAIL command');
        if (this.to.length === 0) return this.reply('554 5.5.1 Error: no valid recipients');
        this.reply('354 End data with <CR><LF>.<CR><LF>');
        this.mode = 'data';
        this.dataChunks = [];
        this.dataLen = 0;
        this.tail = VIRTUAL_PREFIX;
        this.tooBig = false;
        return;
      case 'RSET':
        this.resetTransaction();
        return this.reply('250 2.0.0 Ok');
      case 'NOOP':
        return this.reply('250 2.0.0 Ok');
      case 'QUIT':
        this.reply('221 2.0.0 Bye');
        this.mode = 'closed';
        return 'stop';
      case 'STARTTLS':
        if (!this.sink.secureContext) return this.reply('502 5.5.1 STARTTLS not available');
        if (this.secure) return this.reply('503 5.5.1 TLS already active');
        this.reply('220 2.0.0 Ready to start TLS');
        this.flush();
        this.upgrade();
        return 'stop'; // anything pipelined after STARTTLS is discarded (RFC 3207)
      default:
        return this.reply('502 5.5.2 Command not recognized');
    }
  }

  private upgrade(): void {
    const raw = this.raw;
    raw.off('data', this.onData);
    this.pending = null;
    this.resetTransaction();
    this.greeted = false;
    const secure = new tls.TLSSocket(raw, { isServer: true, secureContext: this.sink.secureContext! });
    secure.setNoDelay(true);
    secure.on('error', () => secure.destroy());
    secure.on('close', this.onClose);
    secure.on('secure', () => {
      this.secure = true;
      this.info.tls = true;
    });
    secure.on('data', this.onData);
    this.socket = secure;
  }

  /** Consumes message content from chunk[off..]; returns the new offset. */
  private consumeData(chunk: Buffer, off: number): number {
    const tail = this.tail;
    // A terminator straddling the previous input and this chunk starts inside `tail`.
    let idx = -1; // position in virtual coordinates (tail followed by chunk[off..])
    const boundary = Buffer.concat([tail, chunk.subarray(off, off + 4)]);
    const b = boundary.indexOf(CRLF_DOT_CRLF);
    if (b >= 0 && b < tail.length) idx = b;
    else {
      const c = chunk.indexOf(CRLF_DOT_CRLF, off);
      if (c >= 0) idx = c - off + tail.length;
    }
    if (idx < 0) {
      this.appendData(chunk.subarray(off));
      const all = chunk.length - off >= 4 ? chunk.subarray(chunk.length - 4) : Buffer.concat([tail, chunk.subarray(off)]);
      this.tail = all.length > 4 ? Buffer.from(all.subarray(all.length - 4)) : Buffer.from(all);
      return chunk.length;
    }
    // content ends after the CRLF that starts the terminator
    const endRel = idx + 2 - tail.length; // relative to chunk[off]; may be negative (down to -2)
    let total: number;
    if (endRel >= 0) {
      this.appendData(chunk.subarray(off, off + endRel));
      total = this.dataLen;
    } else {
      total = this.dataLen + endRel;
    }
    const next = off + idx + 5 - tail.length;
    this.finishMessage(total);
    return next;
  }

  private appendData(b: Buffer): void {
    if (b.length === 0) return;
    this.dataLen += b.length;
    if (this.tooBig) return;
    if (this.dataLen > this.sink.maxSize + 2) {
      this.tooBig = true;
      this.dataChunks = [];
      return;
    }
    this.dataChunks.push(b);
  }

  private finishMessage(total: number): void {
    this.mode = 'command';
    const chunks = this.dataChunks;
    this.dataChunks = [];
    this.tail = VIRTUAL_PREFIX;
    const from = this.from ?? '';
    const to = this.to;
    this.resetTransaction();
    const sink = this.sink;
    if (this.tooBig || total > sink.maxSize) {
      sink.rejected++;
      this.reply('552 5.3.4 Message size exceeds fixed maximum message size');
      return;
    }
    let raw = chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks);
    if (raw.length !== total) raw = raw.subarray(0, Math.max(0, total));
    const content = unstuff(raw);
    const id = this.extractId(content);
    let attempt = 1;
    if (id !== null && sink.tracksAttempts) {
      attempt = (sink.seenAtData.get(id) ?? 0) + 1;
      sink.seenAtData.set(id, attempt);
    }
    let r: string | undefined;
    if (sink.opts.decide) {
      r = sink.decide({ stage: 'data', remoteAddress: this.info.remoteAddress, localPort: this.raw.localPort ?? 0, from, to, id, attempt });
    }
    if (r === undefined && id !== null) {
      const perm = sink.opts.permfailFraction ?? 0;
      const temp = sink.opts.tempfailFraction ?? 0;
      if (perm > 0 || temp > 0) {
        const h = idFraction(id);
        if (h < perm) r = '550 5.7.1 Rejected by sink';
        else if (h < perm + temp && ((sink.opts.failMode ?? 'first-attempt') === 'always' || attempt === 1)) {
          r = '451 4.3.0 Try again later';
        }
      }
    }
    if (r !== undefined && !/^2/.test(r)) {
      sink.rejected++;
      this.reply(r);
      return;
    }
    this.info.messages++;
    const m: SinkMessage = {
      id,
      from,
      to,
      remoteAddress: this.info.remoteAddress,
      size: content.length,
      receivedAt: now(),
      tls: this.secure,
      connectionId: this.info.id,
    };
    if (sink.opts.keep) m.data = Buffer.from(content); // copy: do not pin the socket's read buffers
    this.reply(r ?? `250 2.0.0 Ok: queued as ${this.info.id.toString(16)}.${this.info.messages.toString(16)}`);
    sink.recordAccepted(m);
  }

  private extractId(content: Buffer): string | null {
    let hdrEnd = content.indexOf('\r\n\r\n');
    if (hdrEnd < 0) hdrEnd = content.indexOf('\n\n');
    if (hdrEnd < 0) hdrEnd = Math.min(content.length, MAX_LINE);
    const head = content.toString('utf8', 0, hdrEnd);
    const m = this.sink.idRegex.exec(head);
    if (!m) return null;
    const v = m[1]!.replace(/\r?\n[ \t]+/g, ' ').trim();
    return v === '' ? null : v;
  }
}

export async function startSink(opts: SinkOptions = {}): Promise<Sink> {
  const sink = new SinkImpl(opts);
  await sink.listen(opts.port ?? 0);
  return sink;
}

// ---------------------------------------------------------------- CLI

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      host: { type: 'string', default: '127.0.0.1' },
      port: { type: 'string', default: '2525' },
      tempfail: { type: 'string', default: '0' },
      permfail: { type: 'string', default: '0' },
      'fail-mode': { type: 'string', default: 'first-attempt' },
      'id-header': { type: 'string' },
      'tls-key': { type: 'string' },
      'tls-cert': { type: 'string' },
      'max-size': { type: 'string' },
    },
    strict: true,
  });
  const failMode = values['fail-mode'];
  if (failMode !== 'first-attempt' && failMode !== 'always') throw new Error(`--fail-mode must be first-attempt or always`);
  const tlsOpt =
    values['tls-key'] && values['tls-cert']
      ? { key: fs.readFileSync(values['tls-key']), cert: fs.readFileSync(values['tls-cert']) }
      : false;
  const sink = await startSink({
    host: values.host,
    port: Number(values.port),
    tempfailFraction: Number(values.tempfail),
    permfailFraction: Number(values.permfail),
    failMode,
    idHeader: values['id-header'],
    tls: tlsOpt,
    maxMessageSize: values['max-size'] ? Number(values['max-size']) : undefined,
  });
  process.stdout.write(JSON.stringify({ listening: { host: sink.host, port: sink.port } }) + '\n');
  let lastAccepted = 0;
  let lastRejected = 0;
  let lastAt = now();
  const stats = (force: boolean): void => {
    const t = now();
    if (force || sink.accepted !== lastAccepted || sink.rejected !== lastRejected) {
      const rate = Math.round(((sink.accepted - lastAccepted) * 1000) / Math.max(1, t - lastAt));
      process.stdout.write(
        JSON.stringify({ accepted: sink.accepted, rejected: sink.rejected, rate, connections: sink.openConnections }) + '\n',
      );
    }
    lastAccepted = sink.accepted;
    lastRejected = sink.rejected;
    lastAt = t;
  };
  const timer = setInterval(() => {
    // keep memory flat in long runs: the CLI does not use the per-message records
    sink.messages.length = 0;
    sink.idCounts.clear();
    stats(false);
  }, 1000);
  let stopping = false;
  const stop = (): void => {
    if (stopping) return;
    stopping = true;
    clearInterval(timer);
    void sink.close().then(() => process.exit(0));
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((err: unknown) => {
    process.stderr.write(`sink: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  });
}
