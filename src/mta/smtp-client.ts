/**
 * One outbound SMTP connection, as promises over nodemailer's SMTPConnection (which speaks the protocol,
 * pipelines the envelope and dot-stuffs the data).
 */
import type tls from 'node:tls';
import SMTPConnection from 'nodemailer/lib/smtp-connection';

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

interface NodemailerError extends Error {
  code?: string;
  originalCode?: string;
  command?: string;
  response?: string;
  responseCode?: number;
  recipient?: string;
  rejectedErrors?: NodemailerError[];
}

function toDeliveryError(err: NodemailerError): DeliveryError {
  const code = err.responseCode ?? null;
  const response = err.response ?? `${err.code ?? 'ERROR'} ${err.message}`;
  return new DeliveryError(err.message, response.replace(/\r?\n/g, ' '), code, code === null);
}

export class OutboundConnection {
  private closed = false;
  /** the operation waiting for the server, failed if the connection goes away first */
  private pending: ((err: DeliveryError) => void) | null = null;
  readonly secure: () => boolean;

  private constructor(private readonly conn: SMTPConnection) {
    const gone = (err?: NodemailerError) => {
      this.closed = true;
      // nodemailer does not always call back an operation when the socket dies under it. Give its own
      // callback (which carries the server's last reply, e.g. a 421 sent just before closing) a turn first.
      setImmediate(() => {
        const fail = this.pending;
        this.pending = null;
        const lastReply = (this.conn as unknown as { lastServerResponse?: string | false }).lastServerResponse;
        if (err) fail?.(toDeliveryError(err));
        else if (lastReply && /^[45]\d\d[ -]/.test(lastReply)) fail?.(new DeliveryError('connection closed', lastReply, Number(lastReply.slice(0, 3)), false));
        else fail?.(new DeliveryError('connection closed', '421 4.4.2 Connection closed unexpectedly', null, true));
      });
    };
    conn.on('error', (err: NodemailerError) => gone(err));
    conn.on('end', () => gone());
    this.secure = () => Boolean((conn as unknown as { secure: boolean }).secure);
  }

  /** Runs one callback-style operation; settles once, whichever comes first: its callback or the connection dying. */
  private operation<T>(run: (resolve: (v: T) => void, reject: (e: DeliveryError) => void) => void): Promise<T> {
    if (this.closed) return Promise.reject(new DeliveryError('connection closed', '421 4.4.2 Connection already closed', null, true));
    return new Promise<T>((resolve, reject) => {
      let settled = false;
      const done = <A>(f: (a: A) => void) => (a: A) => {
        if (settled) return;
        settled = true;
        this.pending = null;
        f(a);
      };
      this.pending = done(reject);
      run(done(resolve), done(reject));
    });
  }

  /** TLS state of the session: whether STARTTLS happened and whether the certificate verified (and if not, why). */
  tlsState(): { secure: boolean; authorized: boolean; error: string | null } {
    const socket = (this.conn as unknown as { _socket?: { authorized?: boolean; authorizationError?: Error | string } })._socket;
    const secure = this.secure();
    const error = socket?.authorizationError;
    return { secure, authorized: secure && Boolean(socket?.authorized), error: error ? String((error as { code?: string }).code ?? error) : null };
  }

  get usable(): boolean {
    return !this.closed;
  }

  static open(opts: ConnectOptions): Promise<OutboundConnection> {
    const conn = new SMTPConnection({
      host: opts.address,
      port: opts.port,
      servername: opts.servername,
      localAddress: opts.localAddress && opts.localAddress !== '0.0.0.0' ? opts.localAddress : undefined,
      name: opts.ehlo,
      secure: false,
      ignoreTLS: opts.tls === 'none',
      requireTLS: opts.tls === 'required',
      opportunisticTLS: opts.tls === 'opportunistic',
      // opportunistic TLS encrypts against passive reading; an unverifiable certificate is not a reason to send in clear
      tls: { rejectUnauthorized: opts.tls === 'required', servername: opts.servername, ...(opts.secureContext ? { secureContext: opts.secureContext } : {}) },
      connectionTimeout: opts.connectTimeoutMs,
      greetingTimeout: opts.connectTimeoutMs,
      socketTimeout: Math.max(opts.commandTimeoutMs, opts.dataTimeoutMs),
      allowInternalNetworkInterfaces: true,
      logger: false,
    });
    const outbound = new OutboundConnection(conn);
    return new Promise((resolve, reject) => {
      let settled = false;
      const fail = (err: NodemailerError) => {
        if (settled) return;
        settled = true;
        const upgrading = (conn as unknown as { upgrading?: boolean }).upgrading === true;
        conn.close();
        const e = toDeliveryError(err);
        if (err.code === 'ETLS' || upgrading) e.tlsFailure = { starttls: err.command === 'STARTTLS' && Boolean(err.response), code: err.originalCode ?? (err as { cause?: { code?: string } }).cause?.code ?? err.code };
        reject(e);
      };
      conn.once('error', fail);
      conn.connect(() => {
        if (!opts.auth) {
          settled = true;
          conn.removeListener('error', fail);
          return resolve(outbound);
        }
        conn.login({ user: opts.auth.user, pass: opts.auth.pass }, (err) => {
          if (err) return fail(err as NodemailerError);
          settled = true;
          conn.removeListener('error', fail);
          resolve(outbound);
        });
      });
    });
  }

  /** Sends one transaction. Rejects with DeliveryError when the whole transaction failed. */
  send(from: string, to: string[], body: Buffer, opts: { utf8: boolean; size: number }): Promise<SendResult> {
    return this.operation((resolve, reject) => {
      this.conn.send({ from, to, size: opts.size, use8BitMime: true, ...(opts.utf8 ? { smtpUtf8: true } : {}) } as never, body, (err, info) => {
        if (err) {
          const e = err as NodemailerError;
          // "all recipients were rejected" carries each recipient's own reply
          if (e.rejectedErrors?.length && e.code === 'EENVELOPE' && !/^5\d\d .*Mail command/.test(e.message)) {
            const rejected = new Map<string, { response: string; code: number | null }>();
            for (const r of e.rejectedErrors) if (r.recipient) rejected.set(r.recipient, { response: (r.response ?? r.message).replace(/\r?\n/g, ' '), code: r.responseCode ?? null });
            if (rejected.size === to.length) return resolve({ accepted: [], rejected, response: e.response ?? '' });
          }
          return reject(toDeliveryError(e));
        }
        const rejected = new Map<string, { response: string; code: number | null }>();
        for (const r of (info.rejectedErrors ?? []) as NodemailerError[])
          if (r.recipient) rejected.set(r.recipient, { response: (r.response ?? r.message).replace(/\r?\n/g, ' '), code: r.responseCode ?? null });
        resolve({ accepted: info.accepted, rejected, response: String(info.response ?? '').replace(/\r?\n/g, ' ') });
      });
    });
  }

  reset(): Promise<void> {
    return this.operation((resolve, reject) => this.conn.reset((err) => (err ? reject(toDeliveryError(err as NodemailerError)) : resolve())));
  }

  quit(): void {
    if (this.closed) return;
    this.closed = true;
    this.conn.quit();
  }

  destroy(): void {
    this.closed = true;
    this.conn.close();
  }
}
