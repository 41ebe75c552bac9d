/**
 * The inbound SMTP listener: where bounces (DSNs), complaints (ARF) and auto-replies come back. The bounce
 * domains' MX points here. It takes mail only for the node's bounce and FBL domains (the config's, tenants'
 * own, and the bounce subdomains of verified sending domains) and is never a relay:
 *
 *   b-<token>@<bounce domain>      the token must verify (a forged or altered one: 550 5.1.1, logged)
 *   u-<token>@<bounce domain>      List-Unsubscribe's mailto: with tracking configured, the token must verify
 *                                  (else 550 5.1.1, logged); a message to it unsubscribes its recipient
 *   postmaster@ / abuse@<bounce domain>, and <postmaster> alone (RFC 5321 §4.5.1)
 *   anything@<FBL domain>          (feedback loops send complaints to an address the operator registered)
 *   anything else                  550 5.7.1, at RCPT
 *
 * Every accepted message goes through ingestReport() (a message to u-… addresses: TrackingEvents.unsubscribe()
 * instead) and is answered 250 only once what it caused is fsynced.
 * STARTTLS, SIZE (enforced, 552), ENHANCEDSTATUSCODES, PIPELINING, 8BITMIME, SMTPUTF8; no AUTH.
 */
import { SMTPServer, type SMTPServerAddress, type SMTPServerSession } from 'smtp-server';
import type { Readable } from 'node:stream';
import type { Config } from '../core/config.js';
import type { Logger } from '../core/log.js';
import type { Metrics } from '../core/metrics.js';
import type { Store } from '../core/store.js';
import type { TlsMaterial } from '../core/tls.js';
import { normalizeAddress } from '../core/net.js';
import { MessageRefusal, SessionsPerAddress, closeSession, listenSmtp, listenerOptions, readMessage } from '../mta/reception.js';
import { smtpError } from '../mta/smtp-reply.js';
import type { BounceRules } from './classify.js';
import { ingestReport, type SpoolReader } from './ingest.js';
import { BounceParser } from './parse-pool.js';
import type { SuppressionList } from './suppression.js';
import type { VerpCodec, VerpRejection } from './verp.js';
import type { DecodedToken } from '../tracking/tokens.js';

/** Recipients of one inbound transaction: a report goes to one address; a few more do no harm. */
const MAX_RECIPIENTS = 20;
/**
 * Parsing threads. Two, so that a report that runs into the parse deadline (2 s) does not hold up the others;
 * one thread reads thousands of DSNs a second (bench/RESULTS.md), far more than the store can commit.
 */
const PARSER_THREADS = 2;

export interface InboundDeps {
  config: Config;
  store: Store;
  spool: SpoolReader;
  rules: BounceRules;
  verp: VerpCodec;
  suppressions: SuppressionList;
  tls: TlsMaterial;
  log: Logger;
  metrics: Metrics;
  /** bounce domains known at run time besides the config's: bounce subdomains of verified sending domains, tenants' own */
  isBounceDomain?: (domain: string) => boolean;
  /**
   * List-Unsubscribe's mailto addresses (`u-<token>@<bounce domain>`): the tracking keys that verify them and
   * the recorder that unsubscribes. Without it (no tracking configured) such addresses are refused.
   */
  unsubscribe?: {
    tokens: { verifyMailto(address: string): { msgId: string; rcptIndex: number; tenant: string | null } | null };
    events: { unsubscribe(t: DecodedToken, meta: { method: 'mailto'; userAgent: string | null; ip: string; mailFrom?: string | null }): Promise<boolean> };
  } | null;
}

/** A set of domains, or anything that answers membership (the bounce domains change as sending domains are verified). */
export interface DomainSet {
  has(domain: string): boolean;
}

export type RecipientVerdict =
  | { ok: true; as: 'verp' | 'postmaster' | 'fbl' | 'unsubscribe' }
  | { ok: false; code: number; status: string; text: string; reason: 'relay_denied' | 'unknown_recipient' | 'bad_verp' | 'bad_unsubscribe'; verp?: Exclude<VerpRejection, 'not-verp'> };

const ROLE_ACCOUNTS = new Set(['postmaster', 'abuse']);
/** local part prefix of List-Unsubscribe's mailto addresses (src/tracking/tokens.ts) */
const UNSUBSCRIBE_PREFIX = 'u-';

/**
 * Whether the inbound listener takes mail for `address`. Pure: the listener logs and counts the refusals.
 * `mailto` verifies List-Unsubscribe's `u-<token>` addresses; without it (no tracking) they are refused.
 */
export function recipientVerdict(
  address: string,
  domains: { bounce: DomainSet; fbl: DomainSet },
  verp: VerpCodec,
  mailto?: { verifyMailto(address: string): unknown } | null,
): RecipientVerdict {
  const at = address.lastIndexOf('@');
  const local = (at < 0 ? address : address.slice(0, at)).toLowerCase();
  if (at < 0) return local === 'postmaster' ? { ok: true, as: 'postmaster' } : { ok: false, code: 550, status: '5.1.3', text: 'A recipient needs a domain', reason: 'unknown_recipient' };
  const domain = address.slice(at + 1).toLowerCase().replace(/\.$/, '');
  const isBounce = domains.bounce.has(domain);
  const isFbl = domains.fbl.has(domain);
  if (!isBounce && !isFbl) return { ok: false, code: 550, status: '5.7.1', text: 'Relaying denied: this server only takes bounces and complaints for its own domains', reason: 'relay_denied' };
  if (isBounce) {
    const v = verp.verify(address);
    if (v.ok) return { ok: true, as: 'verp' };
    // a b-… local part at a bounce domain is ours or nobody's, FBL domain or not
    if (v.reason !== 'not-verp') return { ok: false, code: 550, status: '5.1.1', text: 'No such recipient', reason: 'bad_verp', verp: v.reason };
    // so is a u-… one: List-Unsubscribe's mailto, honoured only when its token verifies
    if (local.startsWith(UNSUBSCRIBE_PREFIX)) {
      if (mailto?.verifyMailto(address)) return { ok: true, as: 'unsubscribe' };
      return { ok: false, code: 550, status: '5.1.1', text: 'No such recipient', reason: mailto ? 'bad_unsubscribe' : 'unknown_recipient' };
    }
    if (ROLE_ACCOUNTS.has(local)) return { ok: true, as: 'postmaster' };
  }
  if (isFbl) return { ok: true, as: 'fbl' };
  return { ok: false, code: 550, status: '5.1.1', text: 'No such recipient', reason: 'unknown_recipient' };
}

export class InboundListener {
  readonly server: SMTPServer;
  private readonly perIp: SessionsPerAddress;
  private readonly domains: { bounce: DomainSet; fbl: DomainSet };
  /** made on the first report, so a node that never gets one starts no parsing threads */
  private parser: BounceParser | null = null;
  private closed = false;

  constructor(private readonly deps: InboundDeps) {
    const { config, tls } = deps;
    const opts = config.inbound;
    this.perIp = new SessionsPerAddress(opts.max_connections_per_ip);
    const configured = new Set(config.bounce.bounceDomains);
    const dynamic = deps.isBounceDomain;
    this.domains = { bounce: { has: (d) => configured.has(d) || Boolean(dynamic?.(d)) }, fbl: new Set(config.bounce.fblDomains) };
    this.server = new SMTPServer({
      ...listenerOptions({ hostname: config.hostname, banner: 'Tern ESMTP (bounces and feedback only)', tls, maxMessageSize: opts.maxMessageSize, maxClients: opts.max_connections, idleTimeoutMs: opts.idleTimeoutMs }),
      disabledCommands: ['AUTH'],
      onConnect: (session, cb) => this.onConnect(session, cb),
      onClose: (session) => this.onClose(session),
      onRcptTo: (address, session, cb) => this.onRcptTo(address, session, cb),
      onData: (stream, session, cb) => this.onData(stream, session, cb),
    });
    this.server.on('error', (err) => deps.log.warn({ err: err.message, listener: 'inbound' }, 'SMTP session error'));
  }

  listen(): Promise<number> {
    const { host, port } = this.deps.config.inbound;
    return listenSmtp(this.server, host, port, 'listeners.inbound');
  }

  async close(): Promise<void> {
    this.closed = true;
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    await this.parser?.close();
  }

  private refuse(reason: string, code: number, status: string, text: string): Error {
    this.deps.metrics.inboundRefusals.inc({ reason });
    return smtpError(code, status, text);
  }

  private onConnect(session: SMTPServerSession, cb: (err?: Error | null) => void): void {
    this.deps.metrics.inboundConnections.inc({ listener: 'inbound' });
    if (!this.perIp.opened(session.remoteAddress)) return cb(this.refuse('per_ip_limit', 421, '4.7.0', 'Too many connections from your address; try again later'));
    cb();
  }

  private onClose(session: SMTPServerSession): void {
    this.perIp.closed(session.remoteAddress);
    this.deps.metrics.inboundConnections.dec({ listener: 'inbound' });
  }

  private onRcptTo(address: SMTPServerAddress, session: SMTPServerSession, cb: (err?: Error | null) => void): void {
    const client = normalizeAddress(session.remoteAddress);
    const v = recipientVerdict(address.address, this.domains, this.deps.verp, this.deps.unsubscribe?.tokens);
    if (!v.ok) {
      if (v.reason === 'bad_unsubscribe') this.deps.log.warn({ client, rcpt: address.address, listener: 'inbound' }, 'unsubscribe address does not verify; refused');
      else if (v.verp) {
        this.deps.metrics.verpRejected.inc({ where: 'rcpt', reason: v.verp });
        this.deps.log.warn({ client, rcpt: address.address, reason: v.verp, listener: 'inbound' }, 'VERP address does not verify; refused');
      } else if (v.reason === 'relay_denied') this.deps.log.warn({ client, rcpt: address.address, listener: 'inbound' }, 'relay denied');
      return cb(this.refuse(v.reason, v.code, v.status, v.text));
    }
    if (session.envelope.rcptTo.length >= MAX_RECIPIENTS) return cb(this.refuse('too_many_recipients', 452, '4.5.3', 'Too many recipients; send the rest in another transaction'));
    if (v.as === 'unsubscribe' && !this.unsubscribeTarget(address.address)) {
      // the token is ours, but the message it names has left the spool (events.retention): nothing to act on
      this.deps.log.warn({ client, rcpt: address.address, listener: 'inbound' }, 'unsubscribe address names a message no longer in the spool; refused');
      return cb(this.refuse('unsubscribe_expired', 550, '5.1.1', 'This unsubscribe address has expired; use the unsubscribe link of the message'));
    }
    cb();
  }

  /**
   * The recipient a List-Unsubscribe mailto address names, as the tracking recorder takes it (the mailto token
   * carries only the queue id and recipient index: the address and campaign come from the spool); null when
   * it is not such an address, does not verify, or names a message or recipient the spool no longer has.
   */
  private unsubscribeTarget(address: string): DecodedToken | null {
    const u = this.deps.unsubscribe;
    const at = address.lastIndexOf('@');
    if (!u || !address.slice(0, at < 0 ? undefined : at).toLowerCase().startsWith(UNSUBSCRIBE_PREFIX)) return null;
    const m = u.tokens.verifyMailto(address);
    if (!m) return null;
    const message = this.deps.spool.message(m.msgId);
    const rcpt = message && this.deps.spool.recipientState(m.msgId, m.rcptIndex);
    if (!message || !rcpt || (m.tenant !== null && m.tenant !== message.tenant)) return null;
    return { kind: 'unsubscribe', msgId: m.msgId, rcptIndex: m.rcptIndex, rcpt: rcpt.to, tenant: message.tenant, campaign: message.campaign, sentAt: message.createdAt };
  }

  private onData(stream: Readable & { sizeExceeded?: boolean }, session: SMTPServerSession, cb: (err?: Error | null, message?: string) => void): void {
    const opts = this.deps.config.inbound;
    readMessage(stream, { maxSize: opts.maxMessageSize, timeoutMs: opts.dataTimeoutMs, onTimeout: () => closeSession(this.server, session.id) })
      .then((raw) => this.ingest(raw, session))
      .then(
        (reply) => cb(null, reply),
        (err) => {
          if (err instanceof MessageRefusal) this.deps.metrics.inboundRefusals.inc({ reason: err.reason });
          cb(err);
        },
      );
  }

  private async ingest(raw: Buffer, session: SMTPServerSession): Promise<string> {
    const { store, spool, rules, verp, suppressions, log, metrics } = this.deps;
    if (this.closed) throw smtpError(421, '4.3.2', 'Shutting down; try again later');
    this.parser ??= new BounceParser({ threads: PARSER_THREADS });
    const started = performance.now();
    const mailFrom = session.envelope.mailFrom ? session.envelope.mailFrom.address : null;
    const client = normalizeAddress(session.remoteAddress);
    // List-Unsubscribe mailto requests: any message to the address is the request (RFC 2369); its content is not read
    const unsubscribes: DecodedToken[] = [];
    const reportRcpts: string[] = [];
    for (const r of session.envelope.rcptTo) {
      const t = this.unsubscribeTarget(r.address);
      if (t) unsubscribes.push(t);
      else reportRcpts.push(r.address);
    }
    if (unsubscribes.length) {
      try {
        // each is fsynced before it resolves: the 250 below comes after
        for (const t of unsubscribes) await this.deps.unsubscribe!.events.unsubscribe(t, { method: 'mailto', userAgent: null, ip: client, mailFrom });
      } catch (err) {
        log.error({ err, listener: 'inbound' }, 'could not record an unsubscribe');
        throw smtpError(451, '4.3.0', 'Could not record the unsubscribe; try again later');
      }
      metrics.inboundReports.inc({ kind: 'unsubscribe', result: 'attributed' }, unsubscribes.length);
      if (!reportRcpts.length) return '2.0.0 Ok: unsubscribed';
    }
    const envelope = { rcptTo: reportRcpts, mailFrom, client };
    let outcome;
    try {
      outcome = await ingestReport(raw, envelope, {
        parser: this.parser,
        rules,
        verp,
        suppressions,
        spool,
        store,
        log,
        onRejectedToken: (reason) => metrics.verpRejected.inc({ where: 'report', reason }),
      });
    } catch (err) {
      log.error({ err, listener: 'inbound' }, 'could not store a report');
      throw smtpError(451, '4.3.0', 'Could not store the report; try again later');
    }
    metrics.inboundReportSeconds.observe((performance.now() - started) / 1000);
    metrics.inboundReports.inc({ kind: outcome.kind, result: outcome.result });
    return `2.0.0 Ok: ${outcome.kind} ${outcome.result}`;
  }
}
