/**
 * The SMTP submission listener: tenants' applications hand mail over here (AUTH, or a trusted network).
 * A message is answered 250 only once it is fsynced in the spool.
 */
import crypto from 'node:crypto';
import { SMTPServer, type SMTPServerAddress, type SMTPServerAuthentication, type SMTPServerSession } from 'smtp-server';
import type { Readable } from 'node:stream';
import type { Config } from '../core/config.js';
import type { Logger } from '../core/log.js';
import type { Metrics } from '../core/metrics.js';
import type { TlsMaterial } from '../core/tls.js';
import { NetworkList, isLoopback, normalizeAddress } from '../core/net.js';
import { isValidAddress } from './address.js';
import { Acceptance } from './acceptance.js';
import type { Preparer } from './prepare-pool.js';
import type { Scheduler } from './queues.js';
import type { Spool } from './spool.js';
import { smtpError } from './smtp-reply.js';
import { MessageRefusal, SessionsPerAddress, closeSession, listenSmtp, listenerOptions, readMessage } from './reception.js';
import type { SuppressionList } from '../bounce/suppression.js';
import type { SendingPolicy } from '../control/tenants.js';
import type { SenderDomainPolicy } from '../control/domains.js';

interface SessionUser {
  username: string;
  tenant: string;
}

interface SubmissionDeps {
  config: Config;
  spool: Spool;
  scheduler: Scheduler;
  preparer: Preparer;
  tls: TlsMaterial;
  log: Logger;
  metrics: Metrics;
  suppressions: SuppressionList;
  /** SMTP credentials made through the control API, asked after the config's smtp_users */
  credentials?: { verify(username: string, password: string): { tenant: string } | null };
  /** refuses suspended tenants and counts daily quotas */
  sending?: SendingPolicy;
  /** refuses From domains the tenant has not verified */
  senderDomains?: SenderDomainPolicy;
  /** the node's acceptance pipeline (made from the deps above when absent) */
  acceptance?: Acceptance;
}

const AUTH_FAILURE_LIMIT = 10;
const AUTH_FAILURE_WINDOW_MS = 10 * 60_000;

/** AUTH sends a password: only over TLS, or from this machine. */
export function mayAuthenticate(secure: boolean, remoteAddress: string): boolean {
  return secure || isLoopback(remoteAddress);
}

const digest = (s: string) => crypto.createHash('sha256').update(s).digest();

export class SubmissionListener {
  readonly server: SMTPServer;
  private readonly perIp: SessionsPerAddress;
  private readonly authFailures = new Map<string, { count: number; since: number }>();
  private readonly trusted: NetworkList;
  private readonly users: Map<string, { password: Buffer; tenant: string }>;
  private readonly acceptance: Acceptance;

  constructor(private readonly deps: SubmissionDeps) {
    const { config, tls } = deps;
    const sub = config.submission;
    this.trusted = new NetworkList(config.trustedNetworks);
    this.acceptance = deps.acceptance ?? new Acceptance(deps);
    this.perIp = new SessionsPerAddress(sub.max_connections_per_ip);
    this.users = new Map(config.smtpUsers.map((u) => [u.username, { password: digest(u.password), tenant: u.tenant }]));
    this.server = new SMTPServer({
      ...listenerOptions({ hostname: config.hostname, banner: 'Tern ESMTP', tls, maxMessageSize: sub.maxMessageSize, maxClients: sub.max_connections, idleTimeoutMs: sub.idleTimeoutMs }),
      authMethods: ['PLAIN', 'LOGIN'],
      // AUTH is refused before TLS in onAuth, except on loopback; advertising it lets loopback clients use it
      allowInsecureAuth: true,
      onConnect: (session, cb) => this.onConnect(session, cb),
      onClose: (session) => this.onClose(session),
      onAuth: (auth, session, cb) => this.onAuth(auth, session, cb),
      onMailFrom: (address, session, cb) => this.onMailFrom(address, session, cb),
      onRcptTo: (address, session, cb) => this.onRcptTo(address, session, cb),
      onData: (stream, session, cb) => this.onData(stream, session, cb),
    });
    this.server.on('error', (err) => deps.log.warn({ err: err.message, listener: 'submission' }, 'SMTP session error'));
  }

  listen(): Promise<number> {
    const { host, port } = this.deps.config.submission;
    return listenSmtp(this.server, host, port, 'listeners.submission');
  }

  close(): Promise<void> {
    return new Promise((resolve) => this.server.close(() => resolve()));
  }

  private onConnect(session: SMTPServerSession, cb: (err?: Error | null) => void): void {
    this.deps.metrics.inboundConnections.inc({ listener: 'submission' });
    if (!this.perIp.opened(session.remoteAddress)) {
      this.deps.metrics.smtpRejections.inc({ reason: 'per_ip_limit' });
      return cb(smtpError(421, '4.7.0', 'Too many connections from your address; try again later'));
    }
    cb();
  }

  private onClose(session: SMTPServerSession): void {
    this.perIp.closed(session.remoteAddress);
    this.deps.metrics.inboundConnections.dec({ listener: 'submission' });
  }

  private onAuth(auth: SMTPServerAuthentication, session: SMTPServerSession, cb: (err: Error | null | undefined, res?: { user: SessionUser }) => void): void {
    const ip = normalizeAddress(session.remoteAddress);
    if (!mayAuthenticate(session.secure, ip)) return cb(smtpError(538, '5.7.11', 'Encryption required for authentication; issue STARTTLS first'));
    const failures = this.authFailures.get(ip);
    if (failures && Date.now() - failures.since > AUTH_FAILURE_WINDOW_MS) this.authFailures.delete(ip);
    else if (failures && failures.count >= AUTH_FAILURE_LIMIT)
      return cb(smtpError(454, '4.7.0', 'Too many failed authentication attempts; try again later'));
    const user = this.users.get(auth.username ?? '');
    const tenant = user ? (crypto.timingSafeEqual(digest(auth.password ?? ''), user.password) ? user.tenant : null) : (this.deps.credentials?.verify(auth.username ?? '', auth.password ?? '')?.tenant ?? null);
    if (tenant === null) {
      const f = this.authFailures.get(ip) ?? { count: 0, since: Date.now() };
      f.count++;
      this.authFailures.set(ip, f);
      this.deps.metrics.smtpRejections.inc({ reason: 'auth_failed' });
      this.deps.log.warn({ ip, username: auth.username, listener: 'submission' }, 'authentication failed');
      return cb(smtpError(535, '5.7.8', 'Authentication credentials invalid'));
    }
    cb(null, { user: { username: auth.username!, tenant } });
  }

  private mayRelay(session: SMTPServerSession): boolean {
    return Boolean(session.user) || this.trusted.contains(session.remoteAddress);
  }

  private onMailFrom(address: SMTPServerAddress, session: SMTPServerSession, cb: (err?: Error | null) => void): void {
    const args = address.args as Record<string, unknown> | false;
    const utf8 = Boolean(args && args.SMTPUTF8);
    if (address.address !== '' && !isValidAddress(address.address, utf8)) {
      this.deps.metrics.smtpRejections.inc({ reason: 'bad_sender' });
      return cb(smtpError(553, '5.1.7', `Sender address <${address.address}> is not a valid mail address`));
    }
    cb();
  }

  private onRcptTo(address: SMTPServerAddress, session: SMTPServerSession, cb: (err?: Error | null) => void): void {
    if (!this.mayRelay(session)) {
      this.deps.metrics.smtpRejections.inc({ reason: 'relay_denied' });
      this.deps.log.warn({ ip: normalizeAddress(session.remoteAddress), rcpt: address.address, listener: 'submission' }, 'relay denied');
      return cb(smtpError(554, '5.7.1', 'Relay access denied; authenticate first'));
    }
    const mailArgs = session.envelope.mailFrom ? (session.envelope.mailFrom.args as Record<string, unknown> | false) : false;
    const utf8 = Boolean(mailArgs && mailArgs.SMTPUTF8);
    if (!isValidAddress(address.address, utf8)) {
      this.deps.metrics.smtpRejections.inc({ reason: 'bad_recipient' });
      return cb(smtpError(553, '5.1.3', `Recipient address <${address.address}> is not a valid mail address`));
    }
    if (session.envelope.rcptTo.length >= this.deps.config.submission.max_recipients)
      return cb(smtpError(452, '4.5.3', 'Too many recipients; send the rest in another transaction'));
    const refusal = this.deps.sending?.refusal((session.user as unknown as SessionUser | undefined)?.tenant ?? 'default', session.envelope.rcptTo.length + 1);
    if (refusal) {
      this.deps.metrics.smtpRejections.inc({ reason: `tenant_${refusal.reason}` });
      return cb(smtpError(refusal.smtp.code, refusal.smtp.status, refusal.smtp.text));
    }
    cb();
  }

  private onData(stream: Readable & { sizeExceeded?: boolean }, session: SMTPServerSession, cb: (err?: Error | null, message?: string) => void): void {
    const sub = this.deps.config.submission;
    readMessage(stream, { maxSize: sub.maxMessageSize, timeoutMs: sub.dataTimeoutMs, onTimeout: () => closeSession(this.server, session.id) })
      .then((raw) => this.accept(raw, session))
      .then(
        (reply) => cb(null, reply),
        (err) => {
          if (err instanceof MessageRefusal && err.reason === 'too_big') this.deps.metrics.smtpRejections.inc({ reason: 'too_big' });
          cb(err);
        },
      );
  }

  private async accept(raw: Buffer, session: SMTPServerSession): Promise<string> {
    const { metrics, log } = this.deps;
    const user = session.user as unknown as SessionUser | undefined;
    const mailFrom = session.envelope.mailFrom as SMTPServerAddress;
    const mailArgs = mailFrom.args as Record<string, unknown> | false;
    const client = normalizeAddress(session.remoteAddress);
    const result = await this.acceptance.accept({
      tenant: user?.tenant ?? 'default',
      sender: mailFrom.address,
      recipients: session.envelope.rcptTo.map((r) => r.address),
      raw,
      utf8: Boolean(mailArgs && mailArgs.SMTPUTF8),
      listener: 'submission',
      client,
      user: user?.username,
    });
    if (result.ok) return `2.0.0 Ok: queued as ${result.queueId}`;
    switch (result.step) {
      case 'content':
        metrics.smtpRejections.inc({ reason: 'bad_content' });
        log.info({ ip: client, reason: result.reason, listener: 'submission' }, 'message refused');
        throw smtpError(result.code, result.status, result.reason);
      case 'sender_domain':
        metrics.smtpRejections.inc({ reason: 'unverified_domain' });
        throw smtpError(result.refusal.smtp.code, result.refusal.smtp.status, result.refusal.smtp.text);
      case 'quota':
        throw smtpError(result.refusal.smtp.code, result.refusal.smtp.status, result.refusal.smtp.text);
      case 'spool':
        throw smtpError(451, '4.3.0', result.reason);
    }
  }
}
