/**
 * What Tern's SMTP listeners (submission, inbound) share: sessions counted per client address, one message
 * read with a size limit and a deadline, and listening with an error that names the config key.
 */
import type { Readable } from 'node:stream';
import type { SMTPServer, SMTPServerOptions } from 'smtp-server';
import { normalizeAddress } from '../core/net.js';
import { SmtpReplyError } from './smtp-reply.js';

/**
 * The smtp-server options every Tern listener has: its certificate for STARTTLS, SIZE enforced (552, nothing
 * kept), enhanced status codes shown, PIPELINING, 8BITMIME and SMTPUTF8, no reverse lookups, no library log.
 */
export function listenerOptions(o: { hostname: string; banner: string; tls: { key: string; cert: string }; maxMessageSize: number; maxClients: number; idleTimeoutMs: number }): SMTPServerOptions {
  return {
    name: o.hostname,
    banner: o.banner,
    key: o.tls.key,
    cert: o.tls.cert,
    size: o.maxMessageSize,
    rejectOversized: true,
    hideENHANCEDSTATUSCODES: false,
    hideDSN: true,
    hidePIPELINING: false,
    hide8BITMIME: false,
    hideSMTPUTF8: false,
    authOptional: true,
    maxClients: o.maxClients,
    socketTimeout: o.idleTimeoutMs,
    closeTimeout: 30_000,
    logger: false,
    disableReverseLookup: true,
  };
}

/** Open sessions per client address, against a limit. */
export class SessionsPerAddress {
  private readonly open = new Map<string, number>();

  constructor(private readonly limit: number) {}

  /**
   * Counts a new session; false when the address already had `limit` open. Counted either way: smtp-server
   * calls onClose for a refused session too, and `closed()` takes it off.
   */
  opened(remoteAddress: string): boolean {
    const ip = normalizeAddress(remoteAddress);
    const n = (this.open.get(ip) ?? 0) + 1;
    this.open.set(ip, n);
    return n <= this.limit;
  }

  closed(remoteAddress: string): void {
    const ip = normalizeAddress(remoteAddress);
    const n = (this.open.get(ip) ?? 1) - 1;
    if (n > 0) this.open.set(ip, n);
    else this.open.delete(ip);
  }
}

/** A message refused while it was read: the SMTP reply, and a short reason for metrics. */
export class MessageRefusal extends SmtpReplyError {
  constructor(
    readonly reason: 'too_big' | 'data_timeout' | 'read_error',
    code: number,
    status: string,
    text: string,
  ) {
    super(code, status, text);
  }
}

export interface ReadMessageOptions {
  /** the SIZE limit smtp-server enforces (with `rejectOversized`); only named in the reply here */
  maxSize: number;
  /** longest the client may take from DATA to the final dot */
  timeoutMs: number;
  /** called when the deadline passes: close the session (a client that slow is not waited for) */
  onTimeout: () => void;
}

/**
 * Reads the DATA stream of one message to its end (smtp-server needs it consumed whatever happens). Keeps
 * nothing past the size limit. Resolves with the bytes in a buffer of their own (not a slice of Node's shared
 * pool, so it can be moved to a worker thread); rejects with a MessageRefusal.
 */
export function readMessage(stream: Readable & { sizeExceeded?: boolean }, opts: ReadMessageOptions): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let timedOut = false;
    const late = () => new MessageRefusal('data_timeout', 421, '4.4.2', 'Message took too long to arrive');
    const deadline = setTimeout(() => {
      timedOut = true;
      opts.onTimeout();
    }, opts.timeoutMs);
    stream.on('data', (chunk: Buffer) => {
      if (!stream.sizeExceeded) chunks.push(chunk);
    });
    stream.on('error', (err) => {
      clearTimeout(deadline);
      reject(timedOut ? late() : new MessageRefusal('read_error', 451, '4.3.0', `Error reading message: ${err.message}`));
    });
    stream.on('end', () => {
      clearTimeout(deadline);
      if (timedOut) return reject(late());
      if (stream.sizeExceeded) return reject(new MessageRefusal('too_big', 552, '5.3.4', `Message exceeds the maximum size of ${opts.maxSize} bytes`));
      const raw = Buffer.allocUnsafeSlow(chunks.reduce((n, c) => n + c.length, 0));
      let offset = 0;
      for (const c of chunks) offset += c.copy(raw, offset);
      resolve(raw);
    });
  });
}

/** Starts listening; a failure names the listener's config key. Resolves with the port (0 in config = any). */
export function listenSmtp(server: SMTPServer, host: string, port: number, key: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const onError = (err: Error) => reject(new Error(`${key}: cannot listen on ${host}:${port}: ${err.message}`));
    server.server.once('error', onError);
    server.listen(port, host, () => {
      server.server.removeListener('error', onError);
      resolve((server.server.address() as { port: number }).port);
    });
  });
}

/** Closes one session of `server` by its id (smtp-server keeps its connections in a set). */
export function closeSession(server: SMTPServer, id: string): void {
  const connections = (server as unknown as { connections: Set<{ id: string; close(): void }> }).connections;
  for (const c of connections) if (c.id === id) c.close();
}
